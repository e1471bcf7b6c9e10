"""The reconciliation planner: every rule on a table of cases, and plan-apply-plan converges.

The second half models what the reconciler sees (model rows, Source and Rendition rows, the
storage listing) in memory, applies a plan as the reconciler and the worker
(`services/generation.py`) would, and checks the issue's requirement: applying a plan and
planning again yields an empty plan.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendition_worker.core.naming import parse_rendition_name, rendition_name, source_key
from rendition_worker.core.planner import (
    FAILED,
    READY,
    Generate,
    Naming,
    Plan,
    RecordedFile,
    RecordedRendition,
    RecordedSource,
    SourceRef,
    StoredFile,
    expected_name,
    plan_files,
    plan_sources,
)
from rendition_worker.core.specs import parse_spec

PENDING = "pending"
PATH = "renditions"
FINGERPRINT = "1a2b3c4d"
OLD_FINGERPRINT = "0f0f0f0f"
NAMING = Naming(PATH, FINGERPRINT)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)

PHOTO = SourceRef("gallery.photo", "42", "image")
CURRENT = "photos/sunset.jpg"
OLDER = "photos/dawn.png"
AVIF = "width-640|format-avif"
JPEG = "width-640|format-jpeg"
WEBP = "fill-160x160|format-webp"
SPECS = frozenset({AVIF, JPEG})
REQUIRED = {PHOTO: (CURRENT, SPECS)}


def digest_of(source_name: str) -> str:
    """The content digest of a source file here: every name holds different bytes."""
    return hashlib.sha256(source_name.encode()).hexdigest()


DIGEST = digest_of(CURRENT)


def output_format(spec: str) -> str:
    """The format the worker writes `spec` in (every spec used here names one)."""
    return parse_spec(spec).format or "jpeg"


def name_for(
    ref: SourceRef,
    source_name: str,
    digest: str,
    spec: str,
    *,
    path: str = PATH,
    fingerprint: str = FINGERPRINT,
) -> str:
    """The storage name of `spec` made from `source_name` whose content is `digest`."""
    return rendition_name(
        path=path,
        key=source_key(ref.identity, digest),
        source_name=source_name,
        spec=parse_spec(spec),
        output_format=output_format(spec),
        fingerprint=fingerprint,
    )


def made(
    spec: str,
    source_name: str = CURRENT,
    *,
    id: int = 1,
    state: str = READY,
    digest: str | None = None,
    path: str = PATH,
    fingerprint: str = FINGERPRINT,
) -> RecordedRendition:
    """A rendition row as the worker records it: named after `source_name`'s own content."""
    name = name_for(
        PHOTO,
        source_name,
        digest_of(source_name) if digest is None else digest,
        spec,
        path=path,
        fingerprint=fingerprint,
    )
    return RecordedRendition(id, spec, source_name, state, name, output_format(spec))


def source(
    *rows: RecordedRendition, name: str = CURRENT, state: str = READY, digest: str | None = None
) -> RecordedSource:
    """A Source row of PHOTO, ready for CURRENT by default, with `rows`."""
    return RecordedSource(name, state, digest_of(name) if digest is None else digest, rows)


def counts(plan: Plan) -> dict[str, int]:
    """The plan's non-zero counters."""
    return {key: value for key, value in plan.counts.items() if value}


def files_plan(*listed: StoredFile, recorded: dict[str, RecordedFile] | None = None) -> Plan:
    """`plan_files` at NOW with GRACE, under PATH."""
    return plan_files(listed, recorded or {}, path=PATH, now=NOW, grace=GRACE)


def stored(name: str, age: timedelta = 30 * GRACE) -> StoredFile:
    """A listed file last modified `age` before NOW (old enough to be an orphan by default)."""
    return StoredFile(name, NOW - age)


# --- plan_sources: missing ------------------------------------------------------------------

# The AVIF rendition's row in each case; the JPEG one is always present.
MISSING_ROWS: dict[str, RecordedRendition | None] = {
    "no rendition row": None,
    "pending row": made(AVIF, id=2, state=PENDING),
    "failed row": made(AVIF, id=2, state=FAILED),
    "pending row without a name yet": replace(made(AVIF, id=2, state=PENDING), name=""),
    # Kept (not obsolete): the worker's update_or_create on (source, spec) replaces it.
    "row of an older file": made(AVIF, OLDER, id=2),
    "name under another fingerprint": made(AVIF, id=2, fingerprint=OLD_FINGERPRINT),
    "name under another PATH": made(AVIF, id=2, path="media/renditions"),
    "name of other content": made(AVIF, id=2, digest=digest_of("the bytes before")),
    # Not a crash (a KeyError on the extension): such a row is simply not today's.
    "ready row without a format": replace(made(AVIF, id=2), format=""),
}


