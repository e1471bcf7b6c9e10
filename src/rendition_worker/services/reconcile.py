"""Reconcile rows and files with what the settings require, in bounded, resumable steps.

Four phases, each a sequence of steps that read a bounded batch, plan it with the pure
planner (`core.planner`) and apply the plan:

1. required: each registered field's rows with a file, by primary key, against their
   state and rendition rows (missing, obsolete, failed);
2. gone: state rows whose row was deleted, whose field was cleared or is no longer
   registered (obsolete);
3. files: the rendition storage listed one shard folder at a time (PATH/00/ .. PATH/ff/),
   against the rows whose files live there (orphans, broken);
4. tombstones: stale files that are due (DELETE_DELAY).

A step returns the cursor of the next one, so that the beat task can do one step per task
and re-enqueue itself; the command runs them all in one process. Nothing is loaded whole:
memory stays proportional to the batch size.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from rendition_worker import registry
from rendition_worker.conf import RenditionSettings, get_settings
from rendition_worker.core.analysis import Focus
from rendition_worker.core.errors import BadMessage
from rendition_worker.core.focal import FocalMode, stored_focal_box
from rendition_worker.core.planner import (
    COUNTS,
    Naming,
    Plan,
    RecordedFile,
    RecordedRendition,
    RecordedSource,
    SourceRef,
    plan_broken,
    plan_orphans,
    plan_sources,
)
from rendition_worker.listing import list_files
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services.deletion import files_delete
from rendition_worker.services.generation import source_generate
from rendition_worker.services.tombstones import tombstones_add, tombstones_delete

# Sources per step. Measured on PostgreSQL with 10 renditions per source: a batch of 2,000
# sources (20,000 rendition rows) reads and plans in ~0.15 s with ~30 MB of Python objects.
BATCH_SIZE = 2_000
SHARDS = [f"{index:02x}" for index in range(256)]
# `renditions reconcile --json` prints exactly these keys, in this order.
REPORT_KEYS = (
    "sources",
    "required",
    "present",
    "missing",
    "obsolete",
    "orphans",
    "broken",
    "failed",
    "enqueued",
    "generated",
    "deleted_rows",
    "deleted_files",
    "dry_run",
    "elapsed_s",
)

Cursor = dict[str, Any]
# What a cursor of each phase holds (see the steps), and the keys it must hold.
_CURSOR_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "required": {"field": int, "after": (str, type(None))},
    "gone": {"after": int},
    "files": {"storage": int, "shard": int},
    "tombstones": {},
}
_CURSOR_REQUIRED = {"files": {"storage", "shard"}}
# How a plan's generation is queued: (field, object id, file name, force) -> None.
Enqueue = Callable[[RegisteredField, str, str, bool], None]


@dataclass
class Report:
    """What a reconciliation found and did."""

    dry_run: bool
    counts: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, Any]:
        """The documented keys, in order. `present` excludes renditions found broken."""
        values: dict[str, Any] = {key: self.counts.get(key, 0) for key in REPORT_KEYS}
        values["present"] = max(0, values["present"] - values["broken"])
        values["dry_run"] = self.dry_run
        values["elapsed_s"] = round(time.perf_counter() - self.started, 3)
        return values


def cursor_problem(cursor: Cursor) -> str | None:
    """Why `cursor` is no cursor a reconciliation step returns, or None."""
    phase = cursor.get("phase")
    if phase not in _CURSOR_KEYS:
        return f"phase {phase!r:.40} is not one of {', '.join(_CURSOR_KEYS)}"
    allowed = _CURSOR_KEYS[phase]
    for key, value in cursor.items():
        if key == "phase":
            continue
        if key not in allowed:
            return f"{phase} has no key {key!r:.40}"
        if not isinstance(value, allowed[key]) or isinstance(value, bool):
            return f"{key}={value!r:.40} is of the wrong type"
        if isinstance(value, int) and value < 0:
            return f"{key}={value} is negative"
    missing = _CURSOR_REQUIRED.get(phase, set()) - set(cursor)
    if missing:
        return f"{phase} needs {', '.join(sorted(missing))}"
    if phase == "files" and cursor["shard"] >= len(SHARDS):
        return f"shard={cursor['shard']} is past the last shard ({len(SHARDS) - 1})"
    return None


class Reconciler:
    """Runs reconciliation steps with one set of options."""

    def __init__(
        self,
        *,
        dry_run: bool = False,
        sync: bool = False,
        retry_failed: bool = False,
        generate: bool = True,
        batch_size: int = BATCH_SIZE,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.settings: RenditionSettings = get_settings().require_valid()
        self.dry_run = dry_run
        self.sync = sync
        self.generate = generate
        self.enqueue = enqueue
        self.retry_failed = retry_failed
        self.batch_size = batch_size
        self.fields = registry.registered_fields()
        self.naming = Naming(self.settings.path, self.settings.encoder.fingerprint)
        self._specs_cache: dict[str, frozenset[str]] = {}

    def run(self, progress: Callable[[str, int], None] | None = None) -> Report:
        """Every step, in order; `progress(phase, items)` is called after each one."""
        report = Report(self.dry_run)
        cursor: Cursor | None = {"phase": "required"}
        while cursor is not None:
            phase = cursor["phase"]
            counts, cursor = self.step(cursor)
            report.counts.update(counts)
            if progress is not None:
                progress(phase, counts.get("items", 0))
        return report

    def step(self, cursor: Cursor) -> tuple[Counter[str], Cursor | None]:
        """Do the step at `cursor`; return its counts and the next cursor (None: done).

        `BadMessage` for a cursor that no step returned (a hand-made message).
        """
        problem = cursor_problem(cursor)
        if problem is not None:
            raise BadMessage(f"reconciliation cursor {cursor!r:.200}: {problem}")
        phase = cursor["phase"]
        if phase == "required":
            return self._required_step(cursor)
        if phase == "gone":
            return self._gone_step(cursor)
        if phase == "files":
            return self._files_step(cursor)
        return self._tombstones_step()

    # Phase 1 -----------------------------------------------------------------------------

    def _required_step(self, cursor: Cursor) -> tuple[Counter[str], Cursor | None]:
        index = cursor.get("field", 0)
        if index >= len(self.fields):
            return Counter(), {"phase": "gone"}
        entry = self.fields[index]
        rows = _with_file(entry).order_by("pk")
        if cursor.get("after") is not None:
            try:
                after = entry.model._meta.pk.to_python(cursor["after"])
            except ValidationError as exc:
                raise BadMessage(
                    f"cursor after={cursor['after']!r:.40}: {'; '.join(exc.messages)}"
                ) from exc
            rows = rows.filter(pk__gt=after)
        batch = list(rows.values_list("pk", entry.field.attname)[: self.batch_size])
        specs = self._required_specs(entry)
        required = {_ref(entry, pk): (str(name), specs) for pk, name in batch}
        recorded = _recorded(entry, [ref.object_id for ref in required])
        plan = plan_sources(required, recorded, self.naming, retry_failed=self.retry_failed)
        counts = self._apply(plan)
        counts["items"] = len(batch)
        if len(batch) < self.batch_size:
            return counts, {"phase": "required", "field": index + 1}
        return counts, {"phase": "required", "field": index, "after": str(batch[-1][0])}

    # Phase 2 -----------------------------------------------------------------------------

    def _gone_step(self, cursor: Cursor) -> tuple[Counter[str], Cursor | None]:
        after = cursor.get("after", 0)
        sources = list(
            Source.objects.filter(pk__gt=after)
            .order_by("pk")
            .values_list("pk", "content_type_id", "object_id", "field")[: self.batch_size]
        )
        if not sources:
            return Counter(), {"phase": "files", "storage": 0, "shard": 0}
        by_key = {(_content_type_id(entry), entry.name): entry for entry in self.fields}
        gone: dict[int, SourceRef] = {}
        wanted: dict[tuple[int, str], list[tuple[int, str]]] = {}
        for pk, content_type_id, object_id, field_name in sources:
            entry = by_key.get((content_type_id, field_name))
            if entry is None:  # the field is no longer registered
                gone[pk] = SourceRef(_model_label(content_type_id), object_id, field_name)
            else:
                wanted.setdefault((content_type_id, field_name), []).append((pk, object_id))
        for key, members in wanted.items():
            entry = by_key[key]
            alive = _alive(entry, [object_id for _, object_id in members])
            for pk, object_id in members:
                if object_id not in alive:
                    gone[pk] = _ref(entry, object_id)
        recorded = _recorded_by_pk(gone)
        plan = plan_sources({}, recorded, self.naming)
        counts = self._apply(plan)
        counts["items"] = len(sources)
        return counts, {"phase": "gone", "after": sources[-1][0]}

    # Phase 3 -----------------------------------------------------------------------------

    def _files_step(self, cursor: Cursor) -> tuple[Counter[str], Cursor | None]:
        storages = self._storages()
        index, shard = cursor["storage"], cursor["shard"]
        if index >= len(storages):
            return Counter(), {"phase": "tombstones"}
        storage_ref, entries = storages[index]
        prefix = f"{self.settings.path}/{SHARDS[shard]}/"
        # Names only for the whole folder; the details (a join per row) only for the few
        # rows whose file is not in the listing: at 1M rows that was 8.5 s of 25.
        referenced = set(
            Rendition.objects.filter(name__startswith=prefix).values_list("name", flat=True)
        )
        # A file waiting for DELETE_DELAY is not an orphan: its tombstone deletes it when due.
        referenced.update(
            Tombstone.objects.filter(name__startswith=prefix).values_list("name", flat=True)
        )
        plan, seen = plan_orphans(
            list_files(registry.storage_for(storage_ref), prefix),
            referenced,
            path=self.settings.path,
            now=timezone.now(),
            grace=timedelta(seconds=self.settings.orphan_grace),
        )
        plan.merge(plan_broken(self._recorded_files(entries, referenced - seen)))
        counts = self._apply(plan, storage_ref=storage_ref)
        counts["items"] = 1
        following = shard + 1
        if following == len(SHARDS):
            return counts, {"phase": "files", "storage": index + 1, "shard": 0}
        return counts, {"phase": "files", "storage": index, "shard": following}

    def _storages(self) -> list[tuple[str, list[RegisteredField]]]:
        """Each physical rendition storage once, with every field whose renditions it holds.

        Fields without STORAGE share their own field's storage, usually the same default
        storage: listed once per field, each field's files would look like orphans to the
        others.
        """
        found: dict[tuple[object, ...], tuple[str, list[RegisteredField]]] = {}
        for entry in self.fields:
            storage_ref = registry.rendition_storage_ref(entry)
            identity = _storage_identity(registry.storage_for(storage_ref))
            found.setdefault(identity, (storage_ref, []))[1].append(entry)
        return list(found.values())

    def _recorded_files(
        self, entries: list[RegisteredField], names: set[str]
    ) -> list[RecordedFile]:
        """The rows of these files (missing from the listing), and whether each is current.

        Current: ready, made from the file its source row names, for a spec still required
        of a registered field, and not of a failed source (unless retrying failed ones,
        which renders them anyway) - else a failed source would be forced at every run.
        """
        if not names:
            return []
        by_key = {
            (_content_type_id(entry), entry.name): (entry, entry.model_label) for entry in entries
        }
        rows = Rendition.objects.filter(name__in=names).values_list(
            "pk",
            "spec",
            "state",
            "source_name",
            "source__name",
            "source__state",
            "source__content_type_id",
            "source__object_id",
            "source__field",
        )
        recorded = []
        for pk, spec, state, made_from, current, source_state, type_id, object_id, fname in rows:
            known = by_key.get((type_id, fname))
            if known is None:
                continue  # an unregistered field's row: obsolete, phase 2 retires it
            entry, label = known
            is_current = (
                state == State.READY
                and made_from == current
                and (source_state != State.FAILED or self.retry_failed)
                and spec in self._required_specs(entry)
            )
            recorded.append(
                RecordedFile(pk, SourceRef(label, object_id, fname), current, is_current)
            )
        return recorded

    def _required_specs(self, entry: RegisteredField) -> frozenset[str]:
        known = self._specs_cache.get(entry.key)
        if known is None:
            known = frozenset(str(spec) for spec in self.settings.specs_for(entry.key))
            self._specs_cache[entry.key] = known
        return known

    # Phase 4 -----------------------------------------------------------------------------

    def _tombstones_step(self) -> tuple[Counter[str], Cursor | None]:
        counts: Counter[str] = Counter()
        if self.dry_run:
            return counts, None
        summary = tombstones_delete()
        counts["deleted_files"] += summary["deleted"]
        counts["delete_failed"] += summary["failed"]
        counts["items"] = summary["deleted"] + summary["kept_referenced"]
        return counts, ({"phase": "tombstones"} if summary["more"] else None)

    # Applying a plan ---------------------------------------------------------------------

    def _apply(self, plan: Plan, storage_ref: str | None = None) -> Counter[str]:
        counts: Counter[str] = Counter({key: plan.counts.get(key, 0) for key in COUNTS})
        if self.dry_run:
            return counts
        if plan.delete_renditions or plan.delete_sources:
            counts["deleted_rows"] += self._delete_rows(plan)
        if plan.delete_files and storage_ref is not None:
            # Orphans have no row: one that failed to delete is listed again by the next run.
            outcome = files_delete(registry.storage_for(storage_ref), plan.delete_files)
            counts["deleted_files"] += len(outcome.deleted)
            counts["delete_failed"] += len(outcome.failed)
        for job in plan.generate.values() if self.generate else ():
            if self.sync:
                summary = source_generate(
                    job.ref.model,
                    job.ref.object_id,
                    job.ref.field,
                    job.name,
                    force=job.force,
                    retry_failed=job.retry_failed,
                )
                counts["generated"] += int(summary.get("renditions", 0))
            else:
                entry = registry.field_for(job.ref.model, job.ref.field)
                if entry is not None and self.enqueue is not None:
                    self.enqueue(entry, job.ref.object_id, job.name, job.force)
                    counts["enqueued"] += 1
        return counts

    def _delete_rows(self, plan: Plan) -> int:
        ids = [row.id for row in plan.delete_renditions]
        files_by_storage: dict[str, list[str]] = {}
        owners = Rendition.objects.filter(pk__in=ids).values_list(
            "name", "source__content_type_id", "source__field"
        )
        for name, content_type_id, field_name in owners:
            if name:
                storage_ref = _storage_ref(content_type_id, field_name)
                files_by_storage.setdefault(storage_ref, []).append(name)
        with transaction.atomic():
            deleted, _ = Rendition.objects.filter(pk__in=ids).delete()
            for source in plan.delete_sources:
                gone, _ = Source.objects.filter(
                    content_type_id=_content_type_id_of(source.model),
                    object_id=source.object_id,
                    field=source.field,
                ).delete()
                deleted += gone
            for storage_ref, names in files_by_storage.items():
                tombstones_add(storage_ref, names, Tombstone.Kind.RENDITION)
        return deleted


def _storage_ref(content_type_id: int, field_name: str) -> str:
    """Where the renditions of a (possibly no longer registered) field are stored."""
    model = ContentType.objects.get_for_id(content_type_id).model_class()
    alias = get_settings().storage
    if alias is not None or model is None:
        return alias or "default"
    key = f"{model._meta.app_label}.{model.__name__}.{field_name}"
    return registry.FIELD_STORAGE_PREFIX + key


def _storage_identity(storage: Any) -> tuple[object, ...]:
    """What tells two storage objects apart: the place their files are in."""
    target = getattr(storage, "_wrapped", storage)  # default_storage is a lazy proxy
    if hasattr(target, "bucket_name"):
        return ("s3", target.bucket_name, getattr(target, "location", ""), target.endpoint_url)
    if hasattr(target, "base_location") and hasattr(target, "location"):
        return ("fs", os.path.realpath(target.location))
    return ("object", id(target))


def _ref(entry: RegisteredField, pk: object) -> SourceRef:
    return SourceRef(entry.model_label, str(pk), entry.name)


def _with_file(entry: RegisteredField) -> Any:
    column = entry.field.attname
    return entry.model._default_manager.exclude(**{column: ""}).exclude(
        **{f"{column}__isnull": True}
    )


def _alive(entry: RegisteredField, object_ids: list[str]) -> set[str]:
    """Which of these rows still exist with a file in `entry`'s field."""
    to_python = entry.model._meta.pk.to_python
    pks = [to_python(object_id) for object_id in object_ids]
    return {str(pk) for pk in _with_file(entry).filter(pk__in=pks).values_list("pk", flat=True)}


