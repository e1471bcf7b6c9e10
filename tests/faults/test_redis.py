"""Redis killed and restarted mid-run: the worker reconnects, the outbox's relay heals."""

from __future__ import annotations

import logging
import time

import pytest
from django.core.files.base import ContentFile

from rendition_worker import tasks
from rendition_worker.models import Intent, Rendition, Source, State
from tests.faults.conftest import (
    SPECS_PER_PHOTO,
    Stage,
    all_ready,
    claims_lapsed,
    damaged_renditions,
    original,
    photo_bytes,
    record_fault,
    stray_files,
    wait_until,
)
from tests.live_worker import flush_publisher
from tests.testapp.models import Photo

# Saved at once: the worker holds two (one per pool process), at least three wait queued.
PHOTOS = 8


def test_redis_restart_mid_run_is_healed_by_the_relay(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    stage.configure({"RELAY_AFTER": 1})
    # Made before the saves: making one takes about as long as the worker takes to render
    # it, and saved one by one as they were made, no message ever waited in the queue.
    images = [ContentFile(photo_bytes(seed), f"r{seed}.jpg") for seed in range(PHOTOS + 2)]
    worker = stage.worker()
    photos = [Photo.objects.create(image=image) for image in images[:PHOTOS]]
    wait_until(
        lambda: Source.objects.filter(state=State.READY).exists() and stage.queued() >= 3,
        "the worker to be busy with messages still queued",
    )
    queued = stage.queued()

    stage.redis.kill()  # no persistence: the queued messages die with it
    # Saved while Redis is down: the save succeeds, the failed publish is only logged.
    with caplog.at_level(logging.WARNING, logger="rendition_worker.services.outbox"):
        photos += [Photo.objects.create(image=image) for image in images[PHOTOS:]]
        flush_publisher()
    assert [r for r in caplog.records if "cannot publish" in r.getMessage()]
    stage.redis.start()

    wait_until(claims_lapsed, "the worker to finish what it had started")
    unfinished = len(photos) - Source.objects.filter(state=State.READY).count()
    # Lost with Redis (one of them may have reached the worker just before), or never sent.
    assert unfinished >= 3

    # What beat sends every RELAY_AFTER seconds, to the worker that lived through it: the
    # intents of the lost messages and of the failed publishes are still in the database.
    assert Intent.objects.count() >= unfinished
    time.sleep(1.1)
    tasks.relay.apply_async(queue=stage.queue)
    wait_until(lambda: all_ready(len(photos)), "the relayed renditions")
    wait_until(lambda: not Intent.objects.exists(), "every intent done")

    assert worker.alive() and worker.starts == 1  # the same process reconnected
    final = stage.reconcile()
    assert (final["missing"], final["orphans"], final["broken"], final["enqueued"]) == (0, 0, 0, 0)
    assert damaged_renditions(stage.media_root) == []
    originals = {original(photo) for photo in photos}
    assert stray_files(stage.media_root, originals) == set()
    lost = len(photos) * SPECS_PER_PHOTO - Rendition.objects.filter(state=State.READY).count()
    record_fault(
        "Redis killed and restarted mid-run",
        injected=1,
        landed=1,
        lost=lost,
        leaked=len(stray_files(stage.media_root, originals)),
        note=f"{queued} queued messages lost, 2 publishes failed; "
        f"{unfinished} sources healed by the outbox's relay",
    )