@pytest.mark.parametrize("avif_row", MISSING_ROWS.values(), ids=list(MISSING_ROWS))
def test_a_required_spec_without_a_current_ready_rendition_is_missing(
    avif_row: RecordedRendition | None,
) -> None:
    rows = (made(JPEG, id=1),) if avif_row is None else (made(JPEG, id=1), avif_row)
    plan = plan_sources(REQUIRED, {PHOTO: source(*rows)}, NAMING)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT, force=True)}
    assert counts(plan) == {"sources": 1, "required": 2, "present": 1, "missing": 1}
    assert (plan.delete_renditions, plan.delete_sources, plan.delete_files) == ([], [], [])


def test_a_source_without_a_state_row_misses_every_spec() -> None:
    plan = plan_sources(REQUIRED, {}, NAMING)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT)}
    assert counts(plan) == {"sources": 1, "required": 2, "missing": 2}


def test_a_source_without_a_digest_has_nothing_present() -> None:
    # Its names cannot be checked without the digest: render, and the worker records one.
    recorded = source(made(JPEG, id=1), made(AVIF, id=2), digest="")
    plan = plan_sources(REQUIRED, {PHOTO: recorded}, NAMING)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT, force=True)}
    assert counts(plan) == {"sources": 1, "required": 2, "missing": 2}


@pytest.mark.parametrize(
    ("recorded", "force"),
    [
        (None, False),
        (source(state=PENDING), False),
        (source(state=READY), True),
        (source(name=OLDER, state=READY), False),
        (source(name=OLDER, state=FAILED), False),
    ],
    ids=["no state row", "pending", "ready", "ready for an older file", "failed older file"],
)
def test_force_only_for_a_source_ready_for_its_current_file(
    recorded: RecordedSource | None, force: bool
) -> None:
    # The worker's claim skips a ready source unless forced; a pending or replaced one (the
    # worker points the state at the new file, pending) is claimed without force.
    plan = plan_sources(REQUIRED, {} if recorded is None else {PHOTO: recorded}, NAMING)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT, force=force)}


# --- plan_sources: present, obsolete, failed ----------------------------------------------------


def test_ready_renditions_under_their_current_names_are_present() -> None:
    plan = plan_sources(REQUIRED, {PHOTO: source(made(JPEG, id=1), made(AVIF, id=2))}, NAMING)
    assert plan.empty
    assert counts(plan) == {"sources": 1, "required": 2, "present": 2}


def test_a_pending_source_with_every_rendition_present_is_generated_to_finish_it() -> None:
    # Its worker died after the last rendition, before marking it done (a forced regenerate
    # keeps the digest): nothing is missing, and the task only marks it ready.
    recorded = source(made(JPEG, id=1), made(AVIF, id=2), state=PENDING)
    plan = plan_sources(REQUIRED, {PHOTO: recorded}, NAMING)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT)}
    assert counts(plan) == {"sources": 1, "required": 2, "present": 2}


@pytest.mark.parametrize(
    "spec",
    [
        "fill-160x120-c50|format-webp|webpquality-70",
        "max-800x600|format-jpeg|bgcolor-102030",
        "original|format-png",
        "scale-50|format-avif|avifquality-50",
    ],
)
def test_any_canonical_spec_named_by_the_worker_is_present(spec: str) -> None:
    # The planner builds today's names itself, per source; they must be rendition_name's.
    plan = plan_sources({PHOTO: (CURRENT, frozenset({spec}))}, {PHOTO: source(made(spec))}, NAMING)
    assert plan.empty
    assert counts(plan) == {"sources": 1, "required": 1, "present": 1}


def test_a_spec_without_a_format_is_named_after_the_format_recorded() -> None:
    # A spec without format- keeps the source's format: the row says which one it was.
    required = {PHOTO: (CURRENT, frozenset({"width-640"}))}
    jpeg = made("width-640")
    png = replace(jpeg, format="png", name=jpeg.name.removesuffix(".jpg") + ".png")
    assert counts(plan_sources(required, {PHOTO: source(png)}, NAMING))["present"] == 1
    mislabelled = replace(png, format="webp")
    assert counts(plan_sources(required, {PHOTO: source(mislabelled)}, NAMING))["missing"] == 1


