"""Plan a reconciliation: from what is required, recorded and stored, to what to do.

Pure: no Django, no storage, no clock. The reconciler streams its inputs in bounded batches
and calls `plan_sources` for a batch of sources (missing, obsolete, failed renditions) and
`plan_files` for a folder of the storage listing (orphans, broken rows); it applies the
plans it gets. Applying a plan and planning again gives a plan with nothing to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from rendition_worker.core.encoding import EXTENSIONS
from rendition_worker.core.naming import (
    name_prefix,
    name_with_spec,
    parse_rendition_name,
    rendition_name,
    source_key,
    spec_fingerprint,
)
from rendition_worker.core.specs import parse_spec

READY = "ready"
PENDING = "pending"
FAILED = "failed"
# The counters of a plan, as `renditions reconcile --json` reports them.
COUNTS = ("sources", "required", "present", "missing", "obsolete", "orphans", "broken", "failed")


@dataclass(frozen=True, slots=True, order=True)
class SourceRef:
    """One registered field of one row: `app_label.model`, primary key, field name."""

    model: str
    object_id: str
    field: str

    @property
    def identity(self) -> str:
        """The source identity that rendition names hash (see `naming.source_key`)."""
        return f"{self.model}:{self.object_id}:{self.field}"


@dataclass(frozen=True, slots=True)
class RecordedRendition:
    """A rendition row as the reconciler reads it."""

    id: int
    spec: str
    source_name: str
    state: str
    name: str
    format: str


@dataclass(frozen=True, slots=True)
class RecordedSource:
    """A source state row with its rendition rows."""

    name: str
    state: str
    digest: str
    renditions: tuple[RecordedRendition, ...] = ()
    # Where its crops go (`focal.placement_key`); part of the names of cropping specs.
    placement: str = ""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file of the storage listing."""

    name: str
    modified: datetime


@dataclass(frozen=True, slots=True)
class RecordedFile:
    """What a rendition row says about its file: whose it is, and whether it is current."""

    rendition_id: int
    ref: SourceRef
    source_name: str
    current: bool


@dataclass(frozen=True, slots=True)
class Naming:
    """What names depend on beside the source: the PATH prefix and the encoder fingerprint."""

    path: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Generate:
    """Enqueue (or run) generation of `name` for `ref`."""

    ref: SourceRef
    name: str
    force: bool = False
    retry_failed: bool = False


@dataclass(slots=True)
class Plan:
    """What to do, and the counts that describe the state found."""

    generate: dict[SourceRef, Generate] = field(default_factory=dict)
    delete_renditions: list[RecordedRendition] = field(default_factory=list)
    delete_sources: list[SourceRef] = field(default_factory=list)
    delete_files: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def empty(self) -> bool:
        """True when there is nothing to do (counts may still report failed sources)."""
        return not (
            self.generate or self.delete_renditions or self.delete_sources or self.delete_files
        )

    def merge(self, other: Plan) -> None:
        """Add `other`'s actions and counts to this plan."""
        for job in other.generate.values():
            self.add_generate(job.ref, job.name, force=job.force, retry_failed=job.retry_failed)
        self.delete_renditions.extend(other.delete_renditions)
        self.delete_sources.extend(other.delete_sources)
        self.delete_files.extend(other.delete_files)
        self.counts.update(other.counts)

    def add_generate(self, ref: SourceRef, name: str, *, force: bool, retry_failed: bool) -> None:
        """Plan generation of `name` for `ref`, merging force flags with any already planned."""
        known = self.generate.get(ref)
        if known is not None and known.name == name:
            force, retry_failed = force or known.force, retry_failed or known.retry_failed
        self.generate[ref] = Generate(ref, name, force=force, retry_failed=retry_failed)


def expected_name(
    ref: SourceRef, source: RecordedSource, row: RecordedRendition, naming: Naming
) -> str:
    """The name a rendition of `source` would get under the current settings."""
    spec = parse_spec(row.spec)
    return rendition_name(
        path=naming.path,
        key=source_key(ref.identity, source.digest),
        source_name=source.name,
        spec=spec,
        output_format=row.format,
        fingerprint=spec_fingerprint(naming.fingerprint, spec, source.placement),
    )