def _content_type_id(entry: RegisteredField) -> int:
    return ContentType.objects.get_for_model(entry.model).pk


def _content_type_id_of(model_label: str) -> int:
    app_label, model = model_label.split(".")
    return ContentType.objects.get_by_natural_key(app_label, model).pk


def _placement(stored: object, mode: FocalMode) -> str:
    return Focus(stored_focal_box(stored), mode).placement


def _model_label(content_type_id: int) -> str:
    content_type = ContentType.objects.get_for_id(content_type_id)
    return f"{content_type.app_label}.{content_type.model}"


def _recorded(entry: RegisteredField, object_ids: list[str]) -> dict[SourceRef, RecordedSource]:
    """The state and rendition rows of these rows' `entry` field (two queries)."""
    sources = Source.objects.filter(
        content_type_id=_content_type_id(entry), field=entry.name, object_id__in=object_ids
    ).values_list("pk", "object_id", "name", "state", "digest", "focal_point")
    return _with_renditions(
        {
            pk: (_ref(entry, oid), name, state, digest, focal)
            for pk, oid, name, state, digest, focal in sources
        }
    )


def _recorded_by_pk(refs: dict[int, SourceRef]) -> dict[SourceRef, RecordedSource]:
    if not refs:
        return {}
    sources = Source.objects.filter(pk__in=list(refs)).values_list(
        "pk", "name", "state", "digest", "focal_point"
    )
    return _with_renditions(
        {pk: (refs[pk], name, state, digest, focal) for pk, name, state, digest, focal in sources}
    )


def _with_renditions(
    sources: dict[int, tuple[SourceRef, str, str, str, Any]],
) -> dict[SourceRef, RecordedSource]:
    rows: dict[int, list[RecordedRendition]] = {pk: [] for pk in sources}
    for pk, source_id, spec, made_from, state, name, fmt in Rendition.objects.filter(
        source_id__in=list(sources)
    ).values_list("pk", "source_id", "spec", "source_name", "state", "name", "format"):
        rows[source_id].append(RecordedRendition(pk, spec, made_from, state, name, fmt))
    mode = get_settings().focal_point
    return {
        ref: RecordedSource(name, state, digest, tuple(rows[pk]), _placement(focal, mode))
        for pk, (ref, name, state, digest, focal) in sources.items()
    }
