"""The beat entries (reconciliation, the outbox's relay), readable before apps are loaded.

A Celery module (`proj/celery.py`) is imported by `celery -A proj beat` before
`django.setup()`, so what it calls at import time must not import models: this module reads
only the settings.
"""

from __future__ import annotations

from typing import Any

from rendition_worker.conf import get_settings


def beat_schedule() -> dict[str, dict[str, Any]]:
    """The beat entries to merge into `app.conf.beat_schedule`.

    Reconciliation every RECONCILE_EVERY s on the bulk lane; the outbox's relay every
    RELAY_AFTER s on the interactive lane (what it publishes is work a person waits for).
    """
    settings = get_settings()
    return {
        "rendition_worker.reconcile": {
            "task": "rendition_worker.reconcile",
            "schedule": float(settings.reconcile_every),
            "options": {"queue": settings.bulk_queue, "expires": settings.reconcile_every},
        },
        "rendition_worker.relay": {
            "task": "rendition_worker.relay",
            "schedule": float(settings.relay_after),
            # A relay not run by the next one's time is superseded by it.
            "options": {"queue": settings.queue, "expires": settings.relay_after},
        },
    }
