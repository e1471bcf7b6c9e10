"""DESIGN.md's Behaviour on django-storages' S3Storage, against moto's real S3 server.

The default storage is `S3Storage` (django-storages' default `file_overwrite=True`) on a
fresh bucket of moto's server on loopback; photos are saved through the ORM, the real
Celery worker renders them, and every assertion reads the bucket back over the S3 API.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from PIL import Image

from rendition_worker.core.naming import parse_rendition_name
from rendition_worker.models import Rendition, Source, Tombstone
from tests.django.s3 import s3_bucket, s3_client, s3_endpoint, s3_storages
from tests.live_worker import (
    WorkerTracker,
    jpeg_bytes,
    media_files,
    ready_version,
    upload,
    wait_for,
    wait_idle,
)
from tests.testapp.models import Photo

# The S3 fixtures are imported for pytest to find; exported so linters see them used.
__all__ = ["s3_bucket", "s3_endpoint"]

HERO_AND_THUMB = 7  # hero: 2 widths x 3 formats, thumb: 1 spec
LOCATION = "media"
# More than one ListObjectsV2 page (1,000 keys) of orphans in a single shard folder.
ORPHANS = 1_100


@dataclass
class Bucket:
    """The bucket behind the default storage, read through a plain boto3 client."""

    name: str
    client: Any
    location: str = LOCATION
    pages: list[tuple[str, int, bool]] = field(default_factory=list)

    def names(self, prefix: str = "") -> set[str]:
        """Storage names of every object under `prefix` (the location stripped)."""
        root = f"{self.location}/"
        paginator = self.client.get_paginator("list_objects_v2")
        return {
            str(entry["Key"]).removeprefix(root)
            for page in paginator.paginate(Bucket=self.name, Prefix=root + prefix)
            for entry in page.get("Contents", ())
        }

    def latest_modified(self, prefix: str = "") -> datetime:
        """The newest LastModified under `prefix`."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.name, Prefix=f"{self.location}/{prefix}")
        newest: datetime = max(
            entry["LastModified"] for page in pages for entry in page.get("Contents", ())
        )
        return newest

    def read(self, name: str) -> bytes:
        """The bytes of the object at storage name `name`."""
        response = self.client.get_object(Bucket=self.name, Key=f"{self.location}/{name}")
        data: bytes = response["Body"].read()
        return data

    def put_many(self, names: list[str], data: bytes = b"x") -> None:
        """Upload one small object per name, concurrently (boto3 clients are thread-safe)."""

        def put(name: str) -> None:
            self.client.put_object(Bucket=self.name, Key=f"{self.location}/{name}", Body=data)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, names))


@pytest.fixture
def bucket(
    worker: WorkerTracker, settings: Any, s3_endpoint: str, s3_bucket: str
) -> Iterator[Bucket]:
    """Make a fresh bucket the default storage (so every registered field's) for one test."""
    settings.STORAGES = s3_storages(s3_endpoint, s3_bucket, LOCATION)
    storage: Any = Photo._meta.get_field("image").storage
    assert storage.bucket_name == s3_bucket
    observed = Bucket(s3_bucket, s3_client(s3_endpoint))
    _record_list_pages(observed)
    yield observed
    # The worker must not still be writing to this bucket when the settings are restored.
    wait_idle(worker)


def _record_list_pages(bucket: Bucket) -> None:
    """Append (prefix, keys, truncated) to `bucket.pages` for every listing the app makes."""

    def record(parsed: dict[str, Any], **kwargs: Any) -> None:
        contents = parsed.get("Contents", ())
        bucket.pages.append((parsed.get("Prefix", ""), len(contents), bool(parsed["IsTruncated"])))

    # S3Storage keeps one Bucket resource per storage object, shared by every thread (the
    # worker's included); observing its client leaves every request going to the server.
    storage: Any = default_storage
    storage.bucket.meta.client.meta.events.register("after-call.s3.ListObjectsV2", record)


def ready(photo: Photo, content: bytes) -> list[Rendition]:
    """Wait until `photo`'s image is ready with every rendition made from exactly `content`."""
    return ready_version(photo, content, HERO_AND_THUMB)


def stored_name(photo: Photo) -> str:
    """The storage name of `photo`'s saved image."""
    name = photo.image.name
    assert name, f"photo {photo.pk} has no image"
    return name


def gone(photo: Photo) -> bool:
    """Whether the app has forgotten `photo`'s image (no state row, so no renditions)."""
    return not Source.objects.filter(object_id=str(photo.pk), field="image").exists()


def reconcile() -> dict[str, Any]:
    """Run `renditions reconcile --json` as an operator would; its report."""
    out = io.StringIO()
    call_command("renditions", "reconcile", "--json", stdout=out)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def mean_colour(data: bytes) -> tuple[float, ...]:
    """The average RGB of an encoded image."""
    with Image.open(io.BytesIO(data)) as image:
        pixel = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return tuple(float(channel) for channel in pixel)


def close(colour: tuple[float, ...], expected: tuple[int, int, int]) -> bool:
    """Whether two colours match within what lossy encoding moves a flat colour."""
    return all(abs(got - want) <= 12 for got, want in zip(colour, expected, strict=True))


def test_create_writes_every_rendition_to_the_bucket(
    bucket: Bucket, worker: WorkerTracker, settings: Any
) -> None:
    data = jpeg_bytes(color=(200, 80, 40))
    photo = Photo.objects.create(image=upload(data, "create.jpg"))
    rows = ready(photo, data)
    wait_idle(worker)

    assert bucket.names("renditions/") == {row.name for row in rows}
    original = stored_name(photo)
    assert bucket.names("photos/") == {original}
    assert bucket.read(original) == data
    for row in rows:
        with Image.open(io.BytesIO(bucket.read(row.name))) as image:
            assert (str(image.format).lower(), image.size) == (row.format, (row.width, row.height))
    assert media_files(settings.MEDIA_ROOT) == set()  # nothing went to the local disk


