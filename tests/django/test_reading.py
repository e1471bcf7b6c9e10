"""Reading renditions (DESIGN.md "Reading renditions"): lookups, cache, status, prefetch.

Most tests write the rows a worker would have written, with `bulk_create` (no signal, so no
task), or run the real generation service in the test's thread; one runs the real worker
through the ORM's replace path. The cache is the real Redis (see `CACHE_DATABASE`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import models

import rendition_worker
from rendition_worker import cache
from rendition_worker.conf import get_settings
from rendition_worker.core.naming import rendition_name, source_key
from rendition_worker.core.specs import Op, parse_spec
from rendition_worker.models import Rendition, Source, State
from rendition_worker.services.generation import source_generate
from rendition_worker.services.lookups import PREFETCH_ATTRIBUTE, Status
from tests.live_worker import WorkerTracker, jpeg_bytes, media_files, upload, wait_for
from tests.testapp.models import Photo, Plain, Poster

PHOTO_SPECS = [str(spec) for spec in get_settings().specs_for("testapp.Photo.image")]
THUMB = "fill-64x64|format-webp"


# These tests' lookup cache: a Redis database of their own, under a key prefix of each test's
# own. The shared test cache (database 3) is flushed by every `worker` fixture of every test
# run on this Redis (RedisCache.clear() is FLUSHDB, whatever the prefix), which would empty a
# warm cache in the middle of a query-count test.
CACHE_DATABASE = 4


def isolate_cache_and_media(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> None:
    """Point the default cache at this test's own keys and MEDIA_ROOT at its tmp_path."""
    if "worker" in request.fixturenames:
        request.getfixturevalue("worker")  # it clears the default cache: let it do so first
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"{settings.REDIS_URL}/{CACHE_DATABASE}",
            "KEY_PREFIX": f"rw-tests-{uuid.uuid4().hex}",
        }
    }
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture(autouse=True)
def own_cache_and_media(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> None:
    """A cache and a MEDIA_ROOT of this test's own."""
    isolate_cache_and_media(request, settings, tmp_path)


def stored_file(data: bytes | None = None, folder: str = "photos") -> str:
    """Save a real JPEG into the default storage; returns its name."""
    return default_storage.save(
        f"{folder}/{uuid.uuid4().hex[:8]}.jpg", ContentFile(data or jpeg_bytes())
    )


def photos_without_signals(*names: str, model: type[models.Model] = Photo) -> list[Any]:
    """Rows made with bulk_create (no signal, so no task), loaded back as a page would."""
    created = model._default_manager.bulk_create([model(image=name) for name in names])
    pks = [row.pk for row in created]
    return sorted(model._default_manager.filter(pk__in=pks), key=lambda row: pks.index(row.pk))


def rendition_size(spec: str, source: tuple[int, int] = (400, 300)) -> tuple[int, int]:
    """The pixel size the worker would record for `spec` of a `source`-sized image."""
    operation = parse_spec(spec).operation
    if operation.kind is Op.FILL:
        assert operation.width and operation.height
        return operation.width, operation.height
    assert operation.kind is Op.WIDTH and operation.width
    width = min(operation.width, source[0])
    return width, round(source[1] * width / source[0])


def record(
    objects: Iterable[Any],
    specs: Sequence[str] = PHOTO_SPECS,
    *,
    field: str = "image",
    source_name: str | None = None,
    state: str = State.READY,
    source_state: str = State.READY,
    error: str = "",
    source: tuple[int, int] = (400, 300),
) -> list[Rendition]:
    """Write the state and rendition rows a worker would have written, without rendering."""
    objects = list(objects)
    content_type = ContentType.objects.get_for_model(type(objects[0]))
    sources = Source.objects.bulk_create(
        [
            Source(
                content_type=content_type,
                object_id=str(obj.pk),
                field=field,
                name=source_name or getattr(obj, field).name,
                state=source_state,
                error=error,
            )
            for obj in objects
        ]
    )
    fingerprint = get_settings().encoder.fingerprint
    rows = []
    for row in sources:
        key = source_key(
            f"{content_type.app_label}.{content_type.model}:{row.object_id}:{field}", row.name
        )
        for spec in specs:
            parsed = parse_spec(spec)
            fmt = parsed.format or "jpeg"
            width, height = rendition_size(spec, source)
            name = rendition_name(
                path="renditions",
                key=key,
                source_name=row.name,
                spec=parsed,
                output_format=fmt,
                fingerprint=fingerprint,
            )
            rows.append(
                Rendition(
                    source=row,
                    spec=spec,
                    source_name=row.name,
                    state=state,
                    name=name,
                    format=fmt,
                    width=width,
                    height=height,
                    size=10 * width + {"avif": 1, "webp": 2, "jpeg": 3}[fmt],
                )
            )
    return Rendition.objects.bulk_create(rows)


def fresh(photo: Any) -> Any:
    """The same row loaded again, as the next request would."""
    return type(photo)._default_manager.get(pk=photo.pk)


def key_of(photo: Any, field: str = "image") -> str:
    """The cache key of the lookup of `photo`'s current file."""
    content_type = ContentType.objects.get_for_model(type(photo))
    return cache.renditions_key(content_type.pk, str(photo.pk), field, getattr(photo, field).name)


@pytest.mark.django_db
def test_only_ready_renditions_of_the_current_file(settings: Any) -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    pending, stale = PHOTO_SPECS[1], PHOTO_SPECS[-1]
    Rendition.objects.filter(spec=pending).update(state=State.PENDING)
    # A row left from an earlier file of the same field (the write side deletes these after
    # commit; a reader must never serve one even before that).
    Rendition.objects.filter(spec=stale).update(source_name="photos/earlier.jpg")

    found = rendition_worker.get_renditions(photo.image)

    assert list(found) == [spec for spec in PHOTO_SPECS if spec not in {pending, stale}]
    rows = {row.spec: row for row in Rendition.objects.all()}
    for spec, rendition in found.items():
        assert rendition.spec == spec
        assert rendition.name == rows[spec].name
        assert rendition.url == default_storage.url(rows[spec].name)
        assert rendition.url.startswith(settings.MEDIA_URL + "renditions/")
        assert (rendition.width, rendition.height) == (rows[spec].width, rows[spec].height)
        assert rendition.format == parse_spec(spec).format
        assert rendition.media_type == f"image/{rendition.format}"
        assert rendition.size == rows[spec].size
    assert found["width-320|format-jpeg"].width == 320
    assert found["width-320|format-jpeg"].height == 240


@pytest.mark.django_db
def test_a_cached_lookup_costs_no_query_and_holds_only_primitives(
    settings: Any, django_assert_num_queries: Any
) -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo])
    ContentType.objects.get_for_model(Photo)  # Django caches it per process

    with django_assert_num_queries(1):
        first = rendition_worker.get_renditions(photo.image)
    again_photo = fresh(photo)
    with django_assert_num_queries(0):
        again = rendition_worker.get_renditions(again_photo.image)
        one = rendition_worker.get_rendition(again_photo.image, THUMB)
    assert again == first
    assert one == first[THUMB]

    rows, placeholder, status = cache.lookup_cache().get(key_of(photo))
    assert json.loads(json.dumps([rows, placeholder, status])) == [
        [list(row) for row in rows],
        None,
        ["ready", ""],
    ]
    # The status comes with the same entry: no query either.
    with django_assert_num_queries(0):
        assert rendition_worker.get_status(again_photo.image).state == "ready"
    assert {row[1] for row in rows} == set(PHOTO_SPECS)

    # URLs are made at read time (a signed URL expires; a cached one would outlive it).
    settings.MEDIA_URL = "https://cdn.example.com/media/"
    with django_assert_num_queries(0):
        moved = rendition_worker.get_renditions(again_photo.image)
    assert all(
        r.url.startswith("https://cdn.example.com/media/renditions/") for r in moved.values()
    )


