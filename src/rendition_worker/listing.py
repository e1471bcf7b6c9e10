"""Stream the files under a storage folder with their modification times, in bounded memory.

The reconciler compares what is stored against what is required, and needs each file's
age (orphans younger than ORPHAN_GRACE are never deleted). Django's `Storage` API has no
recursive listing, and `listdir` + `get_modified_time` costs one request per file on
remote storages, so the storages that matter get a native walk:

- `FileSystemStorage` (and subclasses): `os.scandir`, one `stat` per file, no storage calls;
- django-storages' `S3Storage`: `ListObjectsV2`, 1,000 keys per request;
- any other storage: `listdir` recursively and `get_modified_time` per file (slow remotely).

Listings are generators: they hold one open directory iterator per level (file system),
one page of keys (S3), or one `listdir` result per level (generic), never the whole tree.
Files that vanish during the walk (another worker deleting them) are skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.files.storage import FileSystemStorage, Storage
from django.utils import timezone

# S3 allows 1,000 keys per ListObjectsV2 response at most; asking for fewer means more requests.
S3_PAGE_SIZE = 1000
_S3_MODULE = "storages.backends.s3"


class StoredFile:
    """One stored file: its storage name and when it was last modified (aware, UTC).

    On a local disk the time is read on first use: the reconciler asks it only of orphan
    candidates, and a stat per file was half the cost of listing a million files.
    """

    __slots__ = ("_modified", "_path", "name")

    def __init__(self, name: str, modified: datetime | None = None, path: str = "") -> None:
        self.name = name
        self._modified = modified
        self._path = path

    @property
    def modified(self) -> datetime:
        """When the file was last modified; now, if it has vanished since it was listed."""
        if self._modified is None:
            try:
                mtime = Path(self._path).lstat().st_mtime
                self._modified = datetime.fromtimestamp(mtime, UTC)
            except FileNotFoundError:
                # Gone: "just modified" keeps anything from deleting what is not there.
                self._modified = datetime.now(UTC)
        return self._modified

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredFile):
            return NotImplemented
        return (self.name, self.modified) == (other.name, other.modified)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"StoredFile({self.name!r}, {self.modified!r})"


def list_files(storage: Storage, prefix: str) -> Iterator[StoredFile]:
    """Every file under the folder `prefix` ('' = the whole storage), streamed, in no order."""
    folder = _folder(prefix)
    if _is_s3(storage):
        return _list_s3(storage, folder)
    if isinstance(storage, FileSystemStorage):
        return _list_filesystem(storage, folder)
    return _list_generic(storage, folder)


def _folder(prefix: str) -> str:
    """`prefix` as a storage folder name ending in '/', or '' for the root."""
    folder = prefix.strip("/")
    if not folder:
        return ""
    # S3 prefixes match any key that starts with them; a plain folder name keeps every
    # backend listing the same files ('renditions' must not match 'renditions-old/').
    if not _plain_path(folder):
        raise ValueError(f"prefix must be a plain folder name like 'renditions/', not {prefix!r}")
    return f"{folder}/"


def _plain_path(path: str) -> bool:
    """Whether `path` is '/'-separated names with no empty, '.' or '..' part (and no '\\')."""
    return "\\" not in path and all(part not in {"", ".", ".."} for part in path.split("/"))


def _is_s3(storage: Storage) -> bool:
    """Whether `storage` is django-storages' S3Storage (or a subclass)."""
    # An S3Storage instance implies its module is imported; checking sys.modules keeps the
    # optional `s3` extra optional and spares every other storage the boto3 import.
    module = sys.modules.get(_S3_MODULE)
    return module is not None and isinstance(storage, module.S3Storage)


def _list_filesystem(storage: FileSystemStorage, folder: str) -> Iterator[StoredFile]:
    """Walk the folder on disk; names are relative to the storage root, with '/'."""
    yield from _walk(storage.path(folder), folder)


def _walk(directory: str, name_prefix: str) -> Iterator[StoredFile]:
    """The files below `directory`, named `name_prefix` + their path under it."""
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return  # a missing prefix, or a folder deleted while we walk
    with entries:
        for entry in entries:
            # Symlinks are neither followed nor listed: this app never makes them, so one
            # under PATH belongs to someone else, and following could leave the storage.
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, f"{name_prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                yield StoredFile(name_prefix + entry.name, path=entry.path)


# `storage` is Any: django-storages and boto3 ship no type information.
def _list_s3(storage: Any, folder: str) -> Iterator[StoredFile]:
    """List the keys under `location`/`folder` page by page; yield them as storage names."""
    location = str(storage.location).strip("/")
    root = f"{location}/" if location else ""
    bucket = storage.bucket
    paginator = bucket.meta.client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket.name,
        Prefix=root + folder,
        PaginationConfig={"PageSize": S3_PAGE_SIZE},
    )
    for page in pages:
        for entry in page.get("Contents", ()):
            name = str(entry["Key"])[len(root) :]
            if _is_storage_name(name):
                yield StoredFile(name, entry["LastModified"].astimezone(UTC))


def _is_storage_name(name: str) -> bool:
    """Whether S3Storage maps `name` back to the same key (its names are normalised)."""
    # Folder placeholders ("x/") and keys like "a//b", "../a" or "a\\b" name no file that
    # exists()/delete() can reach: the storage would normalise them to another key (or refuse).
    return _plain_path(name)


def _list_generic(storage: Storage, folder: str) -> Iterator[StoredFile]:
    """Any storage: `listdir` recursively, `get_modified_time` per file (slow remotely)."""
    try:
        directories, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for file_name in files:
        name = folder + file_name
        try:
            modified = storage.get_modified_time(name)
        except FileNotFoundError:
            continue
        yield StoredFile(name, _as_utc(modified))
    for directory in directories:
        # Some storages return folder names with a trailing '/'.
        cleaned = directory.strip("/")
        if cleaned:
            yield from _list_generic(storage, f"{folder}{cleaned}/")


def _as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; Django storages return naive local times when USE_TZ is off."""
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment.astimezone(UTC)
