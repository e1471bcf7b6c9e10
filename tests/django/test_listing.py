"""`list_files` on real storages: a file system in tmp_path, and S3 through moto's real server."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage

from rendition_worker.listing import StoredFile, list_files
from tests.django.s3 import s3_bucket, s3_client, s3_endpoint, s3_storage

# The S3 fixtures are imported for pytest to find; exported so linters see them used.
__all__ = ["s3_bucket", "s3_endpoint"]

# A fixed past moment, far from any DST change, so local-time conversions are unambiguous.
BASE_TIME = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
RENDITION = "renditions/3f/3fa4c1d09b2e7a61/sunset.width-640.format-avif.1a2b3c4d.avif"


class DelegatingStorage(Storage):
    """A storage that is neither FileSystemStorage nor S3Storage: the generic walk's case."""

    def __init__(self, inner: FileSystemStorage) -> None:
        self.inner = inner

    def _open(self, name: str, mode: str = "rb") -> Any:
        return self.inner.open(name, mode)

    def _save(self, name: str, content: IO[Any]) -> str:
        return self.inner.save(name, content)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        return self.inner.listdir(path)

    def get_modified_time(self, name: str) -> datetime:
        return self.inner.get_modified_time(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)


class NoPerFileCallsStorage(FileSystemStorage):
    """A FileSystemStorage subclass whose per-file API fails: the native walk must not use it."""

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        raise AssertionError("the file system walk must use os.scandir, not listdir")

    def get_modified_time(self, name: str) -> datetime:
        raise AssertionError("the file system walk must stat, not call get_modified_time")


def write(root: Path, name: str, moment: datetime, data: bytes = b"x") -> None:
    """A file at storage name `name` under `root`, last modified at `moment`."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (moment.timestamp(), moment.timestamp()))


def make_tree(root: Path) -> dict[str, datetime]:
    """Files in and around `renditions/`; returns the ones under it with their mtimes."""
    inside = {
        RENDITION: BASE_TIME,
        "renditions/3f/3fa4c1d09b2e7a61/sunset.width-1280.format-jpeg.1a2b3c4d.jpg": BASE_TIME
        + timedelta(seconds=1.5),
        "renditions/ab/deep/er/still ünïcode.txt": BASE_TIME + timedelta(days=3),
        "renditions/top-level.bin": BASE_TIME - timedelta(days=400),
    }
    for index, (name, moment) in enumerate(inside.items()):
        write(root, name, moment, data=bytes(index))
    (root / "renditions" / "empty" / "folder").mkdir(parents=True)
    for outside in ("root.txt", "other/x.txt", "renditions-old/x.txt", "renditionsx"):
        write(root, outside, BASE_TIME)
    return inside


def as_dict(files: Iterator[StoredFile]) -> dict[str, datetime]:
    """Name -> modified time; fails on a name listed twice."""
    result: dict[str, datetime] = {}
    for stored in files:
        assert stored.name not in result, f"{stored.name} listed twice"
        assert stored.modified.tzinfo is UTC, f"{stored.name}: {stored.modified!r} is not UTC"
        result[stored.name] = stored.modified
    return result


@pytest.fixture(params=["filesystem", "generic"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A storage on tmp_path: FileSystemStorage itself, or one only the generic walk knows."""
    filesystem = FileSystemStorage(location=tmp_path)
    return filesystem if request.param == "filesystem" else DelegatingStorage(filesystem)


def test_lists_nested_files_under_the_prefix_with_their_mtimes(
    storage: Storage, tmp_path: Path
) -> None:
    expected = make_tree(tmp_path)

    assert as_dict(list_files(storage, "renditions/")) == expected


def test_a_prefix_is_a_folder_with_or_without_slashes(storage: Storage, tmp_path: Path) -> None:
    expected = make_tree(tmp_path)

    for prefix in ("renditions", "/renditions/", "renditions//"):
        assert as_dict(list_files(storage, prefix)) == expected, prefix
    # Never a plain string prefix: 'renditions' must not match 'renditions-old/'.
    assert set(as_dict(list_files(storage, "renditions/3f/"))) == {
        name for name in expected if name.startswith("renditions/3f/")
    }


