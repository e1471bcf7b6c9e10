"""The Celery tasks: thin adapters from JSON arguments to services, with retry policy.

`shared_task`, so the user's own Celery app picks them up (`autodiscover_tasks()`); the
reusable app creates no Celery app. Arguments are ids and names only, never objects.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from rendition_worker.cache import lookup_cache
from rendition_worker.conf import get_settings
from rendition_worker.registry import RegisteredField
from rendition_worker.services.generation import TransientError, source_fail, source_generate
from rendition_worker.services.reconcile import Reconciler
from rendition_worker.services.state import source_forget
from rendition_worker.services.tombstones import tombstones_delete

# Rendering a 100 MP source into a dozen renditions takes ~10 s on one core; a minute is
# a generous soft limit, and the hard limit leaves time to give the claim back.
SOFT_TIME_LIMIT = 5 * 60
TIME_LIMIT = SOFT_TIME_LIMIT + 30
# How long a claim outlasts the hard time limit of the run that took it. The claim is taken
# after the run starts, so it lapses only once the run is over (killed by the limit, or its
# worker gone); the margin covers clock differences between worker hosts.
CLAIM_MARGIN = 5


# What every task of ours shares. ignore_result: nothing reads task results (summaries reach
# Flower through task events), and storing them costs each publish a result-backend round
# trip. acks_late: a task whose worker dies is delivered again (the tasks are idempotent).
TASK_OPTIONS: dict[str, Any] = {
    "ignore_result": True,
    "acks_late": True,
    "soft_time_limit": SOFT_TIME_LIMIT,
    "time_limit": TIME_LIMIT,
}
# Storage and database errors are retried with exponential backoff, up to ~2 hours in all.
RETRY_OPTIONS: dict[str, Any] = {
    "retry_backoff": 2,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(
    bind=True,
    name="rendition_worker.generate",
    reject_on_worker_lost=True,
    autoretry_for=(TransientError,),
    **TASK_OPTIONS,
    **RETRY_OPTIONS,
)
def generate(
    self: Task[Any, Any],
    model: str,
    object_id: str,
    field: str,
    name: str,
    force: bool = False,
    retry_failed: bool = False,
    overwritten: bool = False,
    retired_original: bool = False,
) -> dict[str, Any]:
    """Generate every required rendition of one source version; returns a small summary."""
    # The limits this run has: the message's, else the task's (which settings may annotate).
    hard, soft = self.request.timelimit or (None, None)
    hard_limit = float(hard or self.time_limit or TIME_LIMIT)
    soft_limit = float(soft or self.soft_time_limit or SOFT_TIME_LIMIT)
    if retired_original:
        enqueue_delete()
    try:
        summary = source_generate(
            model,
            object_id,
            field,
            name,
            force=force,
            retry_failed=retry_failed,
            overwritten=overwritten,
            claim_seconds=round(hard_limit) + CLAIM_MARGIN,
        )
    except SoftTimeLimitExceeded:
        # Retrying would time out again, at every reconciliation: record it like a bad
        # source, so that it waits for a new file or --retry-failed.
        error = f"rendering took longer than the {soft_limit:g} s time limit"
        source_fail(model, object_id, field, name, error)
        return {"status": "failed", "error": error}
    if summary.get("retired"):
        enqueue_delete()
    return summary


@shared_task(
    name="rendition_worker.delete",
    autoretry_for=(OSError, TransientError),
    **TASK_OPTIONS,
    **RETRY_OPTIONS,
)
def delete(
    model: str | None = None, object_id: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """Retire a deleted or cleared source (when named), then delete the due stale files."""
    summary: dict[str, Any] = {}
    if model is not None and object_id is not None and field is not None:
        summary = source_forget(model, object_id, field)
        if get_settings().delete_delay:
            enqueue_delete()  # its files are due only after DELETE_DELAY
            return summary
    summary.update(tombstones_delete())
    if summary["more"]:
        enqueue_delete(countdown=0)
    return summary


def enqueue_generate(
    entry: RegisteredField,
    object_id: str,
    name: str,
    *,
    force: bool = False,
    overwritten: bool = False,
    retired_original: bool = False,
) -> None:
    """Queue generation of `name` for row `object_id` of `entry`'s model."""
    kwargs = {
        "model": entry.model_label,
        "object_id": object_id,
        "field": entry.name,
        "name": name,
        "force": force,
        "overwritten": overwritten,
        "retired_original": retired_original,
    }
    # Our own repr of these plain strings and booleans (what Flower shows): Celery's
    # generic saferepr costs a sixth of a publish, inside the web request.
    generate.apply_async(kwargs=kwargs, kwargsrepr=repr(kwargs), queue=get_settings().queue)


def enqueue_generation(entry: RegisteredField, object_id: str, name: str, force: bool) -> None:
    """`enqueue_generate` in the shape the reconciler calls it."""
    enqueue_generate(entry, object_id, name, force=force)


def enqueue_forget(entry: RegisteredField, object_id: str) -> None:
    """Queue the retirement of a deleted or cleared source, and its stale files."""
    kwargs = {"model": entry.model_label, "object_id": object_id, "field": entry.name}
    delete.apply_async(kwargs=kwargs, kwargsrepr=repr(kwargs), queue=get_settings().queue)


def enqueue_delete(countdown: int | None = None) -> None:
    """Queue the deletion of due tombstones, after DELETE_DELAY by default."""
    delay = get_settings().delete_delay if countdown is None else countdown
    # One second past the delay: the tombstones written just now are due by then.
    delete.apply_async(queue=get_settings().queue, countdown=delay + 1 if delay else 0)


# Held (in the CACHE alias) by the reconciliation chain that runs, so that beat starting a
# new one while a long one is still going does not double the work.
RECONCILE_LOCK = "rendition_worker:reconcile:run"


@shared_task(name="rendition_worker.reconcile", **TASK_OPTIONS)
def reconcile(cursor: dict[str, Any] | None = None, run: str | None = None) -> dict[str, Any]:
    """One bounded step of reconciliation; re-enqueues itself with the next cursor."""
    settings = get_settings()
    lock_seconds = max(settings.reconcile_every, 60) * 2
    cache = lookup_cache()
    if run is None:
        run = uuid.uuid4().hex
        if not cache.add(RECONCILE_LOCK, run, timeout=lock_seconds):
            return {"status": "already-running"}
    elif cache.get(RECONCILE_LOCK) != run:
        return {"status": "superseded"}
    cache.touch(RECONCILE_LOCK, timeout=lock_seconds)
    cursor = cursor or {"phase": "required"}
    counts, following = Reconciler(enqueue=enqueue_generation).step(cursor)
    if following is None:
        cache.delete(RECONCILE_LOCK)
    else:
        reconcile.apply_async(
            kwargs={"cursor": following, "run": run},
            queue=settings.queue,
            expires=settings.reconcile_every,
        )
    return {"phase": cursor["phase"], **counts}
