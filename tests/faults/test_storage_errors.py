"""A storage whose save and delete fail some of the time: retried with backoff, nothing lost."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.files.base import ContentFile

from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.tasks import RETRY_OPTIONS
from tests.faults.conftest import (
    SPECS_PER_PHOTO,
    Stage,
    all_ready,
    damaged_renditions,
    original,
    photo_bytes,
    record_fault,
    settle,
    storages,
    stray_files,
    wait_until,
)
from tests.faults.storages import (
    COUNTER_ENV,
    EVERY_ENV,
    LEDGER_ENV,
    ORIGINAL_DELETE_FAILS_ENV,
    ledger_lines,
)
from tests.testapp.models import Photo

PHOTOS = 4
# Every 5th save or delete fails. The backoff is the tasks' own policy (2 s x 2^n with full
# jitter, fixed in their decorator), so failing more often costs waiting time: every 3rd
# call means about 4 retries per source, the last ones waiting up to 16 or 32 s; every
# 4th took from 25 to 57 s in all, every 5th keeps the test near half a minute.
EVERY = 5
# The delete of the replaced original fails this often whatever the count says, so that
# the test does not depend on where that call falls among the others.
ORIGINAL_DELETE_FAILS = 2
# How long the waits may take: a run retried 5 times may wait up to 2+4+8+16+32 s by the
# policy (about half that on average); typically the whole test takes half a minute.
PATIENCE = 240
# The end of one run of a task, as the worker logs it.
RUN_END = re.compile(
    r"^\[(?P<at>[\d-]+ [\d:,]+): \w+/[\w-]+\] Task (?P<task>rendition_worker\.\w+)"
    r"\[(?P<id>[0-9a-f-]+)\] (?:retry: Retry in (?P<countdown>\d+)s: (?P<error>.*)|(?P<end>.*))$",
    re.MULTILINE,
)
INJECTED = re.compile(r"injected storage failure #(\d+)")


@dataclass(frozen=True)
class Run:
    """One run of a task: when it ended, and its retry's countdown if it was retried."""

    at: datetime
    task: str
    countdown: int | None
    text: str


def task_runs(log: str) -> dict[str, list[Run]]:
    """The runs of each task id (a retry keeps the id), in the order they ended."""
    runs: dict[str, list[Run]] = {}
    for match in RUN_END.finditer(log):
        if match["end"] is not None and match["end"].endswith("received"):
            continue
        countdown = None if match["countdown"] is None else int(match["countdown"])
        at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
        text = match["error"] or match["end"]
        runs.setdefault(match["id"], []).append(Run(at, match["task"], countdown, text))
    return runs


def retry_pending(log: str) -> bool:
    """Whether a task's last run so far was retried: its next run is still to come."""
    return any(sequence[-1].countdown is not None for sequence in task_runs(log).values())


def calls(ledger: Path) -> list[tuple[int, str, str, str]]:
    """Every save and delete the storage was asked for: (number, action, outcome, name)."""
    parsed = []
    for line in ledger_lines(ledger):
        number, action, outcome, name = line.split(" ", 3)
        parsed.append((int(number[1:]), action, outcome, name))
    return parsed


def rendition(name: str) -> bool:
    """Whether `name` is a rendition's (under PATH, the default "renditions")."""
    return name.startswith("renditions/")


def never_failed(condition: Callable[[], Any]) -> Callable[[], Any]:
    """`condition`, which first fails the test if any source is recorded as failed."""

    def checked() -> Any:
        failed = list(Source.objects.filter(state=State.FAILED).values_list("name", "error"))
        assert not failed, f"recorded as bad sources: {failed}"
        return condition()

    return checked


def sha256(data: bytes) -> str:
    """The SHA-256 of `data`, in hex."""
    return hashlib.sha256(data).hexdigest()


