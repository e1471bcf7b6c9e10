"""Generate every required rendition of one source version, as the worker task does.

The service re-reads the world before acting: the row must exist and still hold the file
the task was enqueued for, and the worker must win the claim on the source's state row (one
worker per source at a time; a duplicate task returns at once). Each file is written under
its content-addressed name and recorded under a lock on the state row, the same lock the
change handler takes, so a task for a replaced or deleted image records nothing and removes
what it wrote. A bad source is recorded as failed and not retried; storage and database
errors raise `TransientError` for the task to retry with backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import tempfile
import time
import uuid
from datetime import timedelta
from typing import IO, Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import Storage
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from rendition_worker import cache, registry
from rendition_worker.conf import RenditionSettings, get_settings
from rendition_worker.core.analysis import Analysis, Focus
from rendition_worker.core.errors import BadSource, RenditionError, SourceProblem
from rendition_worker.core.focal import stored_focal_box
from rendition_worker.core.naming import rendition_name, source_key, spec_fingerprint
from rendition_worker.core.pipeline import Rendered, render
from rendition_worker.core.placeholder import Placeholder
from rendition_worker.core.planner import SourceRef
from rendition_worker.core.specs import Spec, parse_spec
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.registry import RegisteredField, file_name
from rendition_worker.services.deletion import files_delete
from rendition_worker.services.files import file_write
from rendition_worker.services.state import source_point_at
from rendition_worker.services.tombstones import tombstones_add

logger = logging.getLogger(__name__)

# How long a claim holds when the caller has no time limit of its own (the command's
# --sync). The task passes its hard time limit and a little more: a claim must lapse only
# when its worker is gone (killed, lost), and then another worker may take over.
CLAIM_SECONDS = 15 * 60
# What a batch upsert overwrites in a rendition row of the same source and spec.
_RENDITION_UPDATE_FIELDS = (
    "source_name",
    "state",
    "name",
    "format",
    "width",
    "height",
    "size",
    "encode_ms",
)
# Sources up to this size are read into memory; larger ones spill to a temporary file.
SPOOL_BYTES = 64 * 2**20


class TransientError(RenditionError):
    """A storage or database failure that a retry may not meet again."""


def source_fail(model_label: str, object_id: str, field: str, name: str, error: str) -> None:
    """Record that `name` cannot be rendered (e.g. it took longer than the time limit)."""
    entry = registry.field_for(model_label, field)
    if entry is None:
        return
    content_type = ContentType.objects.get_for_model(entry.model)
    Source.objects.filter(
        content_type=content_type, object_id=object_id, field=field, name=name
    ).update(
        state=State.FAILED, error=error, claim="", claimed_until=None, finished_at=timezone.now()
    )
    cache.invalidate(content_type.pk, object_id, field, name)


def source_generate(
    model_label: str,
    object_id: str,
    field: str,
    name: str,
    *,
    force: bool = False,
    retry_failed: bool = False,
    overwritten: bool = False,
    claim_seconds: int = CLAIM_SECONDS,
) -> dict[str, Any]:
    """Render every required spec of `name` in `model_label`'s `field` of row `object_id`.

    `overwritten`: the file was uploaded again under the same name; what exists is stale.
    `claim_seconds`: how long other workers keep off this source if this one dies.
    """
    started = time.perf_counter()
    settings = get_settings().require_valid()
    entry = registry.field_named(model_label, field)
    with contextlib.ExitStack() as files:
        try:
            instance = registry.row_for(entry, object_id)
            if instance is None:
                return {"status": "gone"}
            if file_name(instance, entry) != name:
                return {"status": "stale"}
            content_type = ContentType.objects.get_for_model(entry.model)
            opened = None
            digest = ""
            if overwritten:
                # A new upload: what was made from this name before is stale only if the
                # bytes changed. A redelivered task, or the same bytes uploaded again, must
                # not retire and render again, nor must a task whose bytes a duplicate
                # finished meanwhile (source_point_at compares again under the row's lock).
                # The job reuses this read.
                opened = _read_source(entry.field.storage, name)
                fp, digest = files.enter_context(opened)
                followed = _followed(content_type, object_id, entry)
                if fp is not None and followed == (name, digest, State.READY):
                    return {"status": "done", "retired": 0}
            source, retired = _source_row(
                entry, content_type, object_id, name, overwritten=overwritten, digest=digest
            )
            token = _claim(source, name, claim_seconds, force=force, retry_failed=retry_failed)
        except (OSError, DatabaseError) as exc:
            # OSError: reading an overwritten file to compare it, as rendering would read it.
            raise TransientError(
                f"storage or database error before rendering {name!r}: {exc}"
            ) from exc
        if token is None:
            state = Source.objects.filter(pk=source.pk).values_list("state", flat=True).first()
            # Done, failed before (not retried until the file changes), or another worker has it.
            statuses = {State.READY.value: "done", State.FAILED.value: "failed-before"}
            status = statuses.get(state, "claimed") if state else "gone"
            return {"status": status, "retired": retired}
        job = _Job(settings, entry, content_type, source, name, token, force=force)
        try:
            summary = job.run(opened)
        except (OSError, DatabaseError) as exc:
            job.release()
            raise TransientError(f"storage or database error rendering {name!r}: {exc}") from exc
        except BaseException:
            job.release()
            raise
    summary["retired"] = retired + job.superseded
    summary["ms"] = round((time.perf_counter() - started) * 1000)
    return summary


def _followed(
    content_type: ContentType, object_id: str, entry: RegisteredField
) -> tuple[str, str, str] | None:
    """The file name, digest and state that the state row of this field follows, if any."""
    return (
        Source.objects.filter(content_type=content_type, object_id=object_id, field=entry.name)
        .values_list("name", "digest", "state")
        .first()
    )


def _source_row(
    entry: RegisteredField,
    content_type: ContentType,
    object_id: str,
    name: str,
    *,
    overwritten: bool,
    digest: str = "",
) -> tuple[Source, int]:
    """The state row for `name`, and how many stale files pointing it there retired.

    `digest`: of the overwritten file's bytes, when read (see `source_point_at`).
    """
    source = Source.objects.filter(
        content_type=content_type, object_id=object_id, field=entry.name
    ).first()
    if source is not None and source.name == name and not overwritten:
        return source, 0
    # A new or replaced file (or one no signal told us about: bulk_create, update(), raw
    # SQL): point the state at it and retire what was made from any other file.
    retired = source_point_at(entry, object_id, name, overwritten=overwritten, digest=digest)
    source = Source.objects.get(content_type=content_type, object_id=object_id, field=entry.name)
    return source, retired


def _claim(
    source: Source, name: str, seconds: int, *, force: bool, retry_failed: bool
) -> str | None:
    now = timezone.now()
    claimable = Source.objects.filter(pk=source.pk, name=name).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )
    if not force:
        claimable = claimable.exclude(state=State.READY)
        if not retry_failed:
            claimable = claimable.exclude(state=State.FAILED)
    token = uuid.uuid4().hex
    claimed = claimable.update(
        claim=token,
        claimed_until=now + timedelta(seconds=seconds),
        state=State.PENDING,
        error="",
        started_at=now,
    )
    return token if claimed else None


class _Job:
    """One claimed generation: read, render, write and record, release."""

    def __init__(
        self,
        settings: RenditionSettings,
        entry: RegisteredField,
        content_type: ContentType,
        source: Source,
        name: str,
        token: str,
        *,
        force: bool,
    ) -> None:
        self.settings = settings
        self.force = force
        self.entry = entry
        self.content_type = content_type
        self.source = source
        self.name = name
        self.token = token
        self.storage_ref = registry.rendition_storage_ref(entry)
        self.storage: Storage = registry.storage_for(self.storage_ref)
        self.started = time.perf_counter()
        self.superseded = 0  # files of earlier encoder settings this job replaced
        self.focus = Focus(mode=settings.focal_point)

    def run(self, opened: _read_source | None = None) -> dict[str, Any]:
        """Render, write and record what is missing; `opened`: the source, read already."""
        reading = opened or _read_source(self.entry.field.storage, self.name)
        # Read after the claim: a focal point set since is seen here, and one set later
        # drops the claim (services.focal), so this job records nothing placed the old way.
        self.focus = self._focus()
        with reading as (fp, digest):
            if fp is None:
                return self._fail(digest, reading.problem)
            key = source_key(SourceRef(*self._ref).identity, digest)
            specs = self._needed(key)
            if not specs and self.focus.placeholder is not None:
                # Every rendition exists under its current name: nothing to decode.
                finished = self._finish(digest, None)
                return {"status": "ready" if finished else self._lost(), "renditions": 0}
            try:
                rendering = render(fp, specs, self.settings.render_options, self.focus)
            except BadSource as exc:
                return self._fail(digest, exc)
            self._keep_analysis(rendering.analysis)
            written = recorded = total = 0
            batch: list[tuple[str, Rendered]] = []
            # Files are written as they come; rows are recorded one format at a time, so
            # that a format's srcset appears whole and a source costs a few transactions,
            # not one per rendition (the fallback format still comes out first).
            for rendered in itertools.chain(rendering, [None]):
                if batch and (rendered is None or rendered.format != batch[-1][1].format):
                    refused = self._record(batch)
                    if refused is not None:
                        return {"status": refused, "renditions": recorded}
                    recorded += len(batch)
                    batch = []
                if rendered is None:
                    break
                target = self._name(key, str(rendered.spec), rendered.format)
                written += self._write(target, rendered.data)
                batch.append((target, rendered))
                total += len(rendered.data)
        source = rendering.source
        finished = self._finish(digest, (source.width, source.height))
        return {
            "status": "ready" if finished else self._lost(),
            "renditions": recorded,
            "written": written,
            "bytes": total,
        }

    @property
    def _ref(self) -> tuple[str, str, str]:
        return self.entry.model_label, self.source.object_id, self.entry.name

    def _name(self, key: str, spec: str, output_format: str) -> str:
        parsed = parse_spec(spec)
        return rendition_name(
            path=self.settings.path,
            key=key,
            source_name=self.name,
            spec=parsed,
            output_format=output_format,
            fingerprint=spec_fingerprint(
                self.settings.encoder.fingerprint, parsed, self.focus.placement
            ),
        )

    def _focus(self) -> Focus:
        """How this version's crops are placed, and what earlier renders of it learnt."""
        row = (
            Source.objects.filter(pk=self.source.pk)
            .values_list(
                "focal_point", "subject", "placeholder_color", "placeholder_uri", "width", "height"
            )
            .first()
        )
        if row is None:
            return Focus(mode=self.settings.focal_point)
        focal, subject, color, uri, width, height = row
        placeholder = (
            Placeholder(color, uri, width, height) if color and uri and width and height else None
        )
        return Focus(
            stored_focal_box(focal),
            self.settings.focal_point,
            stored_focal_box(subject),
            placeholder,
        )

    def _keep_analysis(self, analysis: Analysis) -> None:
        """Record the subject and placeholder before any rendition, so pages have them first."""
        placeholder = analysis.placeholder
        if placeholder == self.focus.placeholder and analysis.subject == self.focus.subject:
            return
        values: dict[str, Any] = {
            "subject": analysis.subject.as_list() if analysis.subject is not None else None
        }
        if placeholder is not None:
            values.update(
                placeholder_color=placeholder.color,
                placeholder_uri=placeholder.data_uri,
                width=placeholder.width,
                height=placeholder.height,
            )
        Source.objects.filter(pk=self.source.pk, name=self.name, claim=self.token).update(**values)
        cache.invalidate(self.content_type.pk, self.source.object_id, self.entry.name, self.name)

    def _needed(self, key: str) -> list[Spec]:
        """The required specs without a ready rendition of this content under today's name.

        A rendition whose name no longer matches (PATH, encoder settings or the content
        changed) is made again; with `force`, so is one whose file has gone missing. A set
        that gained a width renders that width only.
        """
        ready = {
            row.spec: row
            for row in Rendition.objects.filter(
                source=self.source, source_name=self.name, state=State.READY
            )
        }
        needed = []
        for spec in self.settings.specs_for(self.entry.key):
            row = ready.get(str(spec))
            current = row is not None and row.name == self._name(key, row.spec, row.format)
            if not current or (
                self.force and row is not None and not self.storage.exists(row.name)
            ):
                needed.append(spec)
        return needed

    def release(self) -> None:
        """Give the claim back so that a retry can take it at once."""
        # A query that failed outside a transaction (the server ended the session) leaves
        # Django holding the dead connection: it checks health between requests only. The
        # update would fail on it too, and the retry, sooner than the claim's lapse, would
        # find the source claimed and return: pending until the next reconciliation.
        database = connections[router.db_for_write(Source)]
        if not database.in_atomic_block:
            database.close_if_unusable_or_obsolete()
        try:
            Source.objects.filter(pk=self.source.pk, claim=self.token).update(
                claim="", claimed_until=None
            )
        except DatabaseError:
            logger.warning("could not release the claim on %s; it lapses by itself", self.name)

    def _write(self, target: str, data: bytes) -> int:
        # Never a partial file at `target`, and one left by a killed writer is not trusted.
        return int(file_write(self.storage, target, data))

    def _record(self, batch: list[tuple[str, Rendered]]) -> str | None:
        """Record written files as ready; or say why not: "stale" (replaced, deleted), "claimed"."""
        targets = {str(rendered.spec): target for target, rendered in batch}
        with transaction.atomic():
            source = Source.objects.select_for_update().filter(pk=self.source.pk).first()
            if source is None or source.name != self.name:
                # Replaced or deleted while we rendered: nobody will ever reference the files.
                outcome = files_delete(self.storage, targets.values())
                # One the storage failed to delete stays known: a tombstone retries it.
                tombstones_add(self.storage_ref, outcome.failed, Tombstone.Kind.RENDITION)
                return "stale"
            if source.claim != self.token:
                return "claimed"  # our claim lapsed and another worker renders this version
            previous = dict(
                Rendition.objects.filter(source=source, spec__in=targets).values_list(
                    "spec", "name"
                )
            )
            rows = [
                Rendition(
                    source=source,
                    spec=str(rendered.spec),
                    source_name=self.name,
                    state=State.READY,
                    name=target,
                    format=rendered.format,
                    width=rendered.width,
                    height=rendered.height,
                    size=len(rendered.data),
                    encode_ms=round(rendered.encode_ms),
                )
                for target, rendered in batch
            ]
            try:
                # One upsert for the batch: a row of an earlier version of the same spec
                # (replaced file, new encoder settings) is overwritten in place.
                Rendition.objects.bulk_create(
                    rows,
                    update_conflicts=True,
                    unique_fields=["source", "spec"],
                    update_fields=[*_RENDITION_UPDATE_FIELDS],
                )
            except IntegrityError:
                return "claimed"
            superseded = [name for spec, name in previous.items() if name and name != targets[spec]]
            if superseded:
                self.superseded += tombstones_add(
                    self.storage_ref, superseded, Tombstone.Kind.RENDITION
                )
        cache.invalidate(self.content_type.pk, self.source.object_id, self.entry.name, self.name)
        return None

    def _finish(self, digest: str, size: tuple[int, int] | None) -> bool:
        dimensions = {"width": size[0], "height": size[1]} if size else {}
        done = Source.objects.filter(pk=self.source.pk, name=self.name, claim=self.token).update(
            state=State.READY,
            digest=digest,
            **dimensions,
            error="",
            claim="",
            claimed_until=None,
            finished_at=timezone.now(),
            render_ms=round((time.perf_counter() - self.started) * 1000),
        )
        cache.invalidate(self.content_type.pk, self.source.object_id, self.entry.name, self.name)
        return bool(done)

    def _lost(self) -> str:
        """Why `_finish` recorded nothing: "stale" (replaced, deleted) or "claimed".

        A new upload's own task resets the claim of a duplicate that took the same name first
        (it cannot compare bytes no one has recorded yet): that job was not stale.
        """
        current = Source.objects.filter(pk=self.source.pk, name=self.name).exists()
        return "claimed" if current else "stale"

    def _fail(self, digest: str, error: BadSource) -> dict[str, Any]:
        logger.warning(
            "cannot render %s of %s pk=%s: %s",
            self.name,
            self.entry.model._meta.label,
            self.source.object_id,
            error,
        )
        Source.objects.filter(pk=self.source.pk, name=self.name, claim=self.token).update(
            state=State.FAILED,
            digest=digest,
            error=str(error),
            claim="",
            claimed_until=None,
            finished_at=timezone.now(),
        )
        cache.invalidate(self.content_type.pk, self.source.object_id, self.entry.name, self.name)
        return {"status": "failed", "error": str(error), "problem": str(error.problem)}