def test_the_rendition_of_a_spec_no_longer_required_is_obsolete() -> None:
    webp = made(WEBP, id=3)
    recorded = source(made(JPEG, id=1), made(AVIF, id=2), webp)
    plan = plan_sources(REQUIRED, {PHOTO: recorded}, NAMING)
    assert plan.delete_renditions == [webp]
    assert (plan.generate, plan.delete_sources) == ({}, [])
    assert counts(plan) == {"sources": 1, "required": 2, "present": 2, "obsolete": 1}


def test_renditions_of_a_replaced_file_are_obsolete_and_the_new_one_missing() -> None:
    rows = (made(JPEG, OLDER, id=1), made(AVIF, OLDER, id=2))
    plan = plan_sources(REQUIRED, {PHOTO: source(*rows, name=OLDER)}, NAMING)
    assert plan.delete_renditions == list(rows)
    assert plan.delete_sources == []  # the worker points the state row at the new file
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT)}
    assert counts(plan) == {"sources": 1, "required": 2, "missing": 2, "obsolete": 2}


def test_a_source_no_longer_required_is_obsolete_with_its_state_row() -> None:
    rows = (made(JPEG, id=1), made(AVIF, id=2))
    plan = plan_sources({}, {PHOTO: source(*rows)}, NAMING)
    assert plan.delete_renditions == list(rows)
    assert plan.delete_sources == [PHOTO]
    assert plan.generate == {}
    assert counts(plan) == {"obsolete": 2}


def test_a_source_failed_for_its_current_file_is_counted_and_skipped() -> None:
    webp = made(WEBP, id=3)
    plan = plan_sources(REQUIRED, {PHOTO: source(webp, state=FAILED)}, NAMING)
    assert plan.generate == {}
    assert plan.delete_renditions == [webp]  # obsolete renditions go all the same
    assert counts(plan) == {"sources": 1, "required": 2, "failed": 1, "obsolete": 1}


def test_retry_failed_generates_a_failed_source_again() -> None:
    plan = plan_sources(REQUIRED, {PHOTO: source(state=FAILED)}, NAMING, retry_failed=True)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT, retry_failed=True)}
    assert counts(plan) == {"sources": 1, "required": 2, "failed": 1, "missing": 2}


def test_a_failure_of_an_older_file_is_neither_counted_nor_a_reason_to_wait() -> None:
    plan = plan_sources(REQUIRED, {PHOTO: source(name=OLDER, state=FAILED)}, NAMING)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT)}
    assert counts(plan) == {"sources": 1, "required": 2, "missing": 2}


def test_counts_of_a_batch_add_up_over_its_sources() -> None:
    other = SourceRef("gallery.photo", "43", "image")
    gone = SourceRef("blog.post", "7", "cover")
    required = {PHOTO: (CURRENT, SPECS), other: (OLDER, frozenset({WEBP}))}
    recorded = {PHOTO: source(made(JPEG, id=1)), gone: source(made(AVIF, id=9))}
    plan = plan_sources(required, recorded, NAMING)
    assert set(plan.generate) == {PHOTO, other}
    assert plan.delete_sources == [gone]
    assert counts(plan) == {"sources": 2, "required": 3, "present": 1, "missing": 2, "obsolete": 1}


def test_a_row_recorded_from_another_file_is_never_present() -> None:
    # The same bytes under a name with the same stem: the row's file name is today's name.
    moved = replace(made(AVIF, id=2), source_name="2023/sunset.jpg")
    assert moved.name == expected_name(PHOTO, source(), moved, NAMING)
    plan = plan_sources(REQUIRED, {PHOTO: source(made(JPEG, id=1), moved)}, NAMING)
    assert counts(plan) == {"sources": 1, "required": 2, "present": 1, "missing": 1}


# --- plan_files: orphans, foreign files, broken rows --------------------------------------------

OURS = name_for(PHOTO, CURRENT, DIGEST, AVIF)


