"""The demo's Celery app, for `celery -A rendition_worker.demo.celery worker` and `beat`.

Configured the way DESIGN.md tells users to configure theirs: from Django's settings under
the CELERY_ namespace, tasks autodiscovered, and rendition-worker's beat entry merged in.
"""

from __future__ import annotations

import os

from celery import Celery

import rendition_worker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rendition_worker.demo.settings")

app = Celery("rendition_worker.demo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.conf.beat_schedule = {**app.conf.beat_schedule, **rendition_worker.beat_schedule()}
