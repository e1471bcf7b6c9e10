"""Flower shows rendition-worker's tasks: a real Flower, a real worker with task events.

The demo site's Celery app runs in subprocesses the way the Compose file runs it (Flower with
basic auth from FLOWER_BASIC_AUTH, the worker with `-E`), on a redis-server of this module's
own (so that no other test run's worker takes the tasks) and a SQLite database in a
temporary folder. A photo saved in a one-off process makes the worker generate its
renditions; Flower's HTTP API must then list that `rendition_worker.generate` task as
SUCCESS with arguments a person can read, and refuse requests without the credentials.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import (
    Process,
    Processes,
    answers,
    free_port,
    http_get,
    require_binaries,
    run_once,
    save_photo,
    search_path,
    wait_until,
)

CELERY_APP = "rendition_worker.demo.celery"
CREDENTIALS = f"flower:{secrets.token_hex(12)}"


@dataclass
class Monitored:
    """A worker and the Flower watching it, sharing one broker, database and media folder."""

    env: dict[str, str]
    home: Path
    flower_port: int
    worker_name: str
    worker: Process
    flower: Process

    def api(self, path: str, credentials: str | None = CREDENTIALS) -> Any:
        """GET a Flower URL with the credentials; its JSON."""
        response = http_get(f"http://127.0.0.1:{self.flower_port}{path}", credentials=credentials)
        assert response.status == 200, f"{path}: {response.status} {response.body[:500]!r}"
        return json.loads(response.body)


@pytest.fixture(scope="module")
def monitored(
    processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    """Redis, a migrated demo database, Flower and a worker with task events, all running."""
    require_binaries("redis-server", "celery", "django-admin")
    home = tmp_path_factory.mktemp("flower")
    redis_port = free_port()
    redis = processes.start(
        "redis",
        [
            *("redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(home)),
        ],
        {"PATH": search_path()},
    )
    env = {
        "PATH": search_path(),
        "HOME": str(home),
        "DJANGO_SETTINGS_MODULE": "rendition_worker.demo.settings",
        "RENDITION_WORKER_DEMO_HOME": str(home / "demo"),
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CACHE_URL": f"redis://127.0.0.1:{redis_port}/1",
        "MEDIA_ROOT": str(home / "media"),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        # Flower reads its options from FLOWER_* variables, as in the Compose file.
        "FLOWER_BASIC_AUTH": CREDENTIALS,
        "SVT_LOG": "1",  # SVT-AV1 prints a banner per encode otherwise
    }
    wait_until(
        lambda: (
            run_once(["redis-cli", "-p", str(redis_port), "ping"], env, home).stdout.strip()
            == "PONG"
        ),
        "redis-server",
        processes,
        [redis],
    )
    migrated = run_once(["django-admin", "migrate", "--noinput"], env, home)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    flower_port = free_port()
    flower = processes.start(
        "flower",
        ["celery", "-A", CELERY_APP, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
        env,
        home,
    )
    wait_until(
        lambda: answers(f"http://127.0.0.1:{flower_port}/healthcheck"),
        "Flower to answer",
        processes,
        [flower],
    )
    # Started after Flower answers, so that Flower's event consumer is there before the
    # worker's first events; the unique name tells this worker apart in Flower's lists.
    worker_name = f"flower-test-{os.getpid()}@localhost"
    worker = processes.start(
        "worker",
        [
            *("celery", "-A", CELERY_APP, "worker", "-Q", "renditions", "-c", "1", "-E"),
            *("-n", worker_name, "--loglevel", "INFO"),
        ],
        env,
        home,
    )
    try:
        yield Monitored(env, home, flower_port, worker_name, worker, flower)
    finally:
        processes.close()


def test_flower_lists_generate_tasks_with_readable_arguments(
    monitored: Monitored, processes: Processes
) -> None:
    watch = [monitored.worker, monitored.flower]

    def worker_seen() -> bool:
        listed = monitored.api("/workers?json=1")["data"]
        return any(worker["hostname"] == monitored.worker_name for worker in listed)

    # Flower knows the worker from its events (not from a broadcast inspect).
    wait_until(worker_seen, "Flower to receive the worker's events", processes, watch)
    pk = save_photo(monitored.env, monitored.home)

    def generated() -> list[dict[str, Any]]:
        listed = monitored.api("/api/tasks?taskname=rendition_worker.generate&state=SUCCESS")
        return [
            task
            for task in listed.values()
            if ast.literal_eval(task["kwargs"] or "{}").get("object_id") == str(pk)
        ]

    (task,) = wait_until(generated, f"Flower to show photo {pk}'s generate task", processes, watch)
    assert task["name"] == "rendition_worker.generate"
    assert task["state"] == "SUCCESS"
    assert task["worker"] == monitored.worker_name
    # Arguments are plain values shown as a readable literal: keyword arguments naming the
    # row and the file, never a pickled object.
    assert ast.literal_eval(task["args"] or "()") in ((), [])
    kwargs = ast.literal_eval(task["kwargs"])
    assert kwargs["model"].lower() == "demo.photo"
    assert kwargs["object_id"] == str(pk)
    assert kwargs["field"] == "image"
    assert kwargs["name"].startswith("photos/") and kwargs["name"].endswith(".jpg")
    # The outbox's intent id rides along as a plain integer.
    assert isinstance(kwargs["intent"], int)
    assert all(isinstance(value, str | bool | int) for value in kwargs.values())
    # The task's summary reaches Flower through its succeeded event.
    assert task["result"] and "pickle" not in task["result"].lower()
    assert task["received"] and task["succeeded"] >= task["started"] >= task["received"]


def test_flower_refuses_requests_without_the_credentials(monitored: Monitored) -> None:
    base = f"http://127.0.0.1:{monitored.flower_port}"
    for path in ("/api/tasks", "/api/workers", "/workers", "/tasks"):
        assert http_get(f"{base}{path}").status == 401, path
        assert http_get(f"{base}{path}", credentials="flower:wrong").status == 401, path
    assert http_get(f"{base}/api/tasks", credentials=CREDENTIALS).status == 200