@pytest.mark.django_db
def test_an_empty_field_has_nothing_and_is_ready(django_assert_num_queries: Any) -> None:
    (photo,) = photos_without_signals("")
    with django_assert_num_queries(0):
        assert rendition_worker.get_renditions(photo.image) == {}
        assert rendition_worker.get_rendition(photo.image, THUMB) is None
        assert rendition_worker.get_status(photo.image).state == "ready"
        rendition_worker.prefetch_renditions([photo], "image")
    # A developer error is one whatever the data: an empty field does not hide it.
    with pytest.raises(ValueError, match="not in the sets"):
        rendition_worker.get_rendition(photo.image, "width-999|format-avif")


@pytest.mark.django_db
def test_unregistered_fields_are_refused_by_name() -> None:
    (plain,) = photos_without_signals("plain/a.jpg", model=Plain)
    for read in (rendition_worker.get_renditions, rendition_worker.get_status):
        with pytest.raises(ValueError, match=r"testapp\.Plain\.image is not a registered field"):
            read(plain.image)
    with pytest.raises(ValueError, match=r"testapp\.Plain\.image"):
        rendition_worker.get_rendition(plain.image, THUMB)
    with pytest.raises(ValueError, match=r"testapp\.Plain\.image"):
        rendition_worker.prefetch_renditions([plain], "image")
    (photo,) = photos_without_signals("photos/a.jpg")
    with pytest.raises(ValueError, match=r"testapp\.Photo\.title"):
        rendition_worker.prefetch_renditions([photo], "title")