@pytest.mark.parametrize(
    ("age", "orphan"),
    [
        (timedelta(0), False),
        (-timedelta(minutes=5), False),  # "modified" after NOW: storage clock ahead of ours
        (GRACE - timedelta(microseconds=1), False),
        # Exactly ORPHAN_GRACE old is deleted (`>=`). DESIGN only promises to keep files
        # *younger* than the grace, and the grace exists to cover a worker between writing a
        # file and recording its row, a matter of one transaction; at the default hour, one
        # clock tick either side of the boundary cannot make the difference.
        (GRACE, True),
        (GRACE + timedelta(seconds=1), True),
        (30 * GRACE, True),
    ],
    ids=["new", "from the future", "just young", "exactly grace", "just old", "old"],
)
def test_an_unreferenced_file_of_ours_is_an_orphan_once_old_enough(
    age: timedelta, orphan: bool
) -> None:
    plan = files_plan(stored(OURS, age))
    assert plan.delete_files == ([OURS] if orphan else [])
    assert counts(plan) == ({"orphans": 1} if orphan else {})


def test_a_file_of_ours_made_with_older_encoder_settings_is_still_ours() -> None:
    old = name_for(PHOTO, CURRENT, DIGEST, AVIF, fingerprint=OLD_FINGERPRINT)
    assert files_plan(stored(old)).delete_files == [old]


@pytest.mark.parametrize("current", [True, False], ids=["current row", "stale row"])
def test_a_file_a_row_references_is_never_an_orphan(current: bool) -> None:
    plan = files_plan(stored(OURS), recorded={OURS: RecordedFile(1, PHOTO, CURRENT, current)})
    assert plan.empty
    assert counts(plan) == {}


_KEY = source_key(PHOTO.identity, DIGEST)
FOREIGN = {
    "not a rendition name": f"{PATH}/readme.txt",
    "an original kept beside them": f"{PATH}/photos/sunset.jpg",
    "a folder deeper": OURS.replace(f"/{_KEY}/", f"/{_KEY}/x/"),
    "under another PATH": name_for(PHOTO, CURRENT, DIGEST, AVIF, path="media/renditions"),
    "under a PATH look-alike": OURS.replace(f"{PATH}/", f"{PATH}-old/", 1),
    "non-canonical spec order": OURS.replace(".width-640.format-avif.", ".format-avif.width-640."),
    "default quality spelled out": OURS.replace(".format-avif.", ".format-avif.avifquality-64."),
    "shard not of its key": OURS.replace(f"/{_KEY[:2]}/", "/zz/" if _KEY[:2] != "zz" else "/00/"),
    "extension of another format": OURS.removesuffix(".avif") + ".webp",
    "unknown extension": name_for(PHOTO, CURRENT, DIGEST, JPEG).removesuffix(".jpg") + ".jpeg",
    "upper-case stem": OURS.replace("/sunset.", "/Sunset."),
    "short fingerprint": OURS.replace(f".{FINGERPRINT}.", ".1a2b3c."),
}


@pytest.mark.parametrize("name", FOREIGN.values(), ids=list(FOREIGN))
def test_a_file_our_naming_did_not_make_is_never_deleted(name: str) -> None:
    plan = files_plan(stored(name, 1000 * GRACE))
    assert plan.empty
    assert counts(plan) == {}


def test_a_current_row_whose_file_is_not_listed_is_broken() -> None:
    plan = files_plan(stored("elsewhere"), recorded={OURS: RecordedFile(7, PHOTO, CURRENT, True)})
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT, force=True)}
    assert counts(plan) == {"broken": 1}


def test_a_stale_row_whose_file_is_not_listed_is_not_broken() -> None:
    # plan_sources deletes or regenerates it; asking for its old file would be wasted work.
    plan = files_plan(recorded={OURS: RecordedFile(7, PHOTO, OLDER, False)})
    assert plan.empty
    assert counts(plan) == {}


# --- Plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("forced_first", [True, False], ids=["forced first", "forced last"])
def test_merge_ors_the_generate_flags_and_adds_everything_else(forced_first: bool) -> None:
    forced, retried = Plan(), Plan()
    forced.add_generate(PHOTO, CURRENT, force=True, retry_failed=False)
    forced.delete_files.append(OURS)
    forced.counts.update(broken=1, orphans=1)
    retried.add_generate(PHOTO, CURRENT, force=False, retry_failed=True)
    retried.delete_renditions.append(made(WEBP, id=3))
    retried.delete_sources.append(SourceRef("blog.post", "7", "cover"))
    retried.counts.update(sources=1, failed=1, missing=2)
    plan, other = (forced, retried) if forced_first else (retried, forced)
    plan.merge(other)
    assert plan.generate == {PHOTO: Generate(PHOTO, CURRENT, force=True, retry_failed=True)}
    assert plan.delete_renditions == [made(WEBP, id=3)]
    assert plan.delete_sources == [SourceRef("blog.post", "7", "cover")]
    assert plan.delete_files == [OURS]
    assert counts(plan) == {"sources": 1, "failed": 1, "missing": 2, "broken": 1, "orphans": 1}


