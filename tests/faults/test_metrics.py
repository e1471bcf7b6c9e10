"""The backlog figures, read from a real broker: status --json, `renditions metrics`, the view."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from rendition_worker import tasks
from rendition_worker.registry import field_for
from tests.faults.conftest import Stage, photo_bytes, wait_until
from tests.live_worker import flush_publisher
from tests.testapp.models import Photo


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus-client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _status() -> dict[str, Any]:
    out = io.StringIO()
    call_command("renditions", "status", "--json", stdout=out)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_backlog_per_lane_oldest_pending_and_recent_renders(stage: Stage) -> None:
    # No worker yet: what is saved and enqueued waits on the broker.
    for seed in range(2):
        Photo.objects.create(image=ContentFile(photo_bytes(seed, (300, 200)), f"m{seed}.jpg"))
    flush_publisher()
    entry = field_for("testapp.photo", "image")
    assert entry is not None
    for photo in Photo.objects.all():
        tasks.enqueue_backfill(entry, str(photo.pk), photo.image.name, True)
    time.sleep(0.2)

    status = _status()
    assert status["lanes"] == {
        "interactive": {"queue": stage.queue, "waiting": 2},
        "bulk": {"queue": stage.bulk_queue, "waiting": 2},
    }
    assert status["outbox"]["waiting"] == 2
    assert status["outbox"]["oldest_s"] >= 0.2
    assert status["oldest_pending_s"] >= 0.2
    assert status["renders_last_hour"] == 0

    out = io.StringIO()
    call_command("renditions", "metrics", stdout=out)
    samples = _metrics(out.getvalue())
    lane = "rendition_worker_lane_backlog"
    assert samples[(lane, (("lane", "interactive"), ("queue", stage.queue)))] == 2
    assert samples[(lane, (("lane", "bulk"), ("queue", stage.bulk_queue)))] == 2
    assert samples[("rendition_worker_broker_up", ())] == 1
    assert samples[("rendition_worker_outbox_intents", ())] == 2
    assert samples[("rendition_worker_oldest_pending_seconds", ())] >= 0.2

    # The worker catches up: the backlog is gone and the renders are counted.
    stage.worker()

    def caught_up() -> bool:
        figures = _status()
        return figures["renders_last_hour"] == 2 and figures["outbox"]["waiting"] == 0

    wait_until(caught_up, "the worker to render both photos")
    wait_until(lambda: stage.queued() == 0, "both lanes to drain")
    status = _status()
    assert status["oldest_pending_s"] is None
    assert (status["lanes"]["interactive"]["waiting"], status["lanes"]["bulk"]["waiting"]) == (0, 0)


def test_the_view_is_protected_like_an_admin_page_and_says_when_the_broker_hangs(
    stage: Stage,
) -> None:
    client = Client()
    assert client.get("/metrics").status_code == 401
    User.objects.create_user("viewer", password="secret-1")
    assert (
        client.get("/metrics", HTTP_AUTHORIZATION=_basic("viewer", "secret-1")).status_code == 403
    )
    assert client.get("/metrics", HTTP_AUTHORIZATION=_basic("viewer", "wrong")).status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic !!!").status_code == 401
    viewer = User.objects.get(username="viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_source"))
    response = client.get("/metrics", HTTP_AUTHORIZATION=_basic("viewer", "secret-1"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert _metrics(response.content.decode())[("rendition_worker_broker_up", ())] == 1
    # A signed-in user with the permission needs no header.
    client.force_login(viewer)
    assert client.get("/metrics").status_code == 200

    stage.redis.hang()
    try:
        started = time.perf_counter()
        response = client.get("/metrics")
        waited = time.perf_counter() - started
    finally:
        stage.redis.resume()
    samples = _metrics(response.content.decode())
    assert response.status_code == 200
    assert samples[("rendition_worker_broker_up", ())] == 0
    assert not [key for key in samples if key[0] == "rendition_worker_lane_backlog"]
    assert waited < 10, waited  # the count's own timeouts, not a hang