@pytest.mark.django_db
def test_get_rendition_canonicalises_and_refuses_specs_outside_the_sets() -> None:
    (photo,) = photos_without_signals(stored_file())
    record([photo], [THUMB, "width-160|format-jpeg"])

    thumb = rendition_worker.get_rendition(photo.image, "format-webp|fill-64x64")
    assert thumb is not None
    assert (thumb.spec, thumb.width, thumb.height, thumb.format) == (THUMB, 64, 64, "webp")
    assert rendition_worker.get_rendition(photo.image, "width-320|format-avif") is None
    with pytest.raises(ValueError, match=r"'width-640\|format-avif' is not in the sets"):
        rendition_worker.get_rendition(photo.image, "format-avif|width-640")
    with pytest.raises(ValueError, match="Invalid spec"):
        rendition_worker.get_rendition(photo.image, "width-160|sepia")
    # The cover field uses only the thumb set.
    with pytest.raises(ValueError, match=r"testapp\.Photo\.cover \(its sets: thumb\)"):
        rendition_worker.get_rendition(Photo(pk=photo.pk, cover="covers/c.jpg").cover, "width-160")


@pytest.mark.django_db
def test_status_follows_the_state_row_of_the_current_file() -> None:
    (photo,) = photos_without_signals(stored_file())
    assert rendition_worker.get_status(photo.image).state == "pending"  # no row yet

    record([photo], [], source_name="photos/replaced.jpg", source_state=State.READY)
    assert rendition_worker.get_status(photo.image).state == "pending"  # a row of another file

    # The worker invalidates the cached lookup on every write; these hand-made writes do too.
    Source.objects.filter(object_id=str(photo.pk)).update(name=photo.image.name)
    cache.lookup_cache().clear()
    assert rendition_worker.get_status(photo.image) == Status("ready", "")

    Source.objects.filter(object_id=str(photo.pk)).update(state=State.PENDING)
    cache.lookup_cache().clear()
    assert rendition_worker.get_status(photo.image).state == "pending"


@pytest.mark.django_db
def test_status_of_a_source_the_worker_cannot_decode_is_failed_with_its_error() -> None:
    (photo,) = photos_without_signals(stored_file(b"this is not an image"))

    summary = source_generate("testapp.photo", str(photo.pk), "image", photo.image.name)

    assert summary["status"] == "failed"
    status = rendition_worker.get_status(photo.image)
    assert status.state == "failed"
    assert status.error == summary["error"]
    assert status.error
    assert rendition_worker.get_renditions(photo.image) == {}


@pytest.mark.django_db
def test_generation_invalidates_a_cached_pending_lookup(
    settings: Any, django_assert_num_queries: Any
) -> None:
    (photo,) = photos_without_signals(stored_file())
    assert rendition_worker.get_renditions(photo.image) == {}
    with django_assert_num_queries(0):  # "none ready" is cached too
        assert rendition_worker.get_renditions(photo.image) == {}

    # The service the worker's task runs, here in the test's thread: the real write path.
    assert (
        source_generate("testapp.photo", str(photo.pk), "image", photo.image.name)["status"]
        == "ready"
    )

    found = rendition_worker.get_renditions(photo.image)
    assert list(found) == PHOTO_SPECS
    assert {r.name for r in found.values()} == media_files(settings.MEDIA_ROOT, "renditions/")
    assert found["width-320|format-avif"].size == default_storage.size(
        found["width-320|format-avif"].name
    )
    assert rendition_worker.get_status(photo.image).state == "ready"


@pytest.mark.django_db
def test_uuid_primary_keys_find_what_the_worker_recorded() -> None:
    (poster,) = photos_without_signals(stored_file(folder="posters"), model=Poster)
    assert (
        source_generate("testapp.poster", str(poster.pk), "image", poster.image.name)["status"]
        == "ready"
    )
    found = rendition_worker.get_renditions(fresh(poster).image)
    assert len(found) == 6
    assert rendition_worker.get_status(poster.image).state == "ready"
    with pytest.raises(ValueError, match="not in the sets"):
        rendition_worker.get_rendition(poster.image, THUMB)  # Poster.image has hero only


