"""The worker's PostgreSQL sessions terminated mid-run: it reconnects, retries, loses nothing."""

from __future__ import annotations

import re
from functools import partial
from itertools import count, islice
from pathlib import Path

from django.core.files.base import ContentFile
from django.db.models import Count

from rendition_worker.models import Rendition, Source, State
from tests.faults.conftest import (
    SPECS_PER_PHOTO,
    Stage,
    WorkerProcess,
    all_ready,
    damaged_renditions,
    original,
    photo_bytes,
    record_fault,
    settle,
    storages,
    stray_files,
    terminate_sessions,
    wait_until,
)
from tests.faults.storages import GATE_ENV, LEDGER_ENV
from tests.testapp.models import Photo

TERMINATIONS = 3  # landed while rendering
HELD = 2  # landed while a run holds its claim between two queries
# What Celery logs when generate retries after a TransientError caused by the database.
DATABASE_RETRY = re.compile(r"retry: Retry in \d+s: TransientError\(.*database error.*")
COUNTDOWN = re.compile(r"retry: Retry in (\d+)s")


def rendering_now() -> dict[int, str]:
    """Sources being rendered right now (claimed, some renditions recorded): pk -> claim."""
    return dict(
        Source.objects.filter(state=State.PENDING)
        .exclude(claim="")
        .annotate(recorded=Count("renditions"))
        .filter(recorded__gt=0, recorded__lt=SPECS_PER_PHOTO)
        .values_list("pk", "claim")
    )


def moved_on(runs: dict[int, str]) -> bool:
    """Whether none of these runs (source pk -> claim) is still rendering."""
    return not set(runs.items()) & set(rendering_now().items())


def logged(ledger: Path, line: str) -> bool:
    """Whether the storage wrote `line` in its ledger."""
    return ledger.exists() and line in ledger.read_text().splitlines()


def database_retries(worker: WorkerProcess) -> list[str]:
    """Every retry the worker scheduled after a database error, as it logged it."""
    return DATABASE_RETRY.findall(worker.all_logs())


def retried(worker: WorkerProcess, name: str) -> bool:
    """Whether a run of source `name` was retried after a database error."""
    return any(f"rendering {name!r}" in line for line in database_retries(worker))


def countdowns(retries: list[str]) -> list[int]:
    """The countdowns of these retries, in seconds."""
    return sorted(int(seconds) for line in retries for seconds in COUNTDOWN.findall(line))


def test_terminated_database_sessions_are_retried_and_lose_nothing(stage: Stage) -> None:
    gate = stage.directory / "gate"
    gate.mkdir()
    ledger = stage.directory / "ledger.txt"
    stage.configure(
        rendition_worker={"ORPHAN_GRACE": 0},
        worker={"STORAGES": storages("tests.faults.storages.GatedStorage")},
    )
    worker = stage.worker(start=False)
    worker.env[GATE_ENV] = str(gate)
    worker.env[LEDGER_ENV] = str(ledger)
    worker.start()
    seeds = count()
    photos: list[Photo] = []

    def add_photos(how_many: int, *, hold: bool = False) -> list[str]:
        # Made first, then saved together: making one takes about as long as rendering it.
        uploads = {f"d{seed}.jpg": photo_bytes(seed) for seed in islice(seeds, how_many)}
        if hold:
            for upload in uploads:
                (gate / f"{upload}.hold").touch()
        added = [Photo.objects.create(image=ContentFile(data, n)) for n, data in uploads.items()]
        photos.extend(added)
        return [original(photo) for photo in added]

    def kept_busy() -> dict[int, str]:
        # When nothing is rendered or queued, more photos: a target for the next termination.
        busy = rendering_now()
        if not busy and stage.queued() == 0:
            add_photos(3)
        return busy

    # Terminated while rendering: the next query is in the transaction that records a
    # rendition, whose failed rollback makes Django drop the connection.
    add_photos(6)
    terminated: list[int] = []
    while len(database_retries(worker)) < TERMINATIONS:
        assert len(terminated) < 4 * TERMINATIONS, (
            f"{len(terminated)} terminations, {len(database_retries(worker))} retries"
        )
        busy = wait_until(kept_busy, "a source with some of its renditions written")
        terminated.append(terminate_sessions(stage.database))
        # Until the interrupted runs have failed (and given their claims back) or finished.
        wait_until(partial(moved_on, busy), "the interrupted runs to fail or finish")

    # Terminated while a run holds its claim between two queries outside any transaction
    # (opening the source): the next query fails in autocommit mode, where Django keeps the
    # broken connection, and the run must still give its claim back for its retry.
    for _ in range(HELD):
        [name] = add_photos(1, hold=True)
        wait_until(partial(logged, ledger, f"held {name}"), f"the worker to hold {name}")
        terminated.append(terminate_sessions(stage.database))
        (gate / f"{Path(name).name}.hold").unlink()
        # The held run always has a session (it made its claim through it): it must fail.
        wait_until(
            partial(retried, worker, name),
            f"the run of {name} to fail on its terminated session and be retried",
        )

    # The worker alone, with no reconciliation: every run that failed was retried.
    wait_until(lambda: all_ready(len(photos)), "the retried runs to finish every rendition")
    assert worker.alive() and worker.starts == 1
    retries = database_retries(worker)
    reports = settle(stage, len(photos))

    # The beat finds nothing to heal: no claim was stranded, no file left behind.
    first = reports[0]
    assert (first["missing"], first["orphans"], first["broken"], first["enqueued"]) == (0, 0, 0, 0)
    assert len(reports) == 1
    assert damaged_renditions(stage.media_root) == []
    originals = {original(photo) for photo in photos}
    assert stray_files(stage.media_root, originals) == set()
    assert not Source.objects.exclude(state=State.READY).exists()
    record_fault(
        "PostgreSQL sessions terminated mid-run",
        injected=len(terminated),
        landed=len(retries),
        lost=len(photos) * SPECS_PER_PHOTO - Rendition.objects.filter(state=State.READY).count(),
        leaked=len(stray_files(stage.media_root, originals)),
        note=f"{sum(terminated)} sessions terminated, {len(retries)} runs retried "
        f"(countdowns {countdowns(retries)} s), {len(photos)} sources",
    )