def test_merge_of_generates_for_two_file_names_keeps_the_later_one() -> None:
    # Documents current behaviour, which depends on merge order (see the report on the issue):
    # the flags of the replaced job are dropped, not combined.
    plan, other = Plan(), Plan()
    plan.add_generate(PHOTO, CURRENT, force=False, retry_failed=True)
    other.add_generate(PHOTO, OLDER, force=True, retry_failed=False)
    plan.merge(other)
    assert plan.generate == {PHOTO: Generate(PHOTO, OLDER, force=True)}


def test_a_plan_with_counts_only_is_empty() -> None:
    plan = Plan()
    assert plan.empty
    plan.counts.update(sources=3, present=5, failed=1)
    assert plan.empty


@pytest.mark.parametrize(
    "action", ["generate", "delete_renditions", "delete_sources", "delete_files"]
)
def test_any_action_makes_a_plan_busy(action: str) -> None:
    plan = Plan()
    if action == "generate":
        plan.add_generate(PHOTO, CURRENT, force=False, retry_failed=False)
    elif action == "delete_renditions":
        plan.delete_renditions.append(made(AVIF))
    elif action == "delete_sources":
        plan.delete_sources.append(PHOTO)
    else:
        plan.delete_files.append(OURS)
    assert not plan.empty


# --- Applying a plan and planning again gives an empty plan -------------------------------------


@dataclass
class Row:
    """A Rendition row of the simulated database."""

    id: int
    spec: str
    source_name: str
    state: str
    name: str
    format: str


@dataclass
class SourceState:
    """A Source row with its Rendition rows, keyed by spec like the (source, spec) constraint."""

    name: str
    state: str
    digest: str
    renditions: dict[str, Row] = field(default_factory=dict)


@dataclass
class World:
    """What the reconciler reads and the worker changes, in memory."""

    fields: dict[SourceRef, str]  # rows of registered fields that hold a file: its name
    specs: dict[tuple[str, str], frozenset[str]]  # required specs per (model, field)
    sources: dict[SourceRef, SourceState]
    files: dict[str, datetime]  # the storage: name -> modified
    bad: frozenset[str]  # source files that cannot be decoded, however often retried
    next_id: int = 1000

    def required(self) -> dict[SourceRef, tuple[str, frozenset[str]]]:
        """The `required` argument of `plan_sources`."""
        return {ref: (name, self.specs[ref.model, ref.field]) for ref, name in self.fields.items()}

    def referenced(self) -> set[str]:
        """The file names rendition rows record."""
        return {row.name for s in self.sources.values() for row in s.renditions.values()}


def is_current(world: World, ref: SourceRef, state: SourceState, row: Row, retry: bool) -> bool:
    """Whether the reconciler passes `row` to `plan_files` as current (its file must exist).

    A ready row of the field's current file, unless that source failed and failures are
    not retried: a broken row is generated with force, and force claims a failed source
    too (generation.py `_claim`), so it would be retried at every reconciliation.
    """
    name = world.fields.get(ref)
    return (
        row.state == READY
        and name == state.name == row.source_name
        and (state.state != FAILED or retry)
    )


def planned_name(ref: SourceRef, state: SourceState, spec: str) -> str:
    """`expected_name` of `spec` for the simulated Source row `state`."""
    row = RecordedRendition(0, spec, state.name, READY, "", output_format(spec))
    return expected_name(ref, RecordedSource(state.name, state.state, state.digest), row, NAMING)


def plan_world(world: World, *, retry_failed: bool = False) -> Plan:
    """Plan as the reconciler does: sources, then the listing, merged into one plan."""
    recorded = {
        ref: RecordedSource(
            state.name,
            state.state,
            state.digest,
            tuple(
                RecordedRendition(r.id, r.spec, r.source_name, r.state, r.name, r.format)
                for r in state.renditions.values()
            ),
        )
        for ref, state in world.sources.items()
    }
    plan = plan_sources(world.required(), recorded, NAMING, retry_failed=retry_failed)
    rows = {
        row.name: RecordedFile(
            row.id, ref, row.source_name, is_current(world, ref, state, row, retry_failed)
        )
        for ref, state in world.sources.items()
        for row in state.renditions.values()
        if row.name
    }
    listed = [StoredFile(name, modified) for name, modified in world.files.items()]
    plan.merge(plan_files(listed, rows, path=PATH, now=NOW, grace=GRACE))
    return plan


