"""Scenario tests of DESIGN.md's Behaviour section, through the ORM, with a real worker.

Every test saves, replaces, clears or deletes images as a site would, lets the real Celery
worker (real Redis, real database) do its work, and asserts on the files in MEDIA_ROOT and
the rows in the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from django.db import transaction

from rendition_worker import tasks
from rendition_worker.models import Intent, Rendition, Source, State, Tombstone
from rendition_worker.services.generation import source_generate
from tests.live_worker import (
    WorkerTracker,
    flush_publisher,
    jpeg_bytes,
    media_files,
    upload,
    wait_for,
    wait_idle,
)
from tests.testapp.models import Album, Photo, Poster

HERO_AND_THUMB = 7  # hero: 2 widths x 3 formats, thumb: 1 spec
HERO = 6


class Published:
    """Messages the test process publishes to the broker (body and headers)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, sender: str | None = None, body: Any = None, **kwargs: Any) -> None:
        self.messages.append({"task": sender, "body": body, "headers": kwargs.get("headers")})

    def names(self) -> list[str | None]:
        return [message["task"] for message in self.messages]


@pytest.fixture
def published() -> Iterator[Published]:
    recorder = Published()
    signals.before_task_publish.connect(recorder, weak=False)
    yield recorder
    signals.before_task_publish.disconnect(recorder)


def source_of(instance: Any, field: str = "image") -> Source | None:
    return Source.objects.filter(object_id=str(instance.pk), field=field).first()


def settled(instance: Any, count: int, field: str = "image") -> list[Rendition]:
    """Wait until `instance`'s field is ready with `count` renditions of its current file."""
    name = getattr(instance, field).name

    def ready() -> list[Rendition] | None:
        source = source_of(instance, field)
        if source is None or source.name != name or source.state != State.READY:
            return None
        rows = list(Rendition.objects.filter(source=source, state=State.READY))
        return rows if len(rows) == count else None

    rows: list[Rendition] = wait_for(ready, what=f"{count} renditions of {name}")
    return rows


def rendition_files(root: str) -> set[str]:
    return media_files(root, "renditions/")


def test_create_generates_every_rendition(worker: WorkerTracker, settings: Any) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    assert {(row.spec, row.width, row.format) for row in rows} >= {
        ("width-160|format-avif", 160, "avif"),
        ("width-320|format-jpeg", 320, "jpeg"),
        ("fill-64x64|format-webp", 64, "webp"),
    }
    assert all(row.source_name == photo.image.name for row in rows)
    assert (Path(settings.MEDIA_ROOT) / photo.image.name).exists()


def test_fallback_is_ready_before_avif(worker: WorkerTracker) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    rows = sorted(settled(photo, HERO_AND_THUMB), key=lambda row: row.pk)
    order = [row.format for row in rows]
    assert max(order.index("jpeg"), len(order) - order[::-1].index("jpeg") - 1) < order.index(
        "avif"
    )


def test_task_arguments_are_json_primitives(worker: WorkerTracker, published: Published) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo, HERO_AND_THUMB)
    message = next(m for m in published.messages if m["task"] == "rendition_worker.generate")
    _, kwargs, _ = message["body"]
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["model"] == "testapp.photo"
    assert kwargs["object_id"] == str(photo.pk)
    assert kwargs["name"] == photo.image.name
    assert message["headers"]["kwargsrepr"] == repr(kwargs)  # what Flower shows


def test_task_returns_a_small_summary(worker: WorkerTracker) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    summaries = [result for name, result in worker.results if name == "rendition_worker.generate"]
    summary = summaries[-1]
    assert summary["status"] == "ready"
    assert summary["renditions"] == HERO_AND_THUMB
    assert summary["bytes"] > 0 and summary["ms"] >= 0
    assert len(json.dumps(summary)) < 300


def test_replace_deletes_old_renditions_and_original(worker: WorkerTracker, settings: Any) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes(color=(10, 20, 30)), "first.jpg"))
    old_rows = settled(photo, HERO_AND_THUMB)
    old_original = photo.image.name
    photo.image = upload(jpeg_bytes(color=(200, 20, 30)), "second.jpg")
    photo.save()
    new_rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    files = media_files(settings.MEDIA_ROOT)
    assert old_original not in files
    assert photo.image.name in files
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in new_rows}
    assert not {row.name for row in old_rows} & files
    assert not Rendition.objects.filter(source_name=old_original).exists()
    assert not Tombstone.objects.exists()


def test_clearing_the_field_deletes_renditions_and_original(
    worker: WorkerTracker, settings: Any
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo, HERO_AND_THUMB)
    original = photo.image.name
    photo.image = None
    photo.save()
    wait_for(lambda: source_of(photo) is None, what="the source to be forgotten")
    wait_idle(worker)
    assert rendition_files(settings.MEDIA_ROOT) == set()
    assert original not in media_files(settings.MEDIA_ROOT)
    assert not Rendition.objects.exists()


