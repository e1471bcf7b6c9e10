"""The rendition write path: a kill mid-write leaves no file, a truncated leftover is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage

from rendition_worker.services.files import file_write
from tests.faults.conftest import ROOT, record_fault
from tests.faults.storages import FlakyStorage
from tests.live_worker import wait_for

NAME = "renditions/ab/abcdef0123456789/photo.width-640.format-jpeg.0a1b2c3d.jpg"
# Big enough that the write is still going on when the kill arrives.
BIG = 512 * 2**20

WRITER = f"""
import sys
from django.conf import settings
settings.configure()
from django.core.files.storage import FileSystemStorage
from rendition_worker.services.files import file_write
file_write(FileSystemStorage(location=sys.argv[1]), {NAME!r}, bytes({BIG}))
"""


def _writing_into(pid: int, folder: Path) -> bool:
    """Whether process `pid` has a file in `folder` open (named or not yet named)."""
    try:
        targets = [str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(target.startswith(f"{folder}/") for target in targets)


def test_kill_9_mid_write_leaves_nothing_at_the_final_name(tmp_path: Path) -> None:
    folder = tmp_path / Path(NAME).parent
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT)
    try:
        wait_for(lambda: _writing_into(writer.pid, folder), 30, "the writer to open its file")
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL  # killed, not finished
    assert list(folder.iterdir()) == []
    record_fault("kill -9 inside a 512 MB write", injected=1, landed=1, lost=0, leaked=0)


@pytest.mark.parametrize("storage_class", [FileSystemStorage, FlakyStorage])
def test_a_truncated_file_at_the_name_is_replaced_not_trusted(
    tmp_path: Path, storage_class: type[FileSystemStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # FlakyStorage saves its own way, so it takes the path every other storage takes; its
    # counter is set so that no call fails here.
    monkeypatch.setenv("RENDITION_WORKER_FAULTS_COUNTER", str(tmp_path / "calls"))
    monkeypatch.setenv("RENDITION_WORKER_FAULTS_EVERY", "1000")
    storage = storage_class(location=tmp_path)
    data = os.urandom(100_000)
    path = tmp_path / NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(data[:40_000])  # what a writer killed in the middle left

    assert file_write(storage, NAME, data) is True
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("storage_class", [FileSystemStorage, FlakyStorage])
def test_a_complete_file_at_the_name_is_kept(
    tmp_path: Path, storage_class: type[FileSystemStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENDITION_WORKER_FAULTS_COUNTER", str(tmp_path / "calls"))
    monkeypatch.setenv("RENDITION_WORKER_FAULTS_EVERY", "1000")
    storage = storage_class(location=tmp_path)
    data = os.urandom(10_000)
    assert file_write(storage, NAME, data) is True
    inode = (tmp_path / NAME).stat().st_ino

    assert file_write(storage, NAME, data) is False  # a name never changes content
    assert (tmp_path / NAME).stat().st_ino == inode


def test_the_storage_permissions_apply(tmp_path: Path) -> None:
    storage = FileSystemStorage(
        location=tmp_path, file_permissions_mode=0o640, directory_permissions_mode=0o750
    )
    file_write(storage, NAME, b"rendered")
    assert (tmp_path / NAME).stat().st_mode & 0o777 == 0o640
    for folder in Path(NAME).parents[:-1]:
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o750, folder
