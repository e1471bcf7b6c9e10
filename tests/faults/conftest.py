"""Fixtures of the fault tests: workers in their own processes, a private Redis, a fresh database.

The faults are real: SIGKILL on worker processes, a Redis server killed and started again,
the worker's database sessions terminated by PostgreSQL, a storage whose calls fail. So the
worker runs as production runs it (`celery worker -P prefork`, in its own process group),
and shares with the test process, through tests/settings.py's environment variables:

- a PostgreSQL database cloned for each test from a migrated template and dropped after it;
  the test process's default connection points at it meanwhile, in the SQLite run as well;
- a redis-server of this session's own on a free port, broker and cache of both sides (never
  the shared 6379: a test kills and restarts it, and other test runs use that one);
- a MEDIA_ROOT, a queue and the RENDITION_WORKER/Celery settings of the test.

Without PostgreSQL or the redis-server binary the tests skip, saying why; with
RENDITION_WORKER_REQUIRE_SERVICES=1 they fail instead. Every process started here is killed
with its process group in a finalizer, every database dropped.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import redis
from celery import Celery
from celery import _state as celery_state
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connections
from django.utils import timezone
from PIL import Image

from rendition_worker import tasks
from rendition_worker.conf import get_settings
from rendition_worker.models import Rendition, Source, State
from tests.live_worker import wait_for

SERVICES_REQUIRED = os.environ.get("RENDITION_WORKER_REQUIRE_SERVICES") == "1"
ROOT = Path(__file__).resolve().parents[2]
POSTGRES: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 5432,
    "user": os.environ.get("PGUSER", "postgres"),
    "dbname": "test",
}
# What every fault test renders unless it says otherwise: widths large enough that a source
# takes a noticeable moment (a kill can land between two of its renditions), few enough
# that the whole folder stays inside its time budget.
FAULT_SETS = {
    "hero": {"widths": [640, 1280], "formats": ["avif", "webp", "jpeg"]},
    "thumb": {"specs": ["fill-64x64|format-webp"]},
}
SPECS_PER_PHOTO = 7  # hero 2 widths x 3 formats + thumb; Photo.cover stays empty
# Time limits of the worker's tasks in these tests (seconds). A claim lapses shortly after
# the hard limit, so a source whose worker was killed is free again after about that long.
TIME_LIMITS = {"soft_time_limit": 12, "time_limit": 15}
TASKS = ("generate", "delete", "reconcile")

_counter = itertools.count()


# Services ----------------------------------------------------------------------------------


def _missing_service() -> str | None:
    if shutil.which("redis-server") is None:
        return "the redis-server binary is not on PATH (the fault tests run their own Redis)"
    try:
        psycopg.connect(**POSTGRES, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at 127.0.0.1:5432 as {POSTGRES['user']}: {exc}"
    return None


@pytest.fixture(scope="session")
def _services() -> None:
    missing = _missing_service()
    if missing is None:
        return
    if SERVICES_REQUIRED:
        pytest.fail(f"{missing} (RENDITION_WORKER_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(f"{missing}: the fault tests need it")


def postgres_admin(sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on the maintenance database, outside any transaction."""
    with psycopg.connect(**POSTGRES, autocommit=True) as connection:
        cursor = connection.execute(sql.encode(), params or None)
        return cursor.fetchall() if cursor.description else []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of our own, without persistence: killed, it forgets every message."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The server's URL, without a database number."""
        return f"redis://127.0.0.1:{self.port}"

    def client(self, db: int = 0) -> redis.Redis:
        """A client of database `db`."""
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def start(self) -> None:
        """Start it on its port (the same port again after a kill) and wait for PONG."""
        self.starts += 1
        log = self.directory / f"redis-{self.starts}.log"
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
            ],
            start_new_session=True,
        )
        wait_for(self._answers, 20, f"redis-server on port {self.port} (log: {log})")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"redis-server on port {self.port} exited with {self.process.returncode}")
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; queued and unacknowledged messages are gone."""
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a stopped process takes SIGKILL too, but say what we mean
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def hang(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog), nothing answers.

        What a client meets behind a dead NAT or a firewall that drops packets: connections
        that hang, not refused.
        """
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the server answers again, the commands sent meanwhile included."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def private_redis(
    _services: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """This session's own redis-server, stopped at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


# Databases ---------------------------------------------------------------------------------


@contextmanager
def database_named(name: str) -> Iterator[None]:
    """Point the test process's default connection at PostgreSQL database `name` meanwhile.

    Django has no supported way to swap a database under a running process; the connection
    handler's settings are replaced and the old connection closed, and restored afterwards
    (content type ids differ between databases, so their cache is cleared both ways).
    """
    connections["default"].close()
    saved = connections.settings
    connections.settings = connections.configure_settings(
        {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": name,
                "USER": POSTGRES["user"],
                "HOST": POSTGRES["host"],
                "PORT": str(POSTGRES["port"]),
            }
        }
    )
    del connections["default"]
    ContentType.objects.clear_cache()
    try:
        yield
    finally:
        connections["default"].close()
        del connections["default"]
        connections.settings = saved
        ContentType.objects.clear_cache()


@pytest.fixture(scope="session")
def _template_database(_services: None, django_db_blocker: Any) -> Iterator[str]:
    """A migrated database that each test's database is cloned from (cloning takes ~0.1 s)."""
    name = f"rw_faults_{os.getpid()}_template"
    postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        with django_db_blocker.unblock(), database_named(name):
            call_command("migrate", verbosity=0, interactive=False)
        yield name
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fault_database(_template_database: str, django_db_blocker: Any) -> Iterator[str]:
    """A fresh migrated database for one test, which the test process uses; dropped after."""
    name = f"rw_faults_{os.getpid()}_{next(_counter)}"
    postgres_admin(f'CREATE DATABASE "{name}" TEMPLATE "{_template_database}"')
    try:
        with django_db_blocker.unblock(), database_named(name):
            yield name
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_sessions(database: str) -> int:
    """Terminate every session on `database` except the test process's own; how many."""
    own = connections["default"]
    own.ensure_connection()
    with own.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (own_pid,) = cursor.fetchone()
    rows = postgres_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> %s AND pid <> pg_backend_pid()",
        database,
        own_pid,
    )
    return sum(1 for (done,) in rows if done)