def apply(world: World, plan: Plan) -> World:
    """The world after the reconciler carries `plan` out and the worker runs its jobs."""
    world = copy.deepcopy(world)
    doomed = {row.id for row in plan.delete_renditions}
    for state in world.sources.values():
        for spec, row in list(state.renditions.items()):
            if row.id in doomed:
                del state.renditions[spec]
                world.files.pop(row.name, None)
    for ref in plan.delete_sources:
        gone = world.sources.pop(ref, None)
        for row in gone.renditions.values() if gone else ():
            world.files.pop(row.name, None)
    for name in plan.delete_files:
        world.files.pop(name, None)
    for job in plan.generate.values():
        work(world, job)
    return world


def work(world: World, job: Generate) -> None:
    """What `source_generate` does for `job`, step for step (stale files deleted at once)."""
    if world.fields.get(job.ref) != job.name:
        return  # the row is gone or holds another file by now
    state = world.sources.get(job.ref)
    if state is None:
        state = world.sources[job.ref] = SourceState(job.name, PENDING, "")
    elif state.name != job.name:  # source_point_at: retire what other files made
        for spec, row in list(state.renditions.items()):
            if row.source_name != job.name:
                del state.renditions[spec]
                world.files.pop(row.name, None)
        state.name, state.state, state.digest = job.name, PENDING, ""
    if not job.force and (state.state == READY or (state.state == FAILED and not job.retry_failed)):
        return  # the claim refuses it
    digest = digest_of(job.name)
    needed = needed_specs(world, state, job, digest)
    if needed and job.name in world.bad:
        state.state, state.digest = FAILED, digest
        return
    for spec in needed:
        target = name_for(job.ref, job.name, digest, spec)
        world.files.setdefault(target, NOW)  # a file already there has these very bytes
        previous = state.renditions.get(spec)
        if previous is None:
            row_id, world.next_id = world.next_id, world.next_id + 1
        else:
            row_id = previous.id
        state.renditions[spec] = Row(row_id, spec, job.name, READY, target, output_format(spec))
        if previous is not None and previous.name and previous.name != target:
            world.files.pop(previous.name, None)  # tombstoned, due at once
    state.state, state.digest = READY, digest


def needed_specs(world: World, state: SourceState, job: Generate, digest: str) -> list[str]:
    """The worker's `_needed`: required specs without a ready rendition under today's name.

    Only rows of this very file count; with force, so does a row whose file is gone.
    """
    needed = []
    for spec in sorted(world.specs[job.ref.model, job.ref.field]):
        row = state.renditions.get(spec)
        ready = row is not None and row.source_name == job.name and row.state == READY
        if (
            row is None
            or not ready
            or row.name != name_for(job.ref, job.name, digest, spec)
            or (job.force and row.name not in world.files)
        ):
            needed.append(spec)
    return needed


REGISTERED = (("gallery.photo", "image"), ("gallery.photo", "thumb"), ("blog.post", "cover"))
REFS = (
    SourceRef("gallery.photo", "1", "image"),
    SourceRef("gallery.photo", "1", "thumb"),
    SourceRef("gallery.photo", "2", "image"),
    SourceRef("blog.post", "1", "cover"),
    SourceRef("blog.post", "7", "legacy"),  # a field no longer registered
)
# "2024/sunset.jpg" shares its stem with CURRENT: only the key tells their renditions apart.
FILES = (CURRENT, OLDER, "2024/sunset.jpg", "photos/café au lait.jpg")
SPEC_POOL = (
    AVIF,
    JPEG,
    WEBP,
    "width-320|format-avif",
    "original|format-png",
    "width-1280|format-jpeg|jpegquality-70",
)
STATES = (READY, PENDING, FAILED)
AGES = (
    timedelta(0),
    GRACE - timedelta(seconds=1),
    GRACE,
    GRACE + timedelta(seconds=1),
    30 * GRACE,
)
FOREIGN_FILES = (
    f"{PATH}/readme.txt",
    f"{PATH}/{_KEY[:2]}/{_KEY}/notes.txt",
    OURS.replace(".width-640.format-avif.", ".format-avif.width-640."),
    name_for(PHOTO, CURRENT, DIGEST, AVIF, path="media/renditions"),
)
ROW_NAMES = ("expected", "made", "stale key", "old fingerprint", "other path", "none")
T = TypeVar("T")


