"""A pytest plugin: one real Celery worker on real Redis for the run, and the tests' helpers.

The worker is Celery's own test worker (`celery.contrib.testing.worker.start_worker`): a
real consumer on the Redis broker, running in a thread of the test process so that it sees
the test database and the per-test settings. No eager mode, no mocked broker: every task
goes through Redis as JSON.

Loaded once for the whole run by tests/conftest.py (`pytest_plugins`). Its fixtures must not
be imported into a conftest: pytest would register them again there, and a second session
worker would start in the same process on the same app, sharing its connections.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import bootsteps, signals
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from PIL import Image

SERVICES_REQUIRED = os.environ.get("RENDITION_WORKER_REQUIRE_SERVICES") == "1"


class WorkerTracker:
    """Follows the tasks the worker received and finished, to know when it is idle.

    A task scheduled for later than a few seconds (DELETE_DELAY's deletion an hour away)
    is not outstanding: a test waiting for idleness would wait for it.
    """

    def __init__(self) -> None:
        self.controller: Any = None  # the WorkController, once started
        self.lock = threading.Lock()
        self.received: set[str] = set()
        self.finished: set[str] = set()
        self.results: list[tuple[str, Any]] = []
        signals.task_received.connect(self._received, weak=False)
        signals.task_postrun.connect(self._finished, weak=False)

    def _received(self, request: Any = None, **kwargs: Any) -> None:
        eta = getattr(request, "eta", None)
        if eta is not None:
            due = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
            if due > datetime.now(UTC) + timedelta(seconds=5):
                return
        with self.lock:
            self.received.add(request.id)

    def _finished(
        self, task_id: str = "", task: Any = None, retval: Any = None, **kwargs: Any
    ) -> None:
        with self.lock:
            self.finished.add(task_id)
            self.results.append((getattr(task, "name", "?"), retval))

    def check_alive(self) -> None:
        """Fail at once if the worker has stopped: every later wait for it would time out."""
        blueprint = getattr(self.controller, "blueprint", None)
        if blueprint is not None and blueprint.state != bootsteps.RUN:
            pytest.fail("the session's Celery worker has stopped (see its log above)")

    @property
    def outstanding(self) -> int:
        with self.lock:
            return len(self.received - self.finished)


def _broker_reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(django_settings.CELERY_BROKER_URL).ping())
    except redis.RedisError:
        return False


def _missing_service() -> str | None:
    """Why the Django tests cannot run here, or None when Redis (and PostgreSQL) answer."""
    if not _broker_reachable():
        return f"Redis is not reachable at {django_settings.CELERY_BROKER_URL}"
    database = django_settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):
        import psycopg

        try:
            psycopg.connect(
                host=database["HOST"],
                port=database["PORT"],
                user=database["USER"],
                dbname=database["NAME"],
                connect_timeout=3,
            ).close()
        except psycopg.Error as exc:
            return f"PostgreSQL is not reachable at {database['HOST']}:{database['PORT']}: {exc}"
    return None


@pytest.fixture(scope="session")
def services() -> None:
    """Skip the Django tests, saying why, when a service is down; fail when CI requires it."""
    missing = _missing_service()
    if missing is None:
        return
    if SERVICES_REQUIRED:
        pytest.fail(f"{missing} (RENDITION_WORKER_REQUIRE_SERVICES=1)")
    pytest.skip(f"{missing}: start it to run the Django tests (see README)")


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: None, django_db_blocker: Any) -> Iterator[WorkerTracker]:
    """A real Celery worker consuming the test queue on Redis, for the whole session."""
    if not _broker_reachable():
        message = f"Redis is not reachable at {django_settings.CELERY_BROKER_URL}"
        if SERVICES_REQUIRED:
            pytest.fail(message + " (RENDITION_WORKER_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    from celery.contrib.testing.worker import start_worker

    from tests.celery_app import app

    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).delete(*test_queues())
    tracker = WorkerTracker()
    # The worker thread uses the database between tests too (late tasks of the previous
    # test), so database access stays unblocked for the session.
    with (
        django_db_blocker.unblock(),
        start_worker(
            app,
            pool="threads",
            concurrency=2,
            perform_ping_check=False,
            loglevel="WARNING",
            # Both lanes, interactive first, as the README tells a site to run its workers.
            queues=test_queues(),
            shutdown_timeout=60,
        ) as controller,
    ):
        tracker.controller = controller
        yield tracker


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(0.05)


@pytest.fixture
def worker(
    celery_worker: WorkerTracker, transactional_db: None, settings: Any, tmp_path: Path
) -> Iterator[WorkerTracker]:
    """The session worker, with real commits, a fresh MEDIA_ROOT and a clean cache per test."""
    celery_worker.check_alive()
    settings.MEDIA_ROOT = str(tmp_path / "media")
    _clear_this_runs_cache()
    yield celery_worker
    wait_idle(celery_worker)


def _clear_this_runs_cache() -> None:
    # cache.clear() is FLUSHDB: it would wipe the caches of other test runs sharing Redis.
    location = django_settings.CACHES["default"]["LOCATION"]
    prefix = django_settings.CACHES["default"]["KEY_PREFIX"]
    client = redis.Redis.from_url(location)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def test_queues() -> list[str]:
    """The test run's interactive and bulk queues, in the order the worker consumes them."""
    return [django_settings.TEST_QUEUE, django_settings.TEST_BULK_QUEUE]


def flush_publisher(timeout: float = 30) -> None:
    """Wait until this process's outbox publisher has handed every message to the broker."""
    from rendition_worker.services.outbox import publisher

    if not publisher.flush(timeout):
        pytest.fail(f"the outbox publisher did not publish within {timeout:.0f} s")


def wait_idle(tracker: WorkerTracker, timeout: float = 60) -> None:
    """Wait until the queues are empty and the worker has finished what it received."""
    queue = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    flush_publisher()

    def idle() -> bool:
        tracker.check_alive()
        waiting = sum(queue.llen(name) for name in test_queues())
        return waiting == 0 and tracker.outstanding == 0

    wait_for(idle, timeout, "the worker to finish its tasks")


def jpeg_bytes(
    size: tuple[int, int] = (400, 300), color: tuple[int, int, int] = (200, 80, 40)
) -> bytes:
    """A small real JPEG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def upload(data: bytes, name: str = "photo.jpg") -> ContentFile[bytes]:
    """An uploaded file as a form would give it."""
    return ContentFile(data, name=name)


def media_files(root: str | Path, prefix: str = "") -> set[str]:
    """Every file under MEDIA_ROOT (or a prefix of it), as storage names."""
    base = Path(root)
    return {
        str(path.relative_to(base))
        for path in base.rglob("*")
        if path.is_file() and str(path.relative_to(base)).startswith(prefix)
    }


def digest(data: bytes) -> str:
    """The SHA-256 hex digest the worker records for a source of these bytes."""
    return hashlib.sha256(data).hexdigest()


def ready_version(photo: Any, content: bytes, count: int) -> list[Any]:
    """Wait until `photo`'s image is ready with `count` renditions made from exactly `content`."""
    from rendition_worker.models import Rendition, Source, State

    def ready() -> list[Any] | None:
        source = Source.objects.filter(object_id=str(photo.pk), field="image").first()
        if source is None or source.state != State.READY or source.digest != digest(content):
            return None
        rows = list(Rendition.objects.filter(source=source, state=State.READY))
        return rows if len(rows) == count else None

    rows: list[Any] = wait_for(ready, what=f"{count} renditions of {photo.image.name}")
    return rows