# Workers -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc: no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class WorkerProcess:
    """`celery worker -P prefork -c 2` in its own process group, with a log file per start."""

    def __init__(
        self, env: dict[str, str], queues: list[str], directory: Path, concurrency: int = 2
    ):
        self.env = env
        self.queues = queues
        self.directory = directory
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = directory / "worker-0.log"

    def start(self) -> None:
        """Start it and wait until its pool processes are up and it consumes."""
        self.starts += 1
        self.log = self.directory / f"worker-{self.starts}.log"
        command = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker"]
        queues = ",".join(self.queues)
        command += ["-Q", queues, "-c", str(self.concurrency), "-P", "prefork"]
        command += ["--prefetch-multiplier", "1", "--loglevel", "INFO"]
        command += ["-n", f"faults{self.starts}-{os.getpid()}@%h"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, 60, f"the worker to start (log: {self.log})")

    def _ready(self) -> bool:
        self.assert_alive()
        return " ready." in self.log_text() and len(self.children()) >= self.concurrency

    @property
    def pid(self) -> int:
        """The main process's pid."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Whether the main process runs."""
        return self.process is not None and self.process.poll() is None

    def assert_alive(self) -> None:
        """Fail, with the end of its log, if the main process has exited."""
        if not self.alive():
            pytest.fail(f"the worker exited; its log ends:\n{self.log_text()[-3000:]}")

    def children(self) -> list[int]:
        """The pool processes."""
        return _children(self.pid) if self.alive() else []

    def kill_children(self) -> list[int]:
        """SIGKILL every pool process (the main process starts new ones)."""
        killed = []
        for pid in self.children():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        return killed

    def kill(self) -> None:
        """SIGKILL the whole process group: main process and pool, no warm shutdown."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_text(self) -> str:
        """Everything the current run logged."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def all_logs(self) -> str:
        """Everything every run logged."""
        return "".join(
            (self.directory / f"worker-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        )


# The stage: one test's database, media, queue, settings and workers --------------------------


@dataclass
class Stage:
    """What one fault test shares with its workers, and how to start and inspect them."""

    database: str
    redis: RedisServer
    directory: Path
    settings: Any
    queue: str = field(default_factory=lambda: f"faults-{os.getpid()}-{next(_counter)}")
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    app: Celery | None = None

    @property
    def media_root(self) -> Path:
        """The MEDIA_ROOT of both sides."""
        return self.directory / "media"

    @property
    def worker_tmp(self) -> Path:
        """The workers' TMPDIR: whatever a killed worker leaves in it stays visible."""
        return self.directory / "worker-tmp"

    def configure(
        self,
        rendition_worker: dict[str, Any] | None = None,
        celery: dict[str, Any] | None = None,
        worker: dict[str, Any] | None = None,
    ) -> None:
        """Set RENDITION_WORKER keys and Celery settings (lowercase names) for both sides,
        and Django settings for the workers only (`worker`: e.g. a failing storage).

        Applies to the test process now and to every worker started afterwards.
        """
        rendition_worker = {"SETS": FAULT_SETS, **(rendition_worker or {})}
        celery = {
            "task_annotations": {f"rendition_worker.{task}": TIME_LIMITS for task in TASKS},
            # A killed main process leaves its messages unacknowledged in Redis; they are
            # visible again after this long (an hour by default), checked every second.
            "broker_transport_options": {
                "visibility_timeout": 20,
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
                "queue_order_strategy": "priority",
            },
            **(celery or {}),
        }
        self.overrides = {
            "RENDITION_WORKER": {
                **rendition_worker,
                "QUEUE": self.queue,
                "BULK_QUEUE": self.bulk_queue,
            },
            **{f"CELERY_{key.upper()}": value for key, value in celery.items()},
            **(worker or {}),
        }
        settings = self.settings
        settings.MEDIA_ROOT = str(self.media_root)
        ours = self.overrides["RENDITION_WORKER"]
        settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, **ours}
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"{self.redis.url}/3",
                "KEY_PREFIX": f"faults-{os.getpid()}",
            }
        }
        self._publishing_app(celery)

    def _publishing_app(self, celery: dict[str, Any]) -> None:
        """The test process's Celery app: the worker's broker, made current while we run.

        The shared tasks resolve to the current app when called, so the signal handlers and
        `renditions reconcile` publish to the private Redis, not to the session's broker.
        """
        if self.app is not None:
            self.app.close()
        self.app = Celery("faults", set_as_current=False)
        self.app.conf.update(
            broker_url=f"{self.redis.url}/2",
            task_default_queue=self.queue,
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            **celery,
        )
        self.app.set_current()

    def env(self) -> dict[str, str]:
        """The environment of a worker process: tests/settings.py reads these."""
        self.worker_tmp.mkdir(exist_ok=True)
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "RENDITION_WORKER_TEST_DB": "postgres",
            "RENDITION_WORKER_TEST_DB_NAME": self.database,
            "RENDITION_WORKER_TEST_REDIS": self.redis.url,
            "RENDITION_WORKER_TEST_MEDIA_ROOT": str(self.media_root),
            "RENDITION_WORKER_TEST_QUEUE": self.queue,
            "RENDITION_WORKER_TEST_SETTINGS_JSON": json.dumps(self.overrides),
            "TMPDIR": str(self.worker_tmp),
            "SVT_LOG": "1",  # SVT-AV1 prints a banner per encode otherwise
        }

    @property
    def bulk_queue(self) -> str:
        """The bulk lane's queue of this stage."""
        return f"{self.queue}.bulk"

    def worker(
        self, *, start: bool = True, queues: list[str] | None = None, concurrency: int = 2
    ) -> WorkerProcess:
        """A worker process on this stage's lanes (interactive first, as in production, unless
        told otherwise), started unless told otherwise."""
        directory = self.directory / f"worker-{len(self.workers)}"
        directory.mkdir()
        lanes = queues or [self.queue, self.bulk_queue]
        worker = WorkerProcess(self.env(), lanes, directory, concurrency)
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def queued(self) -> int:
        """Messages waiting in both lanes (not those a worker holds)."""
        client = self.redis.client(2)
        return int(client.llen(self.queue)) + int(client.llen(self.bulk_queue))

    def reconcile(self, *flags: str) -> dict[str, Any]:
        """`renditions reconcile --json` in the test process (it enqueues to the workers)."""
        out = io.StringIO()
        call_command("renditions", "reconcile", "--json", *flags, stdout=out)
        report: dict[str, Any] = json.loads(out.getvalue())
        return report

    def close(self) -> None:
        """Kill every worker's process group and give the current app back."""
        for worker in self.workers:
            worker.kill()
        if self.app is not None:
            self.app.close()