def mostly(likely: T, *others: T) -> st.SearchStrategy[T]:
    """Mostly `likely`, sometimes one of `others`: most of a real world is in order."""
    return st.sampled_from((likely, likely, likely, likely, likely, likely, *others))


@st.composite
def rendition_rows(
    draw: st.DrawFn, ref: SourceRef, state: SourceState, world: World
) -> dict[str, Row]:
    """Rendition rows of `state`: random specs, files, states and (current or stale) names."""
    required = sorted(world.specs.get((ref.model, ref.field), ()))
    kept = [spec for spec in required if draw(mostly(True, False))]
    others = draw(st.lists(st.sampled_from(SPEC_POOL), unique=True, max_size=2))
    rows: dict[str, Row] = {}
    for spec in dict.fromkeys([*kept, *others]):
        row_id, world.next_id = world.next_id, world.next_id + 1
        made_from = draw(mostly(state.name, *FILES))
        digest = digest_of(made_from)
        kind = draw(mostly(*ROW_NAMES))
        if kind == "expected":  # what the planner expects, whatever file the row names
            name = planned_name(ref, state, spec)
        elif kind == "made":  # what the worker wrote from that file
            name = name_for(ref, made_from, digest, spec)
        elif kind == "stale key":
            name = name_for(ref, made_from, f"row {row_id}", spec)
        elif kind == "old fingerprint":
            name = name_for(ref, made_from, digest, spec, fingerprint=OLD_FINGERPRINT)
        elif kind == "other path":
            name = name_for(ref, made_from, digest, spec, path="old-renditions")
        else:
            name = ""
        state_of_row = draw(mostly(*STATES))
        rows[spec] = Row(row_id, spec, made_from, state_of_row, name, output_format(spec))
        if name and draw(st.sampled_from((True, True, False))):  # else: broken, or no file yet
            world.files[name] = NOW - draw(st.sampled_from(AGES))
    return rows


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """A few sources in every state the reconciler can meet, with their storage listing."""
    specs = {
        key: frozenset(draw(st.lists(st.sampled_from(SPEC_POOL), min_size=1, max_size=3)))
        for key in REGISTERED
    }
    world = World(
        fields={},
        specs=specs,
        sources={},
        # The originals share the storage; they are never ours to delete.
        files=dict.fromkeys(FILES, NOW - 30 * GRACE),
        bad=draw(st.sampled_from((frozenset(), *(frozenset({name}) for name in FILES)))),
        next_id=1,
    )
    for ref in draw(st.lists(st.sampled_from(REFS), min_size=1, max_size=4, unique=True)):
        current = None
        if (ref.model, ref.field) in specs and draw(mostly(True, False)):
            current = world.fields[ref] = draw(st.sampled_from(FILES))
        if draw(mostly(True, False)):
            # Another name than the field's: replaced without a signal (update(), raw SQL).
            name = draw(st.sampled_from(FILES) if current is None else mostly(current, *FILES))
            digest = draw(mostly(digest_of(name), "", digest_of(f"once {name}")))
            state = SourceState(name, draw(st.sampled_from((READY, *STATES))), digest)
            state.renditions = draw(rendition_rows(ref, state, world))
            world.sources[ref] = state
    orphans = st.tuples(
        st.sampled_from(REFS),
        st.sampled_from(FILES),
        st.sampled_from(SPEC_POOL),
        st.one_of(st.none(), st.text("0123456789abcdef", min_size=16, max_size=16)),
        st.sampled_from((FINGERPRINT, OLD_FINGERPRINT)),
        st.sampled_from(AGES),
    )
    for ref, made_from, spec, key, fingerprint, age in draw(st.lists(orphans, max_size=3)):
        # No key: the name the worker would write (it died before recording the row).
        name = name_for(ref, made_from, digest_of(made_from), spec, fingerprint=fingerprint)
        if key is not None:
            name = rendition_name(
                path=PATH,
                key=key,
                source_name=made_from,
                spec=parse_spec(spec),
                output_format=output_format(spec),
                fingerprint=fingerprint,
            )
        world.files.setdefault(name, NOW - age)
    for name in draw(st.sets(st.sampled_from(FOREIGN_FILES))):
        world.files[name] = NOW - draw(st.sampled_from(AGES))
    return world