@pytest.mark.parametrize("how", ["instance", "queryset", "cascade"])
def test_deleting_rows_deletes_renditions_and_originals(
    worker: WorkerTracker, settings: Any, how: str
) -> None:
    album = Album.objects.create(title="holiday")
    photos = [
        Photo.objects.create(album=album, image=upload(jpeg_bytes(color=(i, 9, 9)), f"p{i}.jpg"))
        for i in range(3)
    ]
    for photo in photos:
        settled(photo, HERO_AND_THUMB)
    assert len(media_files(settings.MEDIA_ROOT, "photos/")) == 3
    if how == "instance":
        for photo in photos:
            photo.delete()
    elif how == "queryset":
        Photo.objects.filter(album=album).delete()
    else:
        album.delete()
    wait_for(lambda: not Source.objects.exists(), what="every source to be forgotten")
    wait_idle(worker)
    assert media_files(settings.MEDIA_ROOT) == set()
    assert not Rendition.objects.exists() and not Tombstone.objects.exists()


def test_rollback_enqueues_and_deletes_nothing(
    worker: WorkerTracker, settings: Any, published: Published
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "kept.jpg"))
    rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    before = media_files(settings.MEDIA_ROOT)
    published.messages.clear()

    with pytest.raises(RuntimeError), transaction.atomic():
        photo.image = upload(jpeg_bytes(color=(1, 2, 3)), "rolled-back.jpg")
        photo.save()
        Photo.objects.create(image=upload(jpeg_bytes(), "never.jpg"))
        Photo.objects.get(pk=photo.pk).delete()
        raise RuntimeError("the view failed")

    time.sleep(0.5)  # give a wrongly enqueued task time to show up
    wait_idle(worker)
    assert published.names() == []
    photo.refresh_from_db()
    assert photo.image.name in before
    assert before <= media_files(settings.MEDIA_ROOT)  # nothing deleted
    assert {row.name for row in Rendition.objects.all()} == {row.name for row in rows}
    assert source_of(photo) is not None and source_of(photo).state == State.READY  # type: ignore[union-attr]


def test_saving_with_the_image_unchanged_enqueues_nothing(
    worker: WorkerTracker, published: Published
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    published.messages.clear()
    photo.title = "renamed"
    photo.save()
    Photo.objects.get(pk=photo.pk).save()  # a fresh instance, loaded from the database
    photo.image = upload(jpeg_bytes(), "ignored.jpg")
    photo.save(update_fields=["title"])  # the image is not saved, so nothing changes
    assert published.names() == []


def test_raw_saves_are_left_to_reconciliation(worker: WorkerTracker, published: Published) -> None:
    photo = Photo(image="photos/from-a-fixture.jpg")
    photo.save_base(raw=True)
    assert published.names() == []


def test_shared_original_is_kept_while_referenced(worker: WorkerTracker, settings: Any) -> None:
    first = Photo.objects.create(image=upload(jpeg_bytes(), "shared.jpg"))
    settled(first, HERO_AND_THUMB)
    second = Photo.objects.create(image=first.image.name)
    settled(second, HERO_AND_THUMB)
    shared = first.image.name
    first.delete()
    wait_for(lambda: source_of(first) is None, what="the first source to be forgotten")
    wait_idle(worker)
    assert shared in media_files(settings.MEDIA_ROOT)
    second.delete()
    wait_for(lambda: source_of(second) is None, what="the second source to be forgotten")
    wait_idle(worker)
    assert media_files(settings.MEDIA_ROOT) == set()


def test_originals_are_kept_when_delete_originals_is_off(
    worker: WorkerTracker, settings: Any
) -> None:
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "DELETE_ORIGINALS": False}
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo, HERO_AND_THUMB)
    original = photo.image.name
    photo.delete()
    wait_for(lambda: source_of(photo) is None, what="the source to be forgotten")
    wait_idle(worker)
    assert media_files(settings.MEDIA_ROOT) == {original}