@pytest.fixture
def stage(
    fault_database: str,
    private_redis: RedisServer,
    tmp_path: Path,
    settings: Any,
) -> Iterator[Stage]:
    """One test's stage, configured with the defaults (see `Stage.configure`)."""
    previous_app = celery_state.get_current_app()
    if private_redis.process is None or private_redis.process.poll() is not None:
        private_redis.start()  # a test killed it and failed before starting it again
    private_redis.client(2).flushdb()
    stage = Stage(fault_database, private_redis, tmp_path, settings)
    stage.media_root.mkdir()
    stage.configure()
    try:
        yield stage
    finally:
        stage.close()
        previous_app.set_current()


# Photos and what must hold at the end ---------------------------------------------------------


def photo_bytes(seed: int, size: tuple[int, int] = (1800, 1200)) -> bytes:
    """A real 2 MP JPEG: a gradient under noise, different for every seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    across = np.linspace(0, 255, width)[None, :, None] * np.array([1.0, 0.5, 0.2])
    down = np.linspace(0, 255, height)[:, None, None] * np.array([0.2, 0.6, 1.0])
    pixels = np.clip((across + down) / 1.5 + rng.normal(0, 40, (height, width, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def original(photo: Any) -> str:
    """The storage name of a saved photo's image."""
    name = photo.image.name
    assert name, f"{photo!r} has no stored image"
    return str(name)