def test_an_empty_prefix_lists_the_whole_storage(storage: Storage, tmp_path: Path) -> None:
    expected = make_tree(tmp_path)

    names = set(as_dict(list_files(storage, "")))

    assert names == set(expected) | {
        "root.txt",
        "other/x.txt",
        "renditions-old/x.txt",
        "renditionsx",
    }


def test_missing_or_empty_prefix_lists_nothing(storage: Storage, tmp_path: Path) -> None:
    make_tree(tmp_path)

    assert list(list_files(storage, "renditions/empty/")) == []
    assert list(list_files(storage, "no-such-folder/")) == []


def test_a_missing_storage_root_lists_nothing(tmp_path: Path) -> None:
    storage = FileSystemStorage(location=tmp_path / "never-created")

    assert list(list_files(storage, "renditions/")) == []
    assert list(list_files(DelegatingStorage(storage), "renditions/")) == []


def test_a_prefix_naming_a_file_lists_nothing(tmp_path: Path) -> None:
    write(tmp_path, "renditions", BASE_TIME)

    assert list(list_files(FileSystemStorage(location=tmp_path), "renditions/")) == []


@pytest.mark.parametrize("prefix", ["../media/", "renditions/../..", "a//b/", "a/./b", "a\\b"])
def test_a_prefix_that_is_not_a_plain_folder_is_refused_at_once(
    prefix: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="plain folder name"):
        list_files(FileSystemStorage(location=tmp_path), prefix)  # not even iterated


def test_symlinks_are_neither_followed_nor_listed(tmp_path: Path) -> None:
    media = tmp_path / "media"
    expected = make_tree(media)
    write(tmp_path, "elsewhere/secret.txt", BASE_TIME)
    (media / "renditions" / "linked-folder").symlink_to(tmp_path / "elsewhere")
    (media / "renditions" / "linked-file.txt").symlink_to(tmp_path / "elsewhere" / "secret.txt")

    assert as_dict(list_files(FileSystemStorage(location=media), "renditions/")) == expected


def test_the_file_system_walk_makes_no_per_file_storage_calls(tmp_path: Path) -> None:
    expected = make_tree(tmp_path)

    assert as_dict(list_files(NoPerFileCallsStorage(location=tmp_path), "renditions/")) == expected


def test_modification_times_are_utc_even_without_use_tz(
    storage: Storage, tmp_path: Path, settings: Any
) -> None:
    # Django's storages return naive local times when USE_TZ is off.
    settings.USE_TZ = False
    expected = make_tree(tmp_path)

    assert as_dict(list_files(storage, "renditions/")) == expected


def test_listing_is_streamed_not_built_in_memory(storage: Storage, tmp_path: Path) -> None:
    # 40 folders of 25 files. If the walk read the whole tree before the first item, every
    # file would still come out after the tree is gone; a streaming walk finds it gone.
    for folder in range(40):
        for index in range(25):
            write(tmp_path, f"renditions/{folder:02d}/{index:02d}.bin", BASE_TIME)

    files = list_files(storage, "renditions/")
    assert isinstance(files, Iterator)  # never a list or tuple
    first = next(files)
    shutil.rmtree(tmp_path / "renditions")
    rest = list(files)

    assert first.name.startswith("renditions/")
    # At most what the current folder's listing had already read; never the other 975.
    assert len(rest) < 25, f"{len(rest)} files listed after the tree was deleted"


# --- S3 through django-storages' S3Storage, against moto's server over HTTP ---------------

S3_KEYS = 1_234  # more than one 1,000-key page


def record_list_pages(storage: Any) -> list[int]:
    """Record, for every ListObjectsV2 response `storage` receives, how many keys it held."""
    pages: list[int] = []

    def record(parsed: dict[str, Any], **kwargs: Any) -> None:
        pages.append(len(parsed.get("Contents", ())))

    # An observer on boto3's own event system: the request still goes to the server.
    storage.bucket.meta.client.meta.events.register("after-call.s3.ListObjectsV2", record)
    return pages


