"""What the benchmarks share: memory readings, throwaway databases, the demo's worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REDIS = "redis://127.0.0.1:6379"
# Worker processes: the machines have 2 cores.
PROCESSES = 2

# The local server the benchmarks create their own databases on (trust auth).
PG_ADMIN: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 5432,
    "user": "postgres",
    "dbname": "postgres",
}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child
    # started by a large parent would report the parent's peak.
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def anonymous_rss_mb() -> float:
    """This process's anonymous resident memory now (heap and mmaps, not library code), MiB."""
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class RssSampler:
    """Sample anonymous RSS every millisecond in a thread; `growth_mb` is the peak's rise.

    `trim=False` leaves the heap as it is, for measuring what a process keeps between steps.

    VmHWM only gives one peak per process; sampling gives the peak of one step of it, and
    anonymous memory leaves out the library code the first call of a codec pages in.
    """

    def __init__(self, interval: float = 0.001, *, trim: bool = True) -> None:
        self._interval = interval
        self._trim = trim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.before_mb = 0.0
        self.peak_mb = 0.0

    @property
    def growth_mb(self) -> float:
        """Peak anonymous RSS while sampling minus the reading at the start."""
        return self.peak_mb - self.before_mb

    def __enter__(self) -> Self:
        if self._trim:
            # Freed buffers stay resident in glibc's heaps and are reused silently: a step
            # measured after a larger one would show no growth at all.
            from rendition_worker.core import heap

            heap.release_free_memory()
        self.before_mb = self.peak_mb = anonymous_rss_mb()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, anonymous_rss_mb())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, anonymous_rss_mb())
            time.sleep(self._interval)


def create_postgres_database(name: str, template: str = "template1") -> None:
    """Create a PostgreSQL database for this run, a copy of `template` (no one connected)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(**PG_ADMIN, autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )


def drop_postgres_database(name: str) -> None:
    """Drop this run's PostgreSQL database, ending any session a worker left behind."""
    import psycopg
    from psycopg import sql

    # FORCE (PostgreSQL 13+): a stopped worker's pool process may still hold a session.
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(**PG_ADMIN, autocommit=True) as connection:
        connection.execute(statement)


@contextmanager
def service_environment(work: Path, name: str = "e2e") -> Iterator[dict[str, str]]:
    """The demo's environment on a throwaway database and private Redis queues (both lanes)."""
    run = uuid.uuid4().hex[:10]
    database = f"rw_bench_{name}_{run}"
    queue = f"renditions-bench-{run}"
    create_postgres_database(database)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "rendition_worker.demo.settings",
        "RENDITION_WORKER_DEMO_HOME": str(work / "home"),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        "CELERY_BROKER_URL": f"{REDIS}/4",
        "CACHE_URL": f"{REDIS}/5",
        "MEDIA_ROOT": str(work / "media"),
        "DJANGO_SECRET_KEY": "benchmark-only",
        "RENDITION_WORKER_QUEUE": queue,
        "RENDITION_WORKER_BULK_QUEUE": f"{queue}.bulk",
    }
    try:
        yield env
    finally:
        import redis

        with suppress(redis.RedisError):
            redis.Redis.from_url(f"{REDIS}/4").delete(queue, f"{queue}.bulk")
        drop_postgres_database(database)


@contextmanager
def worker_process(
    env: dict[str, str], log: Path, queues: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """A prefork Celery worker of 2 processes on `queues`, as compose runs it, once it answers."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "rendition_worker.demo.celery",
        "worker",
        "-Q",
        ",".join(queues),
        "--concurrency",
        str(PROCESSES),
        "--prefetch-multiplier",
        "1",
        "-P",
        "prefork",
        "--loglevel",
        "WARNING",
        "-n",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_ping(env, process)
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_ping(env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
    from rendition_worker.demo.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the worker exited with {process.returncode} before it was ready")
        replies = app.control.inspect(timeout=1.0).ping() or {}
        if replies:
            return
    raise SystemExit("the worker did not answer a ping within 60 s")
