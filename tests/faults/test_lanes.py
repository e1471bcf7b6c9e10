"""Lanes, backpressure and the outbox with real worker processes on a Redis of our own.

- A worker on both lanes takes a fresh upload before a bulk backlog queued ahead of it.
- The reconciliation chain waits while BULK_MAX_QUEUED bulk tasks wait, then resumes.
- With the broker stopped, or hanging (SIGSTOP: connections accepted, never answered),
  saves return at once and every change is rendered or retired once it is back.
- A publish the broker lost is published again by the relay.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command

from rendition_worker import tasks
from rendition_worker.cache import lookup_cache
from rendition_worker.models import Intent, Source
from rendition_worker.registry import field_for
from tests.faults.conftest import (
    Stage,
    all_ready,
    original,
    photo_bytes,
    record_fault,
    relay_until,
    stray_files,
    wait_until,
)
from tests.live_worker import flush_publisher
from tests.testapp.models import Photo

# A save does no broker I/O; what it may cost while the broker hangs is far below what
# kombu's publish retries used to cost (minutes), and this bound tells the two apart on any
# machine. The figures themselves come from benchmarks/save_overhead.py.
SAVE_SECONDS = 1.0
SMALL = (600, 400)


def _bulk_photos(stage: Stage, count: int, seed: int = 100) -> list[Photo]:
    """Rows whose files were stored without signals (as a migration or an import makes them)."""
    storage = Photo._meta.get_field("image").storage
    rows = [
        Photo(
            image=storage.save(
                f"photos/bulk{seed + n}.jpg", ContentFile(photo_bytes(seed + n, SMALL))
            )
        )
        for n in range(count)
    ]
    return Photo.objects.bulk_create(rows)


def test_a_fresh_upload_goes_before_a_bulk_backlog_queued_ahead_of_it(stage: Stage) -> None:
    entry = field_for("testapp.photo", "image")
    assert entry is not None
    backlog = _bulk_photos(stage, 12)
    for photo in backlog:
        tasks.enqueue_backfill(entry, str(photo.pk), original(photo), False)
    fresh = Photo.objects.create(image=ContentFile(photo_bytes(1, SMALL), "fresh.jpg"))
    flush_publisher()
    client = stage.redis.client(2)
    assert (client.llen(stage.queue), client.llen(stage.bulk_queue)) == (1, 12)

    # One process: every task it takes is a choice between the lanes.
    stage.worker(concurrency=1)
    wait_until(lambda: all_ready(13), "the backlog and the fresh upload")
    order = list(Source.objects.order_by("started_at").values_list("object_id", flat=True))
    assert order[0] == str(fresh.pk), order  # first, although queued last
    assert set(order[1:]) == {str(photo.pk) for photo in backlog}  # and the backlog went on
    assert not Intent.objects.exists()


def test_reconciliation_waits_while_the_bulk_lane_is_full_then_resumes(stage: Stage) -> None:
    # Both workers see the chain's lock: one cache, as every process of a site shares.
    stage.configure({"BULK_MAX_QUEUED": 3}, worker={"CACHES": stage.settings.CACHES})
    entry = field_for("testapp.photo", "image")
    assert entry is not None
    photos = _bulk_photos(stage, 10)
    for photo in photos[:3]:
        tasks.enqueue_backfill(entry, str(photo.pk), original(photo), False)
    client = stage.redis.client(2)
    lookup_cache().delete(tasks.RECONCILE_LOCK)  # a chain of an earlier test, if any
    # A worker on the interactive lane only: the reconciliation step runs there, the bulk
    # lane stays as it is, so what the step does to it can be seen.
    stage.worker(queues=[stage.queue], concurrency=1)
    tasks.reconcile.apply_async(queue=stage.queue)
    wait_until(lambda: client.llen(stage.bulk_queue) == 4, "the chain to reschedule itself")
    time.sleep(1)  # nothing else arrives: it enqueued no generation into a full lane
    assert client.llen(stage.bulk_queue) == 4
    assert not Source.objects.exists()

    # Workers for the bulk lane: the three drain, the chain finds room and enqueues the rest.
    longest = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            longest[0] = max(longest[0], int(client.llen(stage.bulk_queue)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stage.worker()
        wait_until(lambda: all_ready(10), "every photo, backfilled", timeout=120)
    finally:
        sampling.set()
        sampler.join()
    # Never more than BULK_MAX_QUEUED waiting plus one step's batch (here: the 7 others).
    assert longest[0] <= 3 + 1 + 7, longest
    final = stage.reconcile()
    assert (final["missing"], final["enqueued"]) == (0, 0)


@pytest.mark.parametrize("fault", ["stopped", "hanging"])
def test_saves_during_a_broker_fault_return_at_once_and_nothing_is_lost(
    stage: Stage, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    stage.configure({"RELAY_AFTER": 1})
    worker = stage.worker()
    before = Photo.objects.create(image=ContentFile(photo_bytes(1, SMALL), "before.jpg"))
    wait_until(lambda: all_ready(1), "the photo saved before the fault")
    kept = Photo.objects.create(image=ContentFile(photo_bytes(2, SMALL), "kept.jpg"))
    wait_until(lambda: all_ready(2), "the second photo")
    wait_until(lambda: not Intent.objects.exists(), "the worker to finish both intents")
    old_original = original(before)

    stage.redis.kill() if fault == "stopped" else stage.redis.hang()
    durations = []
    try:
        with caplog.at_level(logging.WARNING, logger="rendition_worker.services.outbox"):
            photos = []
            for seed in range(3, 6):
                started = time.perf_counter()
                photos.append(
                    Photo.objects.create(
                        image=ContentFile(photo_bytes(seed, SMALL), f"d{seed}.jpg")
                    )
                )
                durations.append(time.perf_counter() - started)
            started = time.perf_counter()
            before.image = ContentFile(photo_bytes(9, SMALL), "replaced.jpg")
            before.save()  # a replacement: its old renditions and original must go
            kept.delete()  # a deletion: its renditions and original must go
            durations.append(time.perf_counter() - started)
            assert max(durations) < SAVE_SECONDS, durations
            # The background publisher meets the fault (fast when refused; within its
            # timeouts when hanging) and leaves the work to the relay.
            flush_publisher(timeout=60)
        assert any("cannot publish" in record.getMessage() for record in caplog.records)
        # 3 uploads, 1 replacement, 1 deletion of a row with 2 registered fields.
        assert Intent.objects.count() == 6
    finally:
        if fault == "stopped":
            stage.redis.start()
        else:
            stage.redis.resume()

    time.sleep(1.1)  # past RELAY_AFTER
    # What beat sends every RELAY_AFTER seconds: one relay has done it every time here, and
    # once on CI nothing was done 120 s after a single one (with no worker log kept to say
    # why); beat would have sent a hundred more.
    relays = relay_until(stage, lambda: not Intent.objects.exists(), "the relayed work", 120)
    wait_until(lambda: all_ready(4), "every change rendered", timeout=120)
    assert worker.alive()
    photos.append(before)
    originals = {original(photo) for photo in photos}
    wait_until(
        lambda: not stray_files(stage.media_root, originals),
        "the replaced and deleted files to be deleted",
    )
    assert not (stage.media_root / old_original).exists()
    assert {s.name for s in Source.objects.all()} == originals
    record_fault(
        f"broker {fault} during saves",
        injected=6,
        landed=6,
        lost=0,
        leaked=len(stray_files(stage.media_root, originals)),
        note=f"slowest save {max(durations) * 1000:.0f} ms; 6 intents relayed "
        f"({relays} relay tasks sent until all were done)",
    )


def test_a_publish_the_broker_lost_is_published_again_by_the_relay(stage: Stage) -> None:
    stage.configure({"RELAY_AFTER": 1})
    photo = Photo.objects.create(image=ContentFile(photo_bytes(1, SMALL), "lost.jpg"))
    flush_publisher()
    client = stage.redis.client(2)
    assert client.llen(stage.queue) == 1
    client.delete(stage.queue)  # lost, as with a broker restarted without persistence
    worker = stage.worker()
    time.sleep(1.1)
    assert not Source.objects.exists()  # nothing arrived
    tasks.relay.apply_async(queue=stage.queue)
    wait_until(lambda: all_ready(1), "the relayed generation")
    assert not Intent.objects.exists()
    # A duplicate of a finished intent (the relay raced the worker) does nothing.
    summary: dict[str, Any] = tasks.generate.run(
        "testapp.photo", str(photo.pk), "image", original(photo), intent=10**9
    )
    assert summary == {"status": "duplicate"}
    assert worker.alive()


def test_renditions_generate_waits_while_the_bulk_lane_is_full(stage: Stage) -> None:
    stage.configure({"BULK_MAX_QUEUED": 3})
    photos = _bulk_photos(stage, 9)
    client = stage.redis.client(2)
    out, err = io.StringIO(), io.StringIO()
    longest = [0]
    app = stage.app
    assert app is not None

    def generate() -> None:
        app.set_current()  # Celery's current app is per thread; a command has the site's
        call_command("renditions", "generate", stdout=out, stderr=err)

    command = threading.Thread(target=generate)
    command.start()
    # No worker yet: it enqueues up to the limit (checked every BULK_MAX_QUEUED enqueues
    # at most) and then waits, saying so.
    wait_until(lambda: "waiting for the workers" in err.getvalue(), "the command to wait")
    assert command.is_alive()
    assert 3 <= client.llen(stage.bulk_queue) <= 6
    stage.worker()
    while command.is_alive():
        longest[0] = max(longest[0], int(client.llen(stage.bulk_queue)))
        command.join(0.02)
    assert out.getvalue().strip() == f"enqueued 9 sources on the bulk lane {stage.bulk_queue!r}"
    assert "tasks wait on the bulk lane" in err.getvalue()
    assert longest[0] <= 6
    wait_until(lambda: all_ready(len(photos)), "every photo generated")