def put_many(endpoint: str, bucket: str, keys: list[str]) -> None:
    """Upload one small object per key, concurrently (boto3 clients are thread-safe)."""
    client = s3_client(endpoint)

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, keys))


def test_s3_listing_paginates_and_yields_storage_names(s3_endpoint: str, s3_bucket: str) -> None:
    storage = s3_storage(s3_endpoint, s3_bucket, location="media")
    started = datetime.now(UTC)
    saved = {
        storage.save(RENDITION, ContentFile(b"avif bytes")),
        storage.save(
            "renditions/ab/abcdef0123456789/x.width-320.format-jpeg.0badf00d.jpg",
            ContentFile(b"jpeg bytes"),
        ),
    }
    bulk = [f"renditions/{index % 256:02x}/{index:016x}/f.bin" for index in range(S3_KEYS)]
    upload_started = time.monotonic()
    put_many(s3_endpoint, s3_bucket, [f"media/{name}" for name in bulk])
    upload_seconds = time.monotonic() - upload_started
    outside = [
        "media/other/x.txt",  # another folder of the storage
        "media/renditions-old/x.txt",  # shares the string prefix, not the folder
        "renditions/outside-location.txt",  # outside the storage's location
    ]
    unreachable = [
        "media/renditions/placeholder/",  # a "folder" made by some S3 consoles
        "media/renditions/odd//double-slash.txt",  # no storage name reaches this key
    ]
    put_many(s3_endpoint, s3_bucket, outside + unreachable)
    finished = datetime.now(UTC)
    pages = record_list_pages(storage)

    files = list_files(storage, "renditions/")
    first = next(files)
    pages_for_first = len(pages)
    listed = {first.name: first.modified} | as_dict(files)

    print(f"uploaded {S3_KEYS} objects in {upload_seconds:.2f} s; pages: {pages}")
    assert pages_for_first == 1, "the first file must come after one page, not the whole listing"
    assert pages == [1000, S3_KEYS + len(saved) + len(unreachable) - 1000]
    assert set(listed) == saved | set(bulk)
    # S3 keeps whole seconds in listings; the server runs on this machine's clock.
    for moment in listed.values():
        assert moment.tzinfo is UTC
        assert started - timedelta(seconds=2) <= moment <= finished + timedelta(seconds=2)
    # Yielded names are storage names: the storage reaches exactly those objects.
    for name in sorted(saved) + bulk[::250]:
        assert storage.exists(name), name
    with storage.open(RENDITION) as opened:
        assert opened.read() == b"avif bytes"
    storage.delete(RENDITION)
    assert RENDITION not in {stored.name for stored in list_files(storage, "renditions/")}


@pytest.mark.parametrize("location", ["", "deep/media/"])
def test_s3_location_is_stripped_from_names(
    location: str, s3_endpoint: str, s3_bucket: str
) -> None:
    storage = s3_storage(s3_endpoint, s3_bucket, location=location)
    names = {RENDITION, "renditions/a/b.txt", "renditions/a b/ünïcode+%20.txt"}
    for name in names:
        storage.save(name, ContentFile(name.encode()))
    storage.save("elsewhere/c.txt", ContentFile(b"c"))

    listed = as_dict(list_files(storage, "renditions/"))

    assert set(listed) == names
    assert all(storage.exists(name) for name in listed)
    assert set(as_dict(list_files(storage, ""))) == names | {"elsewhere/c.txt"}


def test_s3_missing_prefix_lists_nothing(s3_endpoint: str, s3_bucket: str) -> None:
    storage = s3_storage(s3_endpoint, s3_bucket)
    storage.save("other/x.txt", ContentFile(b"x"))
    pages = record_list_pages(storage)

    assert list(list_files(storage, "renditions/")) == []
    assert pages == [0]