def all_ready(photos: int, specs: int = SPECS_PER_PHOTO) -> bool:
    """Whether every source is ready with every rendition recorded."""
    return (
        Source.objects.filter(state=State.READY).count() == photos
        and Rendition.objects.filter(state=State.READY).count() == photos * specs
    )


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    """`wait_for` with the fault tests' longer default (claims must lapse first)."""
    return wait_for(condition, timeout, what)


def relay_until(stage: Stage, condition: Callable[[], Any], what: str, timeout: float) -> int:
    """Send the relay as beat does, every RELAY_AFTER seconds, until `condition`; how many."""
    every = get_settings().relay_after  # the stage's settings, the worker's too
    sent = 0
    last = 0.0

    def relayed() -> Any:
        nonlocal sent, last
        value = condition()
        if not value and time.monotonic() - last >= every:
            tasks.relay.apply_async(queue=stage.queue)
            sent, last = sent + 1, time.monotonic()
        return value

    wait_until(relayed, what, timeout=timeout)
    return sent


def stray_files(media_root: Path, originals: set[str]) -> set[str]:
    """Files under MEDIA_ROOT that are neither a live original nor a ready rendition."""
    ready = set(Rendition.objects.filter(state=State.READY).values_list("name", flat=True))
    stored = {str(path.relative_to(media_root)) for path in media_root.rglob("*") if path.is_file()}
    return stored - ready - originals


def damaged_renditions(media_root: Path) -> list[str]:
    """Ready renditions whose file is missing, of another size, or does not decode as recorded."""
    damaged = []
    for name, size, width, height in Rendition.objects.filter(state=State.READY).values_list(
        "name", "size", "width", "height"
    ):
        path = media_root / name
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                decoded = image.size
        except (OSError, SyntaxError) as exc:
            damaged.append(f"{name}: {exc}")
            continue
        if len(data) != size or decoded != (width, height):
            damaged.append(f"{name}: {len(data)} bytes {decoded}, recorded {size} {width}x{height}")
    return damaged


def claims_lapsed() -> bool:
    """Whether no source is claimed: workers are idle, and claims of killed ones have lapsed."""
    return not Source.objects.filter(claimed_until__gt=timezone.now()).exists()


def settle(stage: Stage, photos: int, specs: int = SPECS_PER_PHOTO) -> list[dict[str, Any]]:
    """Do what the beat does after faults, until a reconciliation finds nothing to do.

    Waits for the claims of killed workers to lapse, reconciles (the workers render what it
    enqueues), and repeats; returns every report, the last one with nothing left to do.
    """
    reports: list[dict[str, Any]] = []
    for _ in range(4):
        wait_until(claims_lapsed, "the claims of killed workers to lapse")
        reports.append(stage.reconcile())
        if reports[-1]["enqueued"] == 0 and all_ready(photos, specs):
            return reports
        wait_until(lambda: all_ready(photos, specs), "the reconciled renditions")
    pytest.fail(f"reconciliation kept finding work: {reports}")


def storages(backend: str) -> dict[str, dict[str, str]]:
    """A STORAGES setting whose default storage is `backend`."""
    return {
        "default": {"BACKEND": backend},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


# The figures: one row per fault type, printed at the end of the run ---------------------------


@dataclass(frozen=True)
class FaultFigures:
    """What one fault test injected and what came of it."""

    kind: str
    injected: int
    landed: int
    lost: int
    leaked: int
    note: str = ""


FIGURES: list[FaultFigures] = []


def record_fault(
    kind: str, *, injected: int, landed: int, lost: int, leaked: int, note: str = ""
) -> None:
    """Note a fault test's figures for the summary table (recorded once its checks passed)."""
    FIGURES.append(FaultFigures(kind, injected, landed, lost, leaked, note))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed fault test, show the end of each worker's log: CI keeps nothing else."""
    report = yield
    stage = getattr(item, "funcargs", {}).get("stage")
    if report.when == "call" and report.failed and isinstance(stage, Stage):
        for worker in stage.workers:
            report.sections.append((f"worker log {worker.log.name}", worker.log_text()[-6000:]))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the faults injected, how many landed mid-operation, renditions lost, files leaked."""
    if not FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("faults injected")
    wide = max(40, *(len(row.kind) for row in FIGURES))
    write(f"{'fault':{wide}} {'injected':>8} {'landed':>6} {'lost':>4} {'leaked':>6}  note")
    for row in FIGURES:
        write(
            f"{row.kind:{wide}} {row.injected:8} {row.landed:6} {row.lost:4} {row.leaked:6}  "
            f"{row.note}"
        )