def test_storage_errors_are_retried_with_backoff_and_lose_nothing(stage: Stage) -> None:
    ledger = stage.directory / "ledger.txt"
    stage.configure(
        rendition_worker={"ORPHAN_GRACE": 0},
        worker={"STORAGES": storages("tests.faults.storages.FlakyStorage")},
    )
    uploads = {f"s{seed}.jpg": photo_bytes(seed) for seed in range(PHOTOS + 1)}
    worker = stage.worker(start=False)
    worker.env[COUNTER_ENV] = str(stage.directory / "calls.txt")
    worker.env[EVERY_ENV] = str(EVERY)
    worker.env[LEDGER_ENV] = str(ledger)
    worker.env[ORIGINAL_DELETE_FAILS_ENV] = str(ORIGINAL_DELETE_FAILS)
    worker.start()

    names = list(uploads)
    photos = [
        Photo.objects.create(image=ContentFile(uploads[name], name)) for name in names[:PHOTOS]
    ]
    uploaded = {photo.pk: sha256(uploads[name]) for photo, name in zip(photos, names, strict=False)}
    wait_until(
        never_failed(lambda: all_ready(PHOTOS)), "every rendition despite failing saves", PATIENCE
    )

    # Replace an image: its old original and renditions are deleted through the storage.
    replaced = photos[0]
    old_original = original(replaced)
    replaced.image = ContentFile(uploads[names[PHOTOS]], names[PHOTOS])
    replaced.save()
    new_original = original(replaced)
    uploaded[replaced.pk] = sha256(uploads[names[PHOTOS]])
    wait_until(
        never_failed(
            lambda: (
                all_ready(PHOTOS)
                and not Tombstone.objects.exists()
                and not (stage.media_root / old_original).exists()
            )
        ),
        "the replaced image's files to be deleted despite failing deletes",
        PATIENCE,
    )

    # The originals: the replaced one deleted, after its deletes failed; every other intact.
    for photo in photos:
        assert sha256((stage.media_root / original(photo)).read_bytes()) == uploaded[photo.pk]
    made = calls(ledger)
    deleted_originals = {
        name for _, action, _, name in made if action == "delete" and not rendition(name)
    }
    # Never the new one (a name of its own), never another photo's.
    assert new_original != old_original
    assert deleted_originals == {old_original}
    old_deletes = [
        outcome for _, action, outcome, name in made if action == "delete" and name == old_original
    ]
    assert old_deletes[:ORIGINAL_DELETE_FAILS] == ["failed"] * ORIGINAL_DELETE_FAILS
    assert "ok" in old_deletes

    # Every failed call ended its run, which was retried (same task id) after its backoff.
    failures = {number for number, _, outcome, _ in made if outcome == "failed"}
    assert failures, "no call failed: the test injected nothing"
    # A retry may still be waiting for its countdown, its work done meanwhile by another run.
    wait_until(
        never_failed(lambda: not retry_pending(worker.all_logs())), "the retries due", PATIENCE
    )
    runs = task_runs(worker.all_logs())
    retried: set[int] = set()
    countdowns = []
    for task_id, sequence in runs.items():
        *retries, last = sequence
        assert last.countdown is None and last.text.startswith("succeeded"), (task_id, last)
        for attempt, (run, following) in enumerate(zip(retries, sequence[1:], strict=True)):
            assert run.countdown is not None, (task_id, run)
            cap = RETRY_OPTIONS["retry_backoff"] * 2**attempt
            assert run.countdown <= min(cap, RETRY_OPTIONS["retry_backoff_max"]), (task_id, run)
            # The next run ended no earlier than its countdown allowed it to start.
            assert (following.at - run.at).total_seconds() >= run.countdown - 1, (task_id, run)
            retried.update(int(number) for number in INJECTED.findall(run.text))
            countdowns.append(run.countdown)
    assert retried == failures
    assert sum(countdowns) > 0  # backed off, rather than retried at once every time

    reports = settle(stage, PHOTOS)
    first = reports[0]
    assert (first["missing"], first["orphans"], first["broken"], first["enqueued"]) == (0, 0, 0, 0)
    assert len(reports) == 1
    assert not Source.objects.exclude(state=State.READY, error="").exists()
    assert damaged_renditions(stage.media_root) == []
    originals = {original(photo) for photo in photos}
    assert stray_files(stage.media_root, originals) == set()
    saves = sum(action == "save" for _, action, _, _ in made)
    record_fault(
        f"storage save/delete fails (every {EVERY}th)",
        injected=len(failures),
        landed=len(retried),
        lost=PHOTOS * SPECS_PER_PHOTO - Rendition.objects.filter(state=State.READY).count(),
        leaked=len(stray_files(stage.media_root, originals)),
        note=f"{saves} saves, {len(made) - saves} deletes; {len(countdowns)} retries, "
        f"longest backoff {max(countdowns)} s; 0 sources failed",
    )
