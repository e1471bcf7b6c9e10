"""kill -9 of worker processes mid-generation: nothing lost, half-written or leaked."""

from __future__ import annotations

from functools import partial
from itertools import count, islice

from django.core.files.base import ContentFile
from django.db.models import Count

from rendition_worker.models import Rendition, Source, State
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
from tests.faults.storages import COUNTER_ENV, LEDGER_ENV
from tests.testapp.models import Photo

KILLS = 5


def mid_generation() -> list[int]:
    """Sources being rendered right now: claimed, some renditions recorded, not all."""
    return list(
        Source.objects.filter(state=State.PENDING)
        .exclude(claim="")
        .annotate(recorded=Count("renditions"))
        .filter(recorded__gt=0, recorded__lt=SPECS_PER_PHOTO)
        .values_list("pk", flat=True)
    )


def interrupted(sources: list[int]) -> list[int]:
    """Those of `sources` that a kill stopped: still claimed by nobody alive, not finished."""
    return list(
        Source.objects.filter(pk__in=sources, state=State.PENDING)
        .exclude(claim="")
        .values_list("pk", flat=True)
    )


def add_photos(photos: list[Photo], how_many: int, seeds: count[int]) -> None:
    # Made first, then saved together: making one takes about as long as rendering it.
    images = [ContentFile(photo_bytes(seed), f"k{seed}.jpg") for seed in islice(seeds, how_many)]
    photos.extend(Photo.objects.create(image=image) for image in images)


def kept_busy(stage: Stage, photos: list[Photo], seeds: count[int]) -> list[int]:
    """`mid_generation()`; when nothing is rendered or queued, more photos for the worker."""
    busy = mid_generation()
    if not busy and stage.queued() == 0:
        add_photos(photos, 3, seeds)
    return busy


def test_kill_9_mid_generation_five_times_loses_nothing(stage: Stage) -> None:
    # Orphans are counted at once (no grace), so that leaked files cannot hide behind it.
    stage.configure(rendition_worker={"ORPHAN_GRACE": 0})
    worker = stage.worker()
    photos: list[Photo] = []
    seeds = count()
    add_photos(photos, 6, seeds)
    landed: list[tuple[str, list[int]]] = []
    attempts = 0
    while len(landed) < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"only {len(landed)} of {attempts} kills landed"
        if stage.queued() < 2:  # keep work coming so that every kill has a target
            add_photos(photos, 3, seeds)
        busy = wait_until(
            partial(kept_busy, stage, photos, seeds), "a source with some of its renditions written"
        )
        # Alternate: the pool processes (the main process starts new ones and gives their
        # messages back to the queue), and the whole worker at once (restarted here).
        whole = len(landed) % 2 == 1
        if whole:
            worker.kill()
        else:
            worker.kill_children()
        stopped = interrupted(busy)
        if stopped:
            landed.append(("worker" if whole else "pool", stopped))
        if whole:
            worker.start()
        else:
            wait_until(lambda: len(worker.children()) == 2, "the pool to be replaced")

    reports = settle(stage, len(photos))

    final = reports[-1]
    assert (final["missing"], final["orphans"], final["broken"], final["obsolete"]) == (0, 0, 0, 0)
    assert all_ready(len(photos))
    assert damaged_renditions(stage.media_root) == []
    originals = {original(photo) for photo in photos}
    assert stray_files(stage.media_root, originals) == set()
    # The spool of a source is in memory below 64 MB and an unnamed file above: a kill
    # leaves no file in the worker's TMPDIR (only the empty folders of billiard and of
    # tests/settings.py, whose atexit cleanup a kill skips).
    assert [path for path in stage.worker_tmp.rglob("*") if not path.is_dir()] == []
    record_fault(
        "kill -9 mid-generation",
        injected=attempts,
        landed=len(landed),
        lost=len(photos) * SPECS_PER_PHOTO - Rendition.objects.filter(state=State.READY).count(),
        leaked=len(stray_files(stage.media_root, originals)),
        note=f"{len(landed)} of {attempts} landed mid-generation "
        f"({sum(len(s) for _, s in landed)} sources stopped); "
        f"first reconcile: {reports[0]['missing']} missing, {reports[0]['orphans']} orphans",
    )


def test_kill_9_mid_write_leaves_no_trusted_half_file(stage: Stage) -> None:
    # A storage that writes in place, stalling halfway through its first rendition: a kill
    # then leaves half a file at the final name, as FileSystemStorage did before.
    ledger = stage.directory / "ledger.txt"
    stage.configure(worker={"STORAGES": storages("tests.faults.storages.SlowWriteStorage")})
    worker = stage.worker(start=False)
    worker.env[COUNTER_ENV] = str(stage.directory / "calls.txt")
    worker.env[LEDGER_ENV] = str(ledger)
    worker.start()
    photo = Photo.objects.create(image=ContentFile(photo_bytes(7), "half.jpg"))
    wait_until(lambda: ledger.exists() and "stalled" in ledger.read_text(), "the stalled write")
    _, name, size = ledger.read_text().split()
    half = stage.media_root / name
    assert 0 < half.stat().st_size < int(size)  # what the kill leaves behind

    worker.kill_children()

    reports = settle(stage, 1)
    assert reports[-1]["missing"] == reports[-1]["broken"] == 0
    assert half.stat().st_size == int(size)
    assert Rendition.objects.get(name=name).size == int(size)
    assert damaged_renditions(stage.media_root) == []
    assert stray_files(stage.media_root, {original(photo)}) == set()
    record_fault("kill -9 mid-write (in-place storage)", injected=1, landed=1, lost=0, leaked=0)