@pytest.mark.django_db
def test_prefetch_loads_a_page_in_one_query_then_none(django_assert_num_queries: Any) -> None:
    ready, pending, empty = photos_without_signals("photos/r.jpg", "photos/p.jpg", "")
    record([ready])
    record([pending], [THUMB], state=State.PENDING, source_state=State.PENDING)
    ContentType.objects.get_for_model(Photo)

    with django_assert_num_queries(1):
        rendition_worker.prefetch_renditions([ready, pending, empty], "image")
    with django_assert_num_queries(0):
        assert list(rendition_worker.get_renditions(ready.image)) == PHOTO_SPECS
        assert rendition_worker.get_renditions(pending.image) == {}
        assert rendition_worker.get_renditions(empty.image) == {}

    # Warm: the next request's instances cost no query at all, empty results included.
    page = [fresh(ready), fresh(pending), fresh(empty)]
    with django_assert_num_queries(0):
        rendition_worker.prefetch_renditions(page, "image")
        assert list(rendition_worker.get_renditions(page[0].image)) == PHOTO_SPECS
        assert rendition_worker.get_renditions(page[1].image) == {}

    # What was prefetched lives on the instance: no cache round trip is needed any more...
    cache.lookup_cache().delete_many([key_of(ready), key_of(pending)])
    with django_assert_num_queries(0):
        assert list(rendition_worker.get_renditions(page[0].image)) == PHOTO_SPECS
    # ...but only for the file it was loaded for.
    page[0].image = "photos/other.jpg"
    with django_assert_num_queries(1):
        assert rendition_worker.get_renditions(page[0].image) == {}
    assert PREFETCH_ATTRIBUTE in page[0].__dict__


@pytest.mark.django_db
def test_prefetch_evaluates_a_queryset_once_and_leaves_deferred_fields_alone(
    django_assert_num_queries: Any,
) -> None:
    photos = photos_without_signals("photos/a.jpg", "photos/b.jpg")
    record(photos)
    ContentType.objects.get_for_model(Photo)
    queryset = Photo.objects.filter(pk__in=[p.pk for p in photos]).order_by("pk")

    with django_assert_num_queries(2):  # the page itself, then its renditions
        rendition_worker.prefetch_renditions(queryset, "image")
    with django_assert_num_queries(0):
        assert [len(rendition_worker.get_renditions(p.image)) for p in queryset] == [7, 7]

    deferred = list(Photo.objects.filter(pk__in=[p.pk for p in photos]).defer("image"))
    with django_assert_num_queries(0):
        rendition_worker.prefetch_renditions(deferred, "image")
    assert all(PREFETCH_ATTRIBUTE not in p.__dict__ for p in deferred)


def test_the_package_imports_without_django_and_exports_the_reading_api() -> None:
    code = (
        "import sys, rendition_worker, rendition_worker.core.specs;"
        "assert 'django' not in sys.modules, 'django imported';"
        "print(sorted(rendition_worker.__all__))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(rendition_worker.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "['beat_schedule',",
        "'get_placeholder',",
        "'get_rendition',",
        "'get_renditions',",
        "'get_status',",
        "'prefetch_renditions',",
        "'set_focal_point']",
    ]
    from rendition_worker.services import focal, lookups

    assert rendition_worker.get_renditions is lookups.get_renditions
    assert rendition_worker.get_placeholder is lookups.get_placeholder
    assert rendition_worker.set_focal_point is focal.set_focal_point
    with pytest.raises(AttributeError, match="no attribute 'beat_schedul'"):
        rendition_worker.beat_schedul  # noqa: B018


def test_replacing_the_image_through_the_orm_drops_the_old_lookup(
    worker: WorkerTracker, settings: Any, django_assert_num_queries: Any
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "first.jpg"))
    wait_for(lambda: rendition_worker.get_status(fresh(photo).image).state == "ready", what="ready")
    before = fresh(photo)
    old = rendition_worker.get_renditions(before.image)
    assert list(old) == PHOTO_SPECS
    with django_assert_num_queries(0):
        assert rendition_worker.get_renditions(fresh_without_query(before).image) == old

    photo.image = upload(jpeg_bytes(color=(20, 90, 200)), "second.jpg")
    photo.save()
    # The key includes the file name: the new file never finds the old file's entry...
    assert not set(rendition_worker.get_renditions(fresh(photo).image).values()) & set(old.values())
    wait_for(lambda: rendition_worker.get_status(fresh(photo).image).state == "ready", what="new")
    new = rendition_worker.get_renditions(fresh(photo).image)
    assert list(new) == PHOTO_SPECS
    assert not {r.name for r in new.values()} & {r.name for r in old.values()}
    # ...and once the worker has retired the old renditions, a page still holding the old
    # row is not served them from the cache either: their files are on their way out.
    assert rendition_worker.get_renditions(before.image) == {}
    assert rendition_worker.get_status(before.image).state == "pending"
    wait_for(
        lambda: media_files(settings.MEDIA_ROOT, "renditions/") == {r.name for r in new.values()},
        what="the old renditions' files to be deleted",
    )


def fresh_without_query(photo: Any) -> Any:
    """A second instance of the same row built from the first one's values (no query)."""
    return Photo(pk=photo.pk, title=photo.title, image=photo.image.name, cover=photo.cover.name)
