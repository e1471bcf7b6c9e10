"""The beat entry of the periodic reconciliation, readable before Django's apps are loaded.

A Celery module (`proj/celery.py`) is imported by `celery -A proj beat` before
`django.setup()`, so what it calls at import time must not import models: this module reads
only the settings.
"""

from __future__ import annotations

from typing import Any

from rendition_worker.conf import get_settings


def beat_schedule() -> dict[str, dict[str, Any]]:
    """The beat entry to merge into `app.conf.beat_schedule` (every RECONCILE_EVERY s)."""
    settings = get_settings()
    return {
        "rendition_worker.reconcile": {
            "task": "rendition_worker.reconcile",
            "schedule": float(settings.reconcile_every),
            "options": {"queue": settings.queue, "expires": settings.reconcile_every},
        }
    }