def test_delete_delay_keeps_stale_files_then_deletes_them(
    worker: WorkerTracker, settings: Any
) -> None:
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "DELETE_DELAY": 2}
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "v1.jpg"))
    old_rows = settled(photo, HERO_AND_THUMB)
    old_original = photo.image.name
    photo.image = upload(jpeg_bytes(color=(0, 0, 255)), "v2.jpg")
    photo.save()
    new_rows = settled(photo, HERO_AND_THUMB)
    replaced_at = time.monotonic()
    files = media_files(settings.MEDIA_ROOT)
    # Stale files are still there (a CDN-cached page may point at them), as durable rows.
    assert old_original in files and {row.name for row in old_rows} <= files
    tombstones = list(Tombstone.objects.values_list("kind", "name"))
    assert len(tombstones) == HERO_AND_THUMB + 1, tombstones
    wait_for(lambda: not Tombstone.objects.exists(), timeout=30, what="the tombstones to fall due")
    assert time.monotonic() - replaced_at > 1  # not before the delay
    wait_idle(worker)
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in new_rows}
    assert old_original not in media_files(settings.MEDIA_ROOT)


@pytest.mark.usefixtures("corpus")
def test_corrupt_upload_is_recorded_as_failed_and_not_retried(
    worker: WorkerTracker, settings: Any, corpus: Path
) -> None:
    data = (corpus / "hostile" / "truncated.jpg").read_bytes()
    photo = Photo.objects.create(image=upload(data, "broken.jpg"))

    def failed() -> Source | None:
        source = source_of(photo)
        return source if source is not None and source.state == State.FAILED else None

    source = wait_for(failed, what="the source to be recorded as failed")
    assert "damaged" in source.error
    wait_idle(worker)
    assert rendition_files(settings.MEDIA_ROOT) == set()
    assert (Path(settings.MEDIA_ROOT) / photo.image.name).read_bytes() == data  # untouched
    # Not retried until the file changes: another task for the same file does nothing.
    again = source_generate("testapp.photo", str(photo.pk), "image", photo.image.name)
    assert again["status"] == "failed-before"
    # The worker is alive and a good upload after the bad one renders.
    photo.image = upload(jpeg_bytes(), "fixed.jpg")
    photo.save()
    settled(photo, HERO_AND_THUMB)


def test_stale_task_after_a_replace_writes_nothing(worker: WorkerTracker, settings: Any) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "before.jpg"))
    settled(photo, HERO_AND_THUMB)
    old_name = photo.image.name
    photo.image = upload(jpeg_bytes(color=(50, 50, 50)), "after.jpg")
    photo.save()
    rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    # A task for the old file arriving late (a retry, a slow queue) finds it replaced.
    summary = source_generate("testapp.photo", str(photo.pk), "image", old_name)
    assert summary == {"status": "stale"}
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    deleted_pk = photo.pk
    photo.delete()
    assert source_generate("testapp.photo", str(deleted_pk), "image", "photos/after.jpg") == {
        "status": "gone"
    }


def test_duplicate_tasks_render_each_version_once(worker: WorkerTracker, settings: Any) -> None:
    from rendition_worker import registry, tasks

    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    entry = registry.field_for("testapp.photo", "image")
    assert entry is not None
    for _ in range(4):
        tasks.enqueue_generate(entry, str(photo.pk), photo.image.name)
    rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    statuses = [
        result["status"]
        for name, result in worker.results
        if name == "rendition_worker.generate" and isinstance(result, dict)
    ]
    generated = [status for status in statuses[-5:] if status == "ready"]
    assert len(generated) == 1, statuses
    assert set(statuses[-5:]) <= {"ready", "done", "claimed"}
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}


def test_uuid_primary_keys(worker: WorkerTracker, settings: Any) -> None:
    poster = Poster.objects.create(image=upload(jpeg_bytes(), "poster.jpg"))
    settled(poster, HERO)
    poster.image = upload(jpeg_bytes(color=(9, 200, 9)), "poster2.jpg")
    poster.save()
    rows = settled(poster, HERO)
    wait_idle(worker)
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    poster.delete()
    wait_for(lambda: not Source.objects.exists(), what="the poster's source to be forgotten")
    wait_idle(worker)
    assert media_files(settings.MEDIA_ROOT) == set()


def test_two_fields_of_one_row_are_independent(worker: WorkerTracker, settings: Any) -> None:
    photo = Photo.objects.create(
        image=upload(jpeg_bytes(), "main.jpg"), cover=upload(jpeg_bytes(), "cover.jpg")
    )
    settled(photo, HERO_AND_THUMB)
    settled(photo, 1, field="cover")
    photo.cover = None
    photo.save()
    wait_for(lambda: source_of(photo, "cover") is None, what="the cover to be forgotten")
    wait_idle(worker)
    assert source_of(photo, "image").state == State.READY  # type: ignore[union-attr]
    assert len(rendition_files(settings.MEDIA_ROOT)) == HERO_AND_THUMB


