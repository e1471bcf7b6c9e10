"""What the race tests share: a storage that counts source reads, a task log, and writers.

The writers replace one photo's image in a loop; the same code runs in threads of the test
process and, as `python -m tests.django.race_support`, in processes of their own that
reach the test database, media folder and queue through the environment variables
tests/settings.py reads (RENDITION_WORKER_TEST_DB_NAME, _MEDIA_ROOT, _QUEUE, _SETTINGS_JSON).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import signals
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage
from django.db import transaction
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


class SourceReads:
    """How often each source version (storage name, SHA-256 of its bytes) was opened.

    The worker opens a source exactly once per render, after it has won the claim and
    before it decodes (services.generation `_read_source`); nothing else in these tests
    opens an original. So the reads of a version bound the encoder runs on it from above.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, name: str, digest: str) -> None:
        """Count one read of `name` holding bytes with SHA-256 `digest`."""
        with self.lock:
            self.counts[name, digest] += 1

    def clear(self) -> None:
        """Forget every read (between tests)."""
        with self.lock:
            self.counts.clear()

    def of(self, name: str, digest: str | None = None) -> int:
        """Reads of `name` (of that content only, when `digest` is given)."""
        with self.lock:
            return sum(
                count
                for (read, read_digest), count in self.counts.items()
                if read == name and digest in (None, read_digest)
            )

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts."""
        with self.lock:
            return dict(self.counts)


READS = SourceReads()


class CountingStorage(FileSystemStorage):
    """Django's FileSystemStorage that counts every read of a file outside the renditions.

    Only `_open` is overridden: saving stays Django's own, so the worker writes renditions
    through the same path as on a plain FileSystemStorage (services.files).
    """

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        if not name.startswith("renditions/"):
            READS.add(name, hashlib.sha256(Path(self.path(name)).read_bytes()).hexdigest())
        return super()._open(name, mode)


class UnreadableStorage(CountingStorage):
    """CountingStorage whose originals cannot be read: every open fails as a dead disk would."""

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        raise OSError(errno.EIO, "injected read error", name)


class FinishingStorage(CountingStorage):
    """CountingStorage that calls `when_opened` (once) as an original is opened."""

    when_opened: Callable[[], None] | None = None

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        hook = FinishingStorage.when_opened
        if hook is not None and not name.startswith("renditions/"):
            FinishingStorage.when_opened = None
            hook()
        return super()._open(name, mode)


def storages_setting(backend: str = "CountingStorage", **options: Any) -> dict[str, dict[str, Any]]:
    """A STORAGES setting whose default storage is `backend` (of this module) with `options`."""
    return {
        "default": {"BACKEND": f"{__name__}.{backend}", "OPTIONS": options},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


class TaskLog:
    """The generate tasks the in-process worker finished: their arguments and summaries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[dict[str, Any], Any]] = []

    def __call__(self, task: Any = None, kwargs: Any = None, retval: Any = None, **_: Any) -> None:
        """Celery's task_postrun receiver."""
        if getattr(task, "name", "") == "rendition_worker.generate":
            with self.lock:
                self.runs.append((dict(kwargs or {}), retval))

    def connect(self) -> TaskLog:
        """Start recording."""
        signals.task_postrun.connect(self, weak=False)
        return self

    def disconnect(self) -> None:
        """Stop recording."""
        signals.task_postrun.disconnect(self)

    def statuses(self, name: str) -> list[str]:
        """The statuses the tasks for source file `name` returned (exceptions as 'error')."""
        with self.lock:
            return [
                retval.get("status", "?") if isinstance(retval, dict) else "error"
                for kwargs, retval in self.runs
                if kwargs.get("name") == name
            ]

    def summaries(self, name: str) -> list[Any]:
        """What the tasks for source file `name` returned, in the order they finished."""
        with self.lock:
            return [retval for kwargs, retval in self.runs if kwargs.get("name") == name]

    def names(self) -> set[str]:
        """Every source file name a task ran for."""
        with self.lock:
            return {str(kwargs.get("name")) for kwargs, _ in self.runs}


def version_bytes(seed: int, size: tuple[int, int] = (400, 300)) -> bytes:
    """A small real JPEG whose content differs for every seed (0..4095)."""
    color = (seed * 37 % 256, seed * 11 % 256, 40 + seed * 3 % 200)
    image = Image.new("RGB", size, color)
    # A stripe whose place depends on the seed, so that two seeds never encode alike.
    image.paste((255 - color[0], 0, 0), (seed % size[0], 0, seed % size[0] + 3, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def replace_image(pk: int, data: bytes, upload_name: str) -> str:
    """Replace photo `pk`'s image as a careful view would (row locked); the stored name."""
    from tests.testapp.models import Photo

    # select_for_update (on SQLite, the IMMEDIATE transaction) serialises the writers, so
    # each one replaces the file that is really there: no update is lost.
    with transaction.atomic():
        photo = Photo.objects.select_for_update().get(pk=pk)
        photo.image = ContentFile(data, name=upload_name)
        photo.save()
    return str(photo.image.name)


def run_writer(pk: int, writer: int, count: int, seeds: range | None = None) -> list[str]:
    """Replace photo `pk`'s image `count` times at once; the names stored, in order."""
    seeds = seeds if seeds is not None else range(writer * 100, writer * 100 + count)
    return [replace_image(pk, version_bytes(seed), f"w{writer}-v{seed}.jpg") for seed in seeds]


def wait_for_file(path: Path, timeout: float) -> None:
    """Block until `path` exists; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.01)


def writer_environment(
    database: str, media_root: str, queue: str, overrides: dict[str, Any]
) -> dict[str, str]:
    """The environment of a writer process: the test's database, media, queue and settings."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RENDITION_WORKER_TEST_DB_NAME": database,
        "RENDITION_WORKER_TEST_MEDIA_ROOT": media_root,
        "RENDITION_WORKER_TEST_QUEUE": queue,
        "RENDITION_WORKER_TEST_SETTINGS_JSON": json.dumps(overrides),
    }


def writer_command(pk: int, writer: int, count: int, ready: Path, go: Path) -> list[str]:
    """The command line of a writer process."""
    return [
        sys.executable,
        "-m",
        __name__,
        str(pk),
        str(writer),
        str(count),
        str(ready),
        str(go),
    ]


def main(argv: list[str] | None = None) -> None:
    """A writer process: set Django up, say so, wait for the go, replace, print the names."""
    parser = argparse.ArgumentParser(description=__doc__)
    for argument in ("pk", "writer", "count"):
        parser.add_argument(argument, type=int)
    parser.add_argument("ready", type=Path)
    parser.add_argument("go", type=Path)
    args = parser.parse_args(argv)

    import django

    django.setup()
    # The site's Celery app, made current: the handlers publish through it to Redis.
    from django.db import connection

    import tests.celery_app  # noqa: F401

    connection.ensure_connection()  # connect before the go, so that all start together
    args.ready.touch()
    wait_for_file(args.go, 60)
    try:
        names = run_writer(args.pk, args.writer, args.count)
    finally:
        connection.close()
    print(json.dumps(names))


if __name__ == "__main__":
    main()
