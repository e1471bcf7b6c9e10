"""The demo site's Django app (label `demo`)."""

from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo's AppConfig: Photo, its admin, views and templates."""

    name = "rendition_worker.demo"
    label = "demo"
    verbose_name = "Demo gallery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Load the demo's Celery app, so that saves in any process publish through it."""
        # Django's usual place for this is the project package's __init__; the demo's web
        # process, shell and launcher all load this app, and an unconfigured default Celery
        # app would try to publish to amqp://localhost instead.
        from rendition_worker.demo import celery  # noqa: F401, PLC0415