class _read_source:  # used as a context manager, reads like one
    """Copy the source into a spooled file, hashing it on the way; (None, '') if unreadable.

    `problem` then says why: the file is missing, or its name is one the storage refuses.
    Entered again, it gives the same read; the first exit closes it.
    """

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.spool: IO[bytes] | None = None
        self.result: tuple[IO[bytes] | None, str] | None = None
        missing = f"the source file {name!r} is not in its storage"
        self.problem = BadSource(SourceProblem.MISSING, missing)

    def __enter__(self) -> tuple[IO[bytes] | None, str]:
        if self.result is None:
            self.result = self._read()
        return self.result

    def _read(self) -> tuple[IO[bytes] | None, str]:
        digest = hashlib.sha256()
        try:
            remote = self.storage.open(self.name, "rb")
        except FileNotFoundError:
            return None, ""
        except (SuspiciousFileOperation, ValueError) as exc:
            # A name no upload makes (raw SQL, update(), a legacy row): '../x' or an absolute
            # path outside the storage, a NUL byte. Never read, and failed rather than retried
            # forever; the message leaves out the server paths that Django's exception names.
            refused = f"the source name {self.name!r} is refused by its storage"
            reason = (
                "it points outside the storage" if isinstance(exc, SuspiciousFileOperation) else exc
            )
            self.problem = BadSource(SourceProblem.MISSING, f"{refused}: {reason}")
            return None, ""
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115  # __exit__
        with remote:
            for chunk in remote.chunks():
                digest.update(chunk)
                self.spool.write(chunk)
        self.spool.seek(0)
        return self.spool, digest.hexdigest()

    def __exit__(self, *exc_info: object) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