def plan_sources(
    required: Mapping[SourceRef, tuple[str, frozenset[str]]],
    recorded: Mapping[SourceRef, RecordedSource],
    naming: Naming,
    *,
    retry_failed: bool = False,
) -> Plan:
    """Compare one batch of sources: `required` maps a ref to (file name, canonical specs).

    A recorded source that is not required (row deleted, field cleared or unregistered)
    is obsolete with all its renditions. For a required one: renditions of another file
    or of a spec no longer required are obsolete; required specs without a ready rendition
    under the current settings' name are missing, and make the source be generated again,
    unless it failed for this very file (skipped, and counted, unless `retry_failed`); so
    does a pending one with nothing missing, which its worker never marked done.
    """
    plan = Plan()
    for ref, source in recorded.items():
        if ref not in required:
            plan.delete_renditions.extend(source.renditions)
            plan.delete_sources.append(ref)
            plan.counts["obsolete"] += len(source.renditions)
    for ref, (name, specs) in required.items():
        _plan_required(plan, ref, name, specs, recorded.get(ref), naming, retry_failed)
    return plan


def _plan_required(
    plan: Plan,
    ref: SourceRef,
    name: str,
    specs: frozenset[str],
    source: RecordedSource | None,
    naming: Naming,
    retry_failed: bool,
) -> None:
    plan.counts["sources"] += 1
    plan.counts["required"] += len(specs)
    rows = source.renditions if source is not None and source.name == name else ()
    stale = source.renditions if source is not None and source.name != name else ()
    obsolete = [*stale, *(row for row in rows if row.spec not in specs)]
    plan.delete_renditions.extend(obsolete)
    plan.counts["obsolete"] += len(obsolete)
    if source is not None and source.name == name and source.state == FAILED:
        plan.counts["failed"] += 1
        if not retry_failed:
            return
        plan.add_generate(ref, name, force=False, retry_failed=True)
        plan.counts["missing"] += len(specs)
        return
    present: set[str] = set()
    if source is not None and source.digest:
        # Per source, not per row: the key hash and the file-name slug are the costly parts.
        prefix = name_prefix(naming.path, source_key(ref.identity, source.digest), source.name)
        present = {
            row.spec
            for row in rows
            if row.state == READY
            and row.spec in specs
            and row.source_name == name
            and row.format in EXTENSIONS
            and row.name
            == name_with_spec(
                prefix,
                row.spec,
                row.format,
                spec_fingerprint(naming.fingerprint, parse_spec(row.spec), source.placement),
            )
        }
    plan.counts["present"] += len(present)
    missing = len(specs - present)
    plan.counts["missing"] += missing
    # Pending with nothing missing: its worker stopped (killed, lost) between the last
    # rendition and marking it done. A task finishes it once the claim has lapsed; a task
    # meanwhile finds it claimed and returns.
    unfinished = source is not None and source.name == name and source.state == PENDING
    if missing or unfinished:
        # A ready source only renders again when asked to: force.
        force = source is not None and source.name == name and source.state == READY
        plan.add_generate(ref, name, force=force, retry_failed=False)


class Listed(Protocol):
    """A file of a storage listing: its name, and (perhaps fetched lazily) when it changed."""

    @property
    def name(self) -> str:
        """The storage name."""
        ...

    @property
    def modified(self) -> datetime:
        """When it was last modified (aware)."""
        ...


def plan_orphans(
    listed: Iterable[Listed],
    referenced: Container[str],
    *,
    path: str,
    now: datetime,
    grace: timedelta,
) -> tuple[Plan, set[str]]:
    """Orphans of one folder of the listing; also returns the names that were listed.

    An orphan is a file this naming scheme made (and only such a file) that no row
    references and that is older than `grace` (a worker may be between writing a file and
    recording it). Only such candidates are asked for their modification time, so a
    listing can fetch it lazily.
    """
    plan = Plan()
    seen: set[str] = set()
    for stored in listed:
        seen.add(stored.name)
        if stored.name in referenced or parse_rendition_name(stored.name, path) is None:
            continue
        if now - stored.modified >= grace:
            plan.delete_files.append(stored.name)
            plan.counts["orphans"] += 1
    return plan, seen


def plan_broken(unlisted: Iterable[RecordedFile]) -> Plan:
    """Rows whose file was not in the listing: the current ones are broken.

    Their source is generated again, with force (it is ready, and only force checks files).
    """
    plan = Plan()
    for row in unlisted:
        if row.current:
            plan.counts["broken"] += 1
            plan.add_generate(row.ref, row.source_name, force=True, retry_failed=False)
    return plan


def plan_files(
    listed: Iterable[Listed],
    recorded: Mapping[str, RecordedFile],
    *,
    path: str,
    now: datetime,
    grace: timedelta,
) -> Plan:
    """Orphans and broken rows of one folder, given every row whose file belongs there."""
    plan, seen = plan_orphans(listed, recorded, path=path, now=now, grace=grace)
    plan.merge(plan_broken(row for name, row in recorded.items() if name not in seen))
    return plan
