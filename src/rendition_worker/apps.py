"""The Django app: wires signals and checks once, when the app registry is ready."""

from __future__ import annotations

from django.apps import AppConfig


class RenditionWorkerConfig(AppConfig):
    """rendition-worker's AppConfig."""

    name = "rendition_worker"
    verbose_name = "Renditions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the model signal handlers and register the system checks."""
        # Models and the settings they read exist only once the app registry is ready.
        from rendition_worker import checks, handlers  # noqa: PLC0415

        checks.register()
        handlers.connect()
