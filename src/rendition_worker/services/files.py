"""Write rendition files so that a final name never holds a partly written file.

A rendition's name is content-addressed, so a file already there was meant to hold exactly
the rendered bytes, but only if its writer finished: Django's FileSystemStorage writes in
place, and a worker killed mid-write (kill -9, OOM, power loss) leaves a truncated file at
the final name that a retry would trust and record. So:

- On a FileSystemStorage whose saving is Django's own, the bytes go to an unnamed file in
  the target's folder (Linux `O_TMPFILE`), which is linked to its name once complete and
  synced. A partial file never has a name, and a killed writer leaves nothing behind: the
  kernel frees an unnamed file with its last descriptor. Where `O_TMPFILE` is missing (not
  Linux, or a file system without it), a named temporary file is renamed into place:
  atomic as well, but a kill between the two can leave that temporary file.
- Any other storage (S3 writes whole objects; a subclass that saves its own way) is
  written through its own `save`.
- On every storage, a file already at the name is trusted only when its size is the size
  of the rendered bytes; otherwise it is the leftover of a killed writer and is replaced.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
from pathlib import Path
from typing import TypeGuard

from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage

# os.link() resolves the source through /proc only with linkat(AT_SYMLINK_FOLLOW), which
# CPython uses when a directory descriptor is given: hence dst_dir_fd below.
_PROC_FD = "/proc/self/fd"
# Errors with which open(O_TMPFILE) says that this file system cannot make unnamed files.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
# Attempts to replace a truncated file that keeps reappearing (writers racing at one name).
_LINK_ATTEMPTS = 3


def file_write(storage: Storage, name: str, data: bytes) -> bool:
    """Make `name` hold `data`, unless a complete copy is there already; True if written."""
    if _plain_filesystem(storage):
        return _write_local(storage, name, data)
    return _write_through_storage(storage, name, data)


def _plain_filesystem(storage: Storage) -> TypeGuard[FileSystemStorage]:
    # __class__, not type(): default_storage is a lazy proxy that reports its target's class.
    cls = storage.__class__
    return issubclass(cls, FileSystemStorage) and all(
        getattr(cls, method) is getattr(FileSystemStorage, method) for method in ("save", "_save")
    )


def _write_through_storage(storage: Storage, name: str, data: bytes) -> bool:
    if storage.exists(name):
        if storage.size(name) == len(data):
            return False
        storage.delete(name)  # truncated by a writer that died: never trust it
    saved = storage.save(name, ContentFile(data))
    if saved != name:  # another worker saved it meanwhile; ours is a duplicate
        storage.delete(saved)
        return False
    return True


def _write_local(storage: FileSystemStorage, name: str, data: bytes) -> bool:
    path = Path(storage.path(name))  # storage.path() refuses names outside the storage
    if _complete(path, len(data)):
        return False
    _make_folder(storage, path.parent)
    if not _unnamed_files_supported():
        return _write_renamed(storage, path, data)
    try:
        unnamed = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return _write_renamed(storage, path, data)
        raise
    try:
        _fill(storage, unnamed, data)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return _link(unnamed, folder, path, len(data))
        finally:
            os.close(folder)
    finally:
        os.close(unnamed)


def _link(unnamed: int, folder: int, path: Path, size: int) -> bool:
    """Give the complete unnamed file its name; False if a complete copy got there first."""
    for _ in range(_LINK_ATTEMPTS):
        try:
            os.link(f"{_PROC_FD}/{unnamed}", path.name, dst_dir_fd=folder)
            return True
        except FileExistsError:
            if _complete(path, size):
                return False  # another worker finished the same file first
            path.unlink(missing_ok=True)  # a truncated leftover of a killed writer
    raise FileExistsError(errno.EEXIST, "a partial file keeps reappearing", str(path))


def _write_renamed(storage: FileSystemStorage, path: Path, data: bytes) -> bool:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL and mode 0o666 (less the umask) as FileSystemStorage opens its files.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            _fill(storage, handle, data)
        finally:
            os.close(handle)
        if _complete(path, len(data)):
            return False
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _fill(storage: FileSystemStorage, handle: int, data: bytes) -> None:
    """Write every byte, apply the storage's file mode, and sync before the file is named."""
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view) :]
    if storage.file_permissions_mode is not None:
        os.fchmod(handle, storage.file_permissions_mode)
    # Without it a power loss can leave the name pointing at an empty or partial file; it
    # costs a millisecond or two on a disk, against seconds of encoding per source.
    os.fsync(handle)


def _complete(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _make_folder(storage: FileSystemStorage, folder: Path) -> None:
    """Create `folder` and its parents with the storage's directory mode, as its save does."""
    mode = storage.directory_permissions_mode
    if mode is None:
        folder.mkdir(parents=True, exist_ok=True)
        return
    # Through the umask, so that every created parent gets the mode as well.
    previous = os.umask(0o777 & ~mode)
    try:
        folder.mkdir(mode, parents=True, exist_ok=True)
    finally:
        os.umask(previous)


@functools.cache
def _unnamed_files_supported() -> bool:
    return hasattr(os, "O_TMPFILE") and Path(_PROC_FD).is_dir()
