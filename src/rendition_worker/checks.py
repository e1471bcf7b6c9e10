"""System checks (`manage.py check`): every misconfiguration, with a hint that says what to do."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.app import app_or_default
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks

from rendition_worker.conf import SETTING, RenditionSettings, get_settings
from rendition_worker.core.encoding import avif_codec_available, encodable_formats
from rendition_worker.registry import resolve_field

# MB a worker process grows by per megapixel of a source it decodes whole: PNG, WebP, TIFF
# and HEIC hold 4.5-6 MB (README, "Memory a worker process needs", measured with
# benchmarks/pipeline.py --breakdown: 556 MB for a 100 MP PNG). The upper end, since
# MAX_PIXELS bounds the worst case; a JPEG much wider than its outputs decodes scaled down.
DECODE_MB_PER_MEGAPIXEL = 6


def register() -> None:
    """Register the checks (called from `AppConfig.ready`)."""
    checks.register(check_settings, "rendition_worker")


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Report every problem of the RENDITION_WORKER setting."""
    settings = get_settings()
    errors: list[checks.CheckMessage] = [
        checks.Error(problem.message, hint=problem.hint, id=problem.id)
        for problem in settings.problems
    ]
    for key in settings.fields:
        try:
            resolve_field(key)
        except LookupError as exc:
            errors.append(
                checks.Error(
                    f"{SETTING}['FIELDS'][{key!r}] cannot be resolved: {exc}",
                    hint="Name an ImageField (or FileField) as 'app_label.Model.field'.",
                    id="rendition_worker.E006",
                )
            )
    available = encodable_formats()
    for set_name, specs in settings.sets.items():
        for spec in specs:
            if spec.format is not None and spec.format not in available:
                errors.append(
                    checks.Error(
                        f"set {set_name!r} asks for {spec.format} ({spec}), which this Pillow "
                        "cannot encode",
                        hint=f"Install a Pillow with {spec.format} support, or drop the format "
                        f"(available: {', '.join(sorted(available))}).",
                        id="rendition_worker.E007",
                    )
                )
    if "avif" in available and not avif_codec_available(settings.avif_codec):
        errors.append(
            checks.Error(
                f"the AVIF codec {settings.avif_codec!r} is not built into pillow-avif-plugin",
                hint="Use AVIF_CODEC 'svt' or 'aom', which the PyPI wheels include.",
                id="rendition_worker.E007",
            )
        )
    errors.extend(_check_aliases(settings.storage, settings.cache))
    errors.extend(check_memory_budget(settings))
    errors.extend(check_lane_order(app_or_default(None)))
    return errors


def check_lane_order(app: Celery) -> list[checks.CheckMessage]:
    """Warn when a Redis broker would make a worker on both lanes take them in turns."""
    url = str(app.conf.broker_url or "")
    if url.split("://", 1)[0] not in {"redis", "rediss", "sentinel"}:
        return []
    strategy = (app.conf.broker_transport_options or {}).get("queue_order_strategy")
    if strategy == "priority":
        return []
    return [
        checks.Warning(
            f"the Celery app {app.main!r} uses Redis with queue_order_strategy "
            f"{strategy or 'round_robin'!r}: a worker consuming both lanes takes them in turns, "
            "so fresh uploads wait behind a backfill",
            hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = {'queue_order_strategy': 'priority'} "
            "and start workers with -Q <QUEUE>,<BULK_QUEUE> in that order.",
            id="rendition_worker.W001",
        )
    ]


def check_memory_budget(settings: RenditionSettings) -> list[checks.CheckMessage]:
    """Warn when decoding a source of MAX_PIXELS needs more than WORKER_MEMORY_BUDGET."""
    needed = settings.max_pixels * DECODE_MB_PER_MEGAPIXEL / 1_000_000
    budget = settings.worker_memory_budget
    if needed <= budget:
        return []
    largest = budget * 1_000_000 // DECODE_MB_PER_MEGAPIXEL
    return [
        checks.Warning(
            f"{SETTING}['MAX_PIXELS'] = {settings.max_pixels:,} lets a worker process decode "
            f"sources that need about {needed:,.0f} MB ({DECODE_MB_PER_MEGAPIXEL} MB per "
            f"megapixel of PNG, WebP, TIFF or HEIC), more than WORKER_MEMORY_BUDGET "
            f"({budget:,} MB)",
            hint=f"Lower MAX_PIXELS to {largest:,} or less, or raise WORKER_MEMORY_BUDGET to "
            f"{math.ceil(needed)} if every worker process (each of --concurrency) has that "
            "much beside its idle RSS, with worker_max_memory_per_child above it.",
            id="rendition_worker.W002",
        )
    ]


def _check_aliases(storage: str | None, cache: str) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    storages = getattr(django_settings, "STORAGES", {})
    if storage is not None and storage not in storages:
        errors.append(
            checks.Error(
                f"{SETTING}['STORAGE'] is {storage!r}, which is not in STORAGES",
                hint=f"Use one of {', '.join(storages) or 'the STORAGES aliases'}, or None.",
                id="rendition_worker.E008",
            )
        )
    caches = getattr(django_settings, "CACHES", {})
    if cache not in caches:
        errors.append(
            checks.Error(
                f"{SETTING}['CACHE'] is {cache!r}, which is not in CACHES",
                hint=f"Use one of {', '.join(caches) or 'the CACHES aliases'}.",
                id="rendition_worker.E008",
            )
        )
    return errors
