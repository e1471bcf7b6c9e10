"""What the benchmarks share: memory readings and throwaway PostgreSQL databases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