def describe(plan: Plan) -> str:
    """The actions of `plan`, for an assertion message."""
    return (
        f"generate={list(plan.generate.values())} delete_renditions={plan.delete_renditions} "
        f"delete_sources={plan.delete_sources} delete_files={plan.delete_files}"
    )


@settings(max_examples=200, deadline=None)
@given(world=worlds(), retry_failed=st.booleans())
def test_applying_a_plan_and_planning_again_gives_an_empty_plan(
    world: World, retry_failed: bool
) -> None:
    after = apply(world, plan_world(world, retry_failed=retry_failed))
    # Without --retry-failed: a source that failed again must not be planned once more.
    again = plan_world(after)
    assert again.empty, describe(again)
    assert apply(after, again) == after
    assert plan_world(after).counts == again.counts


@settings(max_examples=200, deadline=None)
@given(world=worlds(), retry_failed=st.booleans())
def test_a_plan_deletes_only_files_that_rows_or_our_naming_prove_ours(
    world: World, retry_failed: bool
) -> None:
    plan = plan_world(world, retry_failed=retry_failed)
    referenced = world.referenced()
    for name in plan.delete_files:
        assert name not in referenced
        assert parse_rendition_name(name, PATH) is not None
        assert NOW - world.files[name] >= GRACE
    after = apply(world, plan)
    deleted = set(world.files) - set(after.files)
    assert deleted <= referenced | set(plan.delete_files), deleted
    assert set(FILES) <= set(after.files)  # the originals


@settings(max_examples=200, deadline=None)
@given(world=worlds(), retry_failed=st.booleans())
def test_after_applying_a_plan_every_renderable_source_is_complete(
    world: World, retry_failed: bool
) -> None:
    after = apply(world, plan_world(world, retry_failed=retry_failed))
    required = after.required()
    assert set(after.sources) <= set(required)  # no state row of a source that went
    for ref, (name, specs) in required.items():
        before = world.sources.get(ref)
        state = after.sources.get(ref)
        retried = before is not None and (before.name, before.state) == (name, FAILED)
        if retry_failed and retried and name not in world.bad:
            # --retry-failed renders a failed source again; only a bad file can fail again.
            assert state is not None
            assert state.state == READY
        if state is not None:  # nothing obsolete is left, even of a failed source
            assert state.name == name or not state.renditions
            assert set(state.renditions) <= specs
        if state is None or state.state == FAILED:
            continue  # failed before (and not retried), or its file is bad
        for spec in specs:
            row = state.renditions[spec]
            assert (row.state, row.name) == (READY, planned_name(ref, state, spec))
            if is_current(after, ref, state, row, retry_failed):
                assert row.name in after.files


def test_a_new_placement_makes_the_crops_missing_and_nothing_else() -> None:
    from dataclasses import replace

    from rendition_worker.core.naming import spec_fingerprint

    specs = frozenset({AVIF, WEBP})
    boxed = "box:0.1000,0.1000,0.2000,0.2000"
    crop_fingerprint = spec_fingerprint(FINGERPRINT, parse_spec(WEBP), boxed)
    rows = (made(AVIF, id=1), made(WEBP, id=2, fingerprint=crop_fingerprint))
    recorded = replace(source(*rows), placement=boxed)
    plan = plan_sources({PHOTO: (CURRENT, specs)}, {PHOTO: recorded}, NAMING)
    assert plan.empty and counts(plan) == {"sources": 1, "required": 2, "present": 2}
    assert expected_name(PHOTO, recorded, rows[1], NAMING) == rows[1].name

    # The box changed (or was cleared): the crop's name is stale, the width's is not.
    moved = replace(recorded, placement="auto:1")
    plan = plan_sources({PHOTO: (CURRENT, specs)}, {PHOTO: moved}, NAMING)
    assert counts(plan) == {"sources": 1, "required": 2, "present": 1, "missing": 1}
    assert plan.generate[PHOTO].force  # a ready source renders again only when forced
    assert expected_name(PHOTO, moved, rows[0], NAMING) == rows[0].name
    assert expected_name(PHOTO, moved, rows[1], NAMING) != rows[1].name