def test_regenerating_with_new_encoder_settings_replaces_the_files(
    worker: WorkerTracker, settings: Any
) -> None:
    from rendition_worker import registry, tasks

    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    old_rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    # The encoder settings are part of every name: a new codec means new files.
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "AVIF_CODEC": "aom"}
    entry = registry.field_for("testapp.photo", "image")
    assert entry is not None
    tasks.enqueue_generate(entry, str(photo.pk), photo.image.name, force=True)

    def regenerated() -> set[str] | None:
        names = set(Rendition.objects.values_list("name", flat=True))
        return names if not names & {row.name for row in old_rows} else None

    new_names = wait_for(regenerated, what="the renditions to be regenerated")
    wait_for(lambda: not Tombstone.objects.exists(), what="the old files to be deleted")
    wait_idle(worker)
    assert rendition_files(settings.MEDIA_ROOT) == new_names


def test_a_new_width_renders_that_width_only(worker: WorkerTracker, settings: Any) -> None:
    from rendition_worker import registry, tasks

    photo = Photo.objects.create(image=upload(jpeg_bytes((800, 600))))
    before = {row.spec: row.name for row in settled(photo, HERO_AND_THUMB)}
    wait_idle(worker)
    hero = {"widths": [160, 320, 480], "formats": ["avif", "webp", "jpeg"]}
    sets = {**settings.RENDITION_WORKER["SETS"], "hero": hero}
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "SETS": sets}
    entry = registry.field_for("testapp.photo", "image")
    assert entry is not None
    worker.results.clear()
    tasks.enqueue_generate(entry, str(photo.pk), photo.image.name, force=True)
    after = {row.spec: row.name for row in settled(photo, HERO_AND_THUMB + 3)}
    wait_idle(worker)
    [summary] = [result for name, result in worker.results if name == "rendition_worker.generate"]
    assert summary["renditions"] == 3
    assert {spec: after[spec] for spec in before} == before
    assert {spec for spec in after if spec not in before} == {
        f"width-480|format-{fmt}" for fmt in ("avif", "webp", "jpeg")
    }


def test_force_regenerates_a_rendition_file_deleted_by_hand(
    worker: WorkerTracker, settings: Any
) -> None:
    from rendition_worker import registry, tasks

    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    rows = settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    lost = Path(settings.MEDIA_ROOT) / rows[0].name
    lost.unlink()
    entry = registry.field_for("testapp.photo", "image")
    assert entry is not None
    worker.results.clear()
    tasks.enqueue_generate(entry, str(photo.pk), photo.image.name, force=True)
    wait_for(lost.exists, what="the lost file to be rendered again")
    wait_idle(worker)
    [summary] = [result for name, result in worker.results if name == "rendition_worker.generate"]
    assert summary["renditions"] == 1


def test_a_broker_outage_is_logged_never_breaks_the_save_and_the_relay_catches_up(
    worker: WorkerTracker, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.celery_app import app

    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "RELAY_AFTER": 1}
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "before-outage.jpg"))
    settled(photo, HERO_AND_THUMB)
    wait_idle(worker)
    # A real fault: the site's Celery app publishes to a port where no broker listens.
    working = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    _drop_publishing_connections(app)
    try:
        new_bytes = jpeg_bytes(color=(7, 7, 7))
        photo.image = upload(new_bytes, "during-outage.jpg")
        photo.save()  # must not raise
        flush_publisher()  # the background publish meets the outage
    finally:
        app.conf.broker_url = working
        _drop_publishing_connections(app)
    photo.refresh_from_db()
    assert photo.image.name.startswith("photos/during-outage")
    logged = [record for record in caplog.records if "cannot publish" in record.getMessage()]
    assert logged, [record.getMessage() for record in caplog.records]
    message = logged[0].getMessage()
    assert "testapp.photo" in message and "image" in message and "during-outage" in message
    # Durable meanwhile: the work and the replaced original's tombstone were written with
    # the save.
    [intent] = Intent.objects.all()
    assert (intent.model, intent.object_id, intent.name) == (
        "testapp.photo",
        str(photo.pk),
        photo.image.name,
    )
    assert intent.retired_original
    assert Tombstone.objects.filter(name__startswith="photos/before-outage").exists()
    # The broker is back: the beat's relay task publishes what waited past RELAY_AFTER.
    time.sleep(1.1)
    tasks.relay.apply_async(queue=settings.TEST_QUEUE)
    rows = settled(photo, HERO_AND_THUMB)
    assert {row.source_name for row in rows} == {photo.image.name}
    wait_idle(worker)
    assert not Intent.objects.exists()
    assert not Tombstone.objects.filter(name__startswith="photos/before-outage").exists()


def _drop_publishing_connections(app: Any) -> None:
    # Celery caches the connection pool and a producer pool bound to it: both must go for
    # the next publish to use the current broker_url. Not closed: kombu's global registry
    # hands the working broker's pools out again once broker_url is restored.
    app._pool = None
    app.amqp._producer_pool = None
