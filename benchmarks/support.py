"""What the benchmarks share: memory readings and throwaway PostgreSQL databases."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc), so that growth is new memory."""
    # Freed buffers stay resident in glibc's heaps and are reused silently: a step measured
    # after a larger one would show no growth at all.
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


class RssSampler:
    """Sample anonymous RSS every millisecond in a thread; `growth_mb` is the peak's rise.

    VmHWM only gives one peak per process; sampling gives the peak of one step of it, and
    anonymous memory leaves out the library code the first call of a codec pages in.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.before_mb = 0.0
        self.peak_mb = 0.0

    @property
    def growth_mb(self) -> float:
        """Peak anonymous RSS while sampling minus the reading at the start."""
        return self.peak_mb - self.before_mb

    def __enter__(self) -> Self:
        release_free_memory()
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
    """Drop this run's PostgreSQL database (Django's connections must be closed)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(**PG_ADMIN, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
