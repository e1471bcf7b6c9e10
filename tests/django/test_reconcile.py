"""Reconciliation scenarios: real storage, real database, real worker where it matters."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from rendition_worker import beat_schedule, registry
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.services.reconcile import REPORT_KEYS
from tests.live_worker import (
    WorkerTracker,
    jpeg_bytes,
    media_files,
    upload,
    wait_for,
    wait_idle,
)
from tests.testapp.models import Photo, Poster

HERO_AND_THUMB = 7


def reconcile(*flags: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("renditions", "reconcile", "--json", *flags, stdout=out)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def all_ready(count: int) -> bool:
    return Rendition.objects.filter(state=State.READY).count() == count and not (
        Source.objects.exclude(state=State.READY).exists()
    )


def snapshot(root: str) -> tuple[dict[str, str], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    files = {
        name: hashlib.sha256((Path(root) / name).read_bytes()).hexdigest()
        for name in media_files(root)
    }
    renditions = sorted(Rendition.objects.values_list("pk", "spec", "name", "state", "source_name"))
    sources = sorted(Source.objects.values_list("pk", "name", "state", "digest", "error"))
    return files, renditions, sources


def zero_work(report: dict[str, Any]) -> bool:
    keys = ("missing", "obsolete", "orphans", "broken", "enqueued", "deleted_rows", "deleted_files")
    return all(report[key] == 0 for key in keys)


def test_json_report_has_exactly_the_documented_keys(worker: WorkerTracker) -> None:
    report = reconcile("--dry-run")
    documented = (
        "sources required present missing obsolete orphans broken failed enqueued generated "
        "deleted_rows deleted_files dry_run elapsed_s"
    )
    assert list(report) == list(REPORT_KEYS) == documented.split()
    assert report["dry_run"] is True


def test_changed_widths_and_formats_are_reconciled(worker: WorkerTracker, settings: Any) -> None:
    photos = [
        Photo.objects.create(image=upload(jpeg_bytes(color=(i, 1, 1)), f"w{i}.jpg"))
        for i in range(3)
    ]
    wait_for(lambda: all_ready(3 * HERO_AND_THUMB), what="the first renditions")
    wait_idle(worker)
    old_files = media_files(settings.MEDIA_ROOT, "renditions/")
    sets = {
        "hero": {"widths": [200], "formats": ["avif", "jpeg"]},  # 160/320 and webp dropped
        "thumb": {"specs": ["fill-64x64|format-webp"]},
    }
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "SETS": sets}

    first = reconcile()
    assert first["sources"] == 3 and first["required"] == 9
    assert first["missing"] == 6  # 200 px in two formats, for each photo
    assert first["obsolete"] == 18  # six hero renditions of each photo
    assert first["present"] == 3  # the thumbs
    assert first["enqueued"] == 3 and first["deleted_rows"] == 18
    wait_for(lambda: all_ready(9), what="the new widths")
    wait_idle(worker)
    second = reconcile()
    assert zero_work(second) and second["present"] == 9, second
    files = media_files(settings.MEDIA_ROOT, "renditions/")
    assert files == set(Rendition.objects.values_list("name", flat=True))
    assert len(files & old_files) == 3  # only the thumbs survive
    assert all(photo.image.name in media_files(settings.MEDIA_ROOT) for photo in photos)


def test_bulk_create_and_queryset_update_are_healed(worker: WorkerTracker, settings: Any) -> None:
    storage = Photo._meta.get_field("image").storage
    names = [storage.save(f"photos/bulk{i}.jpg", upload(jpeg_bytes())) for i in range(2)]
    Photo.objects.bulk_create([Photo(image=name) for name in names])
    changed = Photo.objects.create(image=upload(jpeg_bytes(), "before.jpg"))
    wait_for(lambda: all_ready(HERO_AND_THUMB), what="the one signalled photo")
    replacement = storage.save("photos/after.jpg", upload(jpeg_bytes(color=(0, 90, 0))))
    Photo.objects.filter(pk=changed.pk).update(image=replacement)

    report = reconcile()
    assert report["missing"] == 3 * HERO_AND_THUMB
    assert report["obsolete"] == HERO_AND_THUMB  # made from the file update() replaced
    wait_for(lambda: all_ready(3 * HERO_AND_THUMB), what="the healed renditions")
    wait_idle(worker)
    assert zero_work(reconcile())
    assert set(Rendition.objects.values_list("source_name", flat=True)) == {*names, replacement}


def test_files_deleted_by_hand_are_broken_and_rebuilt(worker: WorkerTracker, settings: Any) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    wait_for(lambda: all_ready(HERO_AND_THUMB), what="renditions")
    wait_idle(worker)
    lost = [
        Path(settings.MEDIA_ROOT) / name
        for name in Rendition.objects.values_list("name", flat=True)[:2]
    ]
    for path in lost:
        path.unlink()

    report = reconcile()
    assert report["broken"] == 2 and report["present"] == HERO_AND_THUMB - 2
    assert report["enqueued"] == 1
    wait_for(lambda: all(path.exists() for path in lost), what="the lost files")
    wait_idle(worker)
    assert zero_work(reconcile())
    assert photo.image.name in media_files(settings.MEDIA_ROOT)


def test_orphans_older_than_the_grace_go_young_and_foreign_stay(
    worker: WorkerTracker, settings: Any
) -> None:
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "ORPHAN_GRACE": 600}
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    wait_for(lambda: all_ready(HERO_AND_THUMB), what="renditions")
    wait_idle(worker)
    ours = Rendition.objects.values_list("name", flat=True).first()
    assert ours is not None
    root = Path(settings.MEDIA_ROOT)
    key = "ab" + "c" * 14
    old_orphan = f"renditions/ab/{key}/stray.width-640.format-avif.1a2b3c4d.avif"
    young_orphan = f"renditions/ab/{key}/stray.width-320.format-avif.1a2b3c4d.avif"
    foreign = [
        "renditions/ab/notes.txt",
        "renditions/readme.md",
        "photos/kept.jpg",
        f"renditions/ab/{key}/Stray.width-640.format-avif.1a2b3c4d.avif",
    ]
    hour_ago = time.time() - 3600
    for name in [old_orphan, young_orphan, *foreign]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
        if name != young_orphan:
            os.utime(root / name, (hour_ago, hour_ago))

    report = reconcile()
    assert report["orphans"] == 1 and report["deleted_files"] == 1
    assert not (root / old_orphan).exists()
    assert (root / young_orphan).exists()
    assert all((root / name).exists() for name in foreign)
    assert (root / ours).exists() and (root / photo.image.name).exists()


def test_dry_run_changes_nothing(worker: WorkerTracker, settings: Any) -> None:
    Photo.objects.create(image=upload(jpeg_bytes(), "a.jpg"))
    Photo.objects.create(image=upload(jpeg_bytes(), "b.jpg"))
    wait_for(lambda: all_ready(2 * HERO_AND_THUMB), what="renditions")
    wait_idle(worker)
    # Give it work of every kind: a lost file, a new width, an old orphan.
    thumb = Rendition.objects.filter(spec="fill-64x64|format-webp").values_list("name", flat=True)
    Path(settings.MEDIA_ROOT, thumb[0]).unlink()  # the thumb stays required: broken
    sets = {**settings.RENDITION_WORKER["SETS"], "hero": {"widths": [200], "formats": ["jpeg"]}}
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "SETS": sets, "ORPHAN_GRACE": 0}
    orphan = Path(settings.MEDIA_ROOT, "renditions/ab/ab" + "0" * 14 + "/x.original.1a2b3c4d.png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    before = snapshot(settings.MEDIA_ROOT)

    report = reconcile("--dry-run")
    assert report["missing"] and report["obsolete"] and report["orphans"] and report["broken"]
    assert report["enqueued"] == report["deleted_rows"] == report["deleted_files"] == 0
    time.sleep(0.3)
    wait_idle(worker)
    assert snapshot(settings.MEDIA_ROOT) == before


@pytest.mark.usefixtures("corpus")
def test_failed_source_is_skipped_and_counted(
    worker: WorkerTracker, settings: Any, corpus: Path
) -> None:
    broken = (corpus / "hostile" / "corrupt-header.jpg").read_bytes()
    photo = Photo.objects.create(image=upload(broken, "bad.jpg"))
    wait_for(lambda: Source.objects.filter(state=State.FAILED).exists(), what="the failure")
    wait_idle(worker)
    report = reconcile()
    assert report["failed"] == 1 and report["enqueued"] == 0 and report["missing"] == 0
    retried = reconcile("--retry-failed")
    assert retried["failed"] == 1 and retried["enqueued"] == 1
    wait_idle(worker)
    source = Source.objects.get(object_id=str(photo.pk))
    assert source.state == State.FAILED and "damaged" in source.error  # still bad, and said so


def test_two_models_and_several_fields_at_once(worker: WorkerTracker, settings: Any) -> None:
    storage = Photo._meta.get_field("image").storage
    main = storage.save("photos/main.jpg", upload(jpeg_bytes()))
    cover = storage.save("covers/cover.jpg", upload(jpeg_bytes()))
    poster = storage.save("posters/poster.jpg", upload(jpeg_bytes()))
    Photo.objects.bulk_create([Photo(image=main, cover=cover)])
    Poster.objects.bulk_create([Poster(image=poster)])

    report = reconcile("--sync")
    assert report["sources"] == 3
    assert report["required"] == HERO_AND_THUMB + 1 + 6
    assert report["generated"] == report["required"] and report["enqueued"] == 0
    assert zero_work(reconcile())
    assert Source.objects.filter(state=State.READY).count() == 3


def test_deleted_rows_and_unregistered_fields_leave_no_renditions(
    worker: WorkerTracker, settings: Any
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()), cover=upload(jpeg_bytes()))
    wait_for(lambda: all_ready(HERO_AND_THUMB + 1), what="renditions")
    wait_idle(worker)
    # The cover field is no longer registered; a raw delete sends no signal.
    fields = {"testapp.Photo.image": ["hero", "thumb"], "testapp.Poster.image": ["hero"]}
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "FIELDS": fields}
    report = reconcile()
    assert report["obsolete"] == 1
    Photo.objects.filter(pk=photo.pk)._raw_delete("default")  # type: ignore[attr-defined]
    report = reconcile()
    assert report["obsolete"] == HERO_AND_THUMB and report["sources"] == 0
    assert not Source.objects.exists() and not Rendition.objects.exists()
    assert media_files(settings.MEDIA_ROOT, "renditions/") == set()


def test_beat_task_reconciles_through_the_worker(worker: WorkerTracker, settings: Any) -> None:
    from rendition_worker.tasks import reconcile as reconcile_task

    storage = Photo._meta.get_field("image").storage
    Photo.objects.bulk_create([Photo(image=storage.save("photos/beat.jpg", upload(jpeg_bytes())))])
    reconcile_task.apply_async(queue=settings.RENDITION_WORKER["QUEUE"])

    def phases() -> list[str]:
        return [
            result.get("phase")
            for name, result in worker.results
            if name == "rendition_worker.reconcile"
        ]

    # One step per task, each enqueueing the next: wait for the last one.
    wait_for(lambda: "tombstones" in phases(), what="the reconciliation chain to finish")
    wait_for(lambda: all_ready(HERO_AND_THUMB), what="the beat reconciliation")
    wait_idle(worker)
    steps = phases()
    assert steps[0] == "required" and steps[-1] == "tombstones"
    # One step per shard folder of the one storage the three fields share, and the last.
    assert steps.count("files") == 256 + 1


def test_beat_schedule_entries(settings: Any) -> None:
    schedule = beat_schedule()
    assert list(schedule) == ["rendition_worker.reconcile", "rendition_worker.relay"]
    reconcile, relay = schedule.values()
    # Reconciliation is bulk work; the relay republishes what a person waits for.
    assert reconcile["task"] == "rendition_worker.reconcile"
    assert reconcile["schedule"] == 3600.0
    assert reconcile["options"] == {"queue": settings.TEST_BULK_QUEUE, "expires": 3600}
    assert relay["task"] == "rendition_worker.relay"
    assert relay["schedule"] == 60.0
    assert relay["options"] == {"queue": settings.TEST_QUEUE, "expires": 60}


def test_status_generate_and_purge_commands(worker: WorkerTracker, settings: Any) -> None:
    storage = Photo._meta.get_field("image").storage
    Photo.objects.bulk_create([Photo(image=storage.save("photos/cmd.jpg", upload(jpeg_bytes())))])
    out = io.StringIO()
    call_command("renditions", "generate", "testapp.Photo.image", "--sync", stdout=out)
    assert out.getvalue().strip() == f"generated {HERO_AND_THUMB} renditions"
    out = io.StringIO()
    call_command("renditions", "status", "--json", stdout=out)
    status = json.loads(out.getvalue())
    assert status["sources"] == {"pending": 0, "ready": 1, "failed": 0}
    assert status["renditions"] == HERO_AND_THUMB
    out = io.StringIO()
    call_command("renditions", "purge", "--all", "--dry-run", stdout=out)
    assert (
        f"would delete {HERO_AND_THUMB} rendition rows and {HERO_AND_THUMB} files" in out.getvalue()
    )
    call_command("renditions", "purge", "--all", stdout=io.StringIO())
    assert not Rendition.objects.exists()
    assert media_files(settings.MEDIA_ROOT, "renditions/") == set()
    with pytest.raises(CommandError, match=r"not a registered field: testapp\.Photo\.nope"):
        call_command("renditions", "generate", "testapp.Photo.nope")
    assert registry.field_for("testapp.photo", "image") is not None
    assert not Tombstone.objects.filter(kind="original").exists()


def test_fields_sharing_a_storage_are_not_each_others_orphans(
    worker: WorkerTracker, settings: Any
) -> None:
    Photo.objects.create(image=upload(jpeg_bytes()), cover=upload(jpeg_bytes()))
    Poster.objects.create(image=upload(jpeg_bytes()))
    wait_for(lambda: all_ready(HERO_AND_THUMB + 1 + 6), what="renditions of three fields")
    wait_idle(worker)
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "ORPHAN_GRACE": 0}
    before = snapshot(settings.MEDIA_ROOT)
    report = reconcile()
    assert report["orphans"] == 0 and zero_work(report), report
    assert snapshot(settings.MEDIA_ROOT) == before


def test_files_waiting_for_delete_delay_are_not_swept_as_orphans(
    worker: WorkerTracker, settings: Any
) -> None:
    settings.RENDITION_WORKER = {
        **settings.RENDITION_WORKER,
        "DELETE_DELAY": 3600,
        "ORPHAN_GRACE": 0,
    }
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "v1.jpg"))
    wait_for(lambda: all_ready(HERO_AND_THUMB), what="renditions")
    stale = set(Rendition.objects.values_list("name", flat=True))
    photo.image = upload(jpeg_bytes(color=(1, 99, 1)), "v2.jpg")
    photo.save()
    wait_for(
        lambda: Tombstone.objects.filter(kind="rendition").count() == HERO_AND_THUMB,
        what="the stale renditions to be tombstoned",
    )
    wait_for(lambda: all_ready(HERO_AND_THUMB), what="the new renditions")
    wait_idle(worker)
    report = reconcile()
    assert report["orphans"] == 0, report
    assert stale <= media_files(settings.MEDIA_ROOT)  # kept for the CDN until they are due