def test_replace_deletes_old_renditions_and_original_from_the_bucket(
    bucket: Bucket, worker: WorkerTracker
) -> None:
    first, second = jpeg_bytes(color=(10, 20, 30)), jpeg_bytes(color=(200, 20, 30))
    photo = Photo.objects.create(image=upload(first, "first.jpg"))
    old_rows = ready(photo, first)
    old_original = photo.image.name
    photo.image = upload(second, "second.jpg")
    photo.save()
    rows = ready(photo, second)
    wait_idle(worker)

    assert bucket.names("photos/") == {photo.image.name} != {old_original}
    assert bucket.names("renditions/") == {row.name for row in rows}
    assert not {row.name for row in old_rows} & bucket.names()
    assert not Rendition.objects.filter(source_name=old_original).exists()
    assert not Tombstone.objects.exists()


@pytest.mark.parametrize("how", ["clear", "instance", "queryset"])
def test_clearing_or_deleting_empties_the_bucket(
    bucket: Bucket, worker: WorkerTracker, how: str
) -> None:
    data = jpeg_bytes(color=(30, 140, 60))
    photo = Photo.objects.create(image=upload(data, f"{how}.jpg"))
    ready(photo, data)
    assert len(bucket.names()) == 1 + HERO_AND_THUMB
    if how == "clear":
        photo.image = None
        photo.save()
    elif how == "instance":
        photo.delete()
    else:
        Photo.objects.filter(pk=photo.pk).delete()
    wait_for(lambda: gone(photo), what="the source to be forgotten")
    wait_idle(worker)

    assert bucket.names() == set()
    assert not Rendition.objects.exists() and not Tombstone.objects.exists()


def test_same_name_uploaded_again_is_kept_and_rendered_again(
    bucket: Bucket, worker: WorkerTracker
) -> None:
    before, after = jpeg_bytes(color=(20, 40, 220)), jpeg_bytes(color=(230, 200, 20))
    photo = Photo.objects.create(image=upload(before, "same.jpg"))
    name = stored_name(photo)
    old_rows = ready(photo, before)
    photo.image = upload(after, "same.jpg")
    photo.save()
    assert photo.image.name == name  # file_overwrite=True: the object was replaced in place
    rows = ready(photo, after)
    wait_idle(worker)

    assert bucket.read(name) == after  # the old original's deletion never took the new one
    assert bucket.names("photos/") == {name}
    assert bucket.names("renditions/") == {row.name for row in rows}
    assert not {row.name for row in old_rows} & {row.name for row in rows}
    for row in rows:
        colour = mean_colour(bucket.read(row.name))
        assert close(colour, (230, 200, 20)), f"{row.spec} shows {colour}, not the new upload"
    assert not Tombstone.objects.exists()


def test_reconcile_pages_through_and_deletes_over_a_thousand_orphans(
    bucket: Bucket, worker: WorkerTracker, settings: Any
) -> None:
    data = jpeg_bytes(color=(90, 90, 200))
    photo = Photo.objects.create(image=upload(data, "kept.jpg"))
    rows = ready(photo, data)
    wait_idle(worker)
    real = {row.name for row in rows}
    shard = next(iter(real)).split("/")[1]
    parsed = parse_rendition_name(next(iter(real)), "renditions")
    assert parsed is not None
    # Names this app's scheme could have made, in the real renditions' own shard folder,
    # so that one paginated listing holds the orphans and the files that must stay.
    orphans = [
        f"renditions/{shard}/{shard}{index:014x}/stray.width-640.format-avif.1a2b3c4d.avif"
        for index in range(ORPHANS + 1)
        if f"{shard}{index:014x}" != parsed.source_key
    ][:ORPHANS]
    foreign = [f"renditions/{shard}/notes.txt", f"renditions/{shard}/README.md"]
    uploaded_at = time.monotonic()
    bucket.put_many(orphans + foreign)
    upload_seconds = time.monotonic() - uploaded_at
    listed = bucket.names(f"renditions/{shard}/")
    assert listed == set(orphans) | set(foreign) | real
    # S3 keeps whole seconds: an object may look a fraction of a second younger than now.
    newest = bucket.latest_modified(f"renditions/{shard}/")
    wait_for(lambda: datetime.now(UTC) > newest, what="the orphans to be in the past")
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "ORPHAN_GRACE": 0}
    bucket.pages.clear()

    report = reconcile()
    shard_pages = [page for page in bucket.pages if page[0] == f"{LOCATION}/renditions/{shard}/"]
    print(
        f"{len(orphans)} orphans uploaded in {upload_seconds:.1f} s; the shard folder "
        f"of {len(listed)} keys was listed in pages {[keys for _, keys, _ in shard_pages]}; "
        f"report: {report}"
    )

    assert [(keys, truncated) for _, keys, truncated in shard_pages] == [
        (1000, True),
        (len(listed) - 1000, False),
    ]
    assert report["orphans"] == len(orphans) == report["deleted_files"], report
    assert report["broken"] == report["missing"] == report["obsolete"] == 0, report
    assert bucket.names("renditions/") == real | set(foreign)
    assert bucket.names("photos/") == {photo.image.name}
    # Everything the rows reference is still readable, and there is nothing left to do.
    assert all(bucket.read(name) for name in real)
    again = reconcile()
    assert again["orphans"] == again["deleted_files"] == again["enqueued"] == 0, again
    assert again["present"] == HERO_AND_THUMB, again
