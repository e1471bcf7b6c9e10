"""The Celery tasks: thin adapters from JSON arguments to services, with retry policy.

`shared_task`, so the user's own Celery app picks them up (`autodiscover_tasks()`); the
reusable app creates no Celery app. Arguments are ids and names only, never objects.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from django.db import DatabaseError

from rendition_worker.cache import lookup_cache
from rendition_worker.conf import get_settings
from rendition_worker.core.errors import BadMessage
from rendition_worker.messages import checked_message
from rendition_worker.registry import RegisteredField
from rendition_worker.services import broker, outbox
from rendition_worker.services.generation import TransientError, source_fail, source_generate
from rendition_worker.services.reconcile import Reconciler, cursor_problem
from rendition_worker.services.state import source_forget
from rendition_worker.services.tombstones import tombstones_delete

# The task logger: each line carries the task's name and id in the worker's log.
logger = get_task_logger(__name__)
# How long past the soft limit (TIME_LIMIT) the pool kills a task: the soft limit interrupts
# Python code, not a C call, so an encode under way finishes first (an AVIF of 2560 px takes
# a few seconds), and then the task records the failure and gives its claim back.
HARD_LIMIT_GRACE = 30
# How long a claim outlasts the hard time limit of the run that took it. The claim is taken
# after the run starts, so it lapses only once the run is over (killed by the limit, or its
# worker gone); the margin covers clock differences between worker hosts.
CLAIM_MARGIN = 5


class RenditionTask(Task[Any, Any]):
    """The base of our tasks: their time limits come from the TIME_LIMIT setting.

    Read when used, not when the task class is made (that may be before settings are
    loaded): the worker reads them as it starts consuming. Celery's `task_annotations`
    still win, as for any task.
    """

    _limits: tuple[int | None, int | None] = (None, None)

    @property
    def soft_time_limit(self) -> int | None:
        """TIME_LIMIT: the task gets `SoftTimeLimitExceeded`, records it and returns."""
        return self._limits[1] or get_settings().time_limit

    @soft_time_limit.setter
    def soft_time_limit(self, value: int | None) -> None:
        self._limits = (self._limits[0], value)

    @property
    def time_limit(self) -> int | None:
        """HARD_LIMIT_GRACE after TIME_LIMIT: the pool kills the process running the task."""
        return self._limits[0] or get_settings().time_limit + HARD_LIMIT_GRACE

    @time_limit.setter
    def time_limit(self, value: int | None) -> None:
        self._limits = (value, self._limits[1])


# What every task of ours shares. ignore_result: nothing reads task results (summaries reach
# Flower through task events), and storing them costs each publish a result-backend round
# trip. acks_late: a task whose worker dies is delivered again (the tasks are idempotent).
TASK_OPTIONS: dict[str, Any] = {"base": RenditionTask, "ignore_result": True, "acks_late": True}
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
@checked_message
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
    intent: int | None = None,
) -> dict[str, Any]:
    """Generate every required rendition of one source version; returns a small summary."""
    if not _intent_pending(intent):
        # The relay published this intent again while a worker was already on it, and that
        # worker has finished: a duplicate, with nothing left to do.
        return {"status": "duplicate"}
    # The limits this run has: the message's, else the task's (which settings may annotate).
    hard, soft = self.request.timelimit or (None, None)
    settings = get_settings()
    hard_limit = float(hard or self.time_limit or settings.time_limit + HARD_LIMIT_GRACE)
    soft_limit = float(soft or self.soft_time_limit or settings.time_limit)
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
        _intent_done(intent)
        return {"status": "failed", "error": error}
    if summary.get("status") == "gone":
        # Deleted after the change was queued (its own task retires the state), or never was.
        logger.info("%s pk=%s no longer exists: nothing to render", model, object_id[:60])
    if summary.get("retired"):
        enqueue_delete()
    # "claimed": another worker renders this version now and will finish the intent, or
    # its claim lapses and the relay publishes the intent again.
    if summary.get("status") != "claimed":
        _intent_done(intent)
    return summary


@shared_task(
    name="rendition_worker.delete",
    autoretry_for=(OSError, TransientError),
    **TASK_OPTIONS,
    **RETRY_OPTIONS,
)
@checked_message
def delete(
    model: str | None = None,
    object_id: str | None = None,
    field: str | None = None,
    intent: int | None = None,
) -> dict[str, Any]:
    """Retire a deleted or cleared source (when named), then delete the due stale files."""
    summary: dict[str, Any] = {}
    named = [model, object_id, field]
    if any(value is not None for value in named) and None in named:
        raise BadMessage("model, object_id and field come together or not at all")
    if model is not None and object_id is not None and field is not None:
        if not _intent_pending(intent):
            return {"status": "duplicate"}
        summary = source_forget(model, object_id, field)
        _intent_done(intent)
        if get_settings().delete_delay:
            enqueue_delete()  # its files are due only after DELETE_DELAY
            return summary
    summary.update(tombstones_delete())
    if summary["more"]:
        enqueue_delete(countdown=0)
    return summary


def _intent_pending(intent: int | None) -> bool:
    # A database error here is as transient as one inside the service: retried the same way.
    try:
        return outbox.intent_pending(intent)
    except DatabaseError as exc:
        raise TransientError(f"database error reading intent {intent}: {exc}") from exc


def _intent_done(intent: int | None) -> None:
    try:
        outbox.intent_done(intent)
    except DatabaseError as exc:
        # The work is done; the retry finds it done and tries this again.
        raise TransientError(f"database error finishing intent {intent}: {exc}") from exc


def enqueue_generate(
    entry: RegisteredField,
    object_id: str,
    name: str,
    *,
    force: bool = False,
    lane: str = broker.INTERACTIVE,
) -> None:
    """Queue generation of `name` for row `object_id` of `entry`'s model, on `lane`.

    Published at once from the calling process: for the worker's own follow-ups and the
    operator's commands. A web request asks through the outbox instead (`changes`).
    """
    kwargs = {
        "model": entry.model_label,
        "object_id": object_id,
        "field": entry.name,
        "name": name,
        "force": force,
    }
    # Our own repr of these plain strings and booleans (what Flower shows): Celery's
    # generic saferepr costs a sixth of a publish.
    generate.apply_async(kwargs=kwargs, kwargsrepr=repr(kwargs), queue=broker.lane_queue(lane))


def enqueue_backfill(entry: RegisteredField, object_id: str, name: str, force: bool) -> None:
    """`enqueue_generate` on the bulk lane, in the shape the reconciler calls it."""
    enqueue_generate(entry, object_id, name, force=force, lane=broker.BULK)


class PacedBackfill:
    """`enqueue_backfill` that waits while BULK_MAX_QUEUED tasks wait on the bulk lane.

    For the commands, which enqueue from one process for as long as it takes: the lane then
    never holds more than BULK_MAX_QUEUED plus CHECK_EVERY tasks.
    """

    CHECK_EVERY = 100
    POLL_SECONDS = 5.0

    def __init__(self, on_wait: Callable[[int | None], None] | None = None) -> None:
        self.limit = get_settings().bulk_max_queued
        self.on_wait = on_wait
        self.unchecked = self.CHECK_EVERY  # look before the first one
        self.waited = 0.0

    def __call__(self, entry: RegisteredField, object_id: str, name: str, force: bool) -> None:
        """Enqueue one source's generation on the bulk lane, after waiting for room."""
        if self.unchecked >= min(self.CHECK_EVERY, self.limit):
            while (waiting := bulk_waiting()) is None or waiting >= self.limit:
                if self.on_wait is not None:
                    self.on_wait(waiting)
                time.sleep(self.POLL_SECONDS)
                self.waited += self.POLL_SECONDS
            self.unchecked = 0
        enqueue_backfill(entry, object_id, name, force)
        self.unchecked += 1


def enqueue_delete(countdown: int | None = None) -> None:
    """Queue the deletion of due tombstones, after DELETE_DELAY by default."""
    delay = get_settings().delete_delay if countdown is None else countdown
    # One second past the delay: the tombstones written just now are due by then.
    delete.apply_async(queue=get_settings().queue, countdown=delay + 1 if delay else 0)


@shared_task(name="rendition_worker.relay", **TASK_OPTIONS)
@checked_message
def relay() -> dict[str, int]:
    """Publish again the outbox's intents that no worker took up within RELAY_AFTER."""
    return outbox.intents_relay()


# Held (in the CACHE alias) by the reconciliation chain that runs, so that beat starting a
# new one while a long one is still going does not double the work.
RECONCILE_LOCK = "rendition_worker:reconcile:run"


# How long a reconciliation chain waits before it looks at the bulk lane again when
# BULK_MAX_QUEUED tasks wait there (at ~1 s a source on 2 processes, 1,000 tasks last ~8 min).
BACKPRESSURE_WAIT = 15


@shared_task(name="rendition_worker.reconcile", **TASK_OPTIONS)
@checked_message
def reconcile(cursor: dict[str, Any] | None = None, run: str | None = None) -> dict[str, Any]:
    """One bounded step of reconciliation; re-enqueues itself with the next cursor.

    A step may enqueue up to one batch of bulk generation. It runs only while fewer than
    BULK_MAX_QUEUED bulk tasks wait on the broker, so the lane never holds more than that
    plus one batch; otherwise the chain waits BACKPRESSURE_WAIT seconds and looks again.
    """
    # Before the lock: a hand-made cursor must not hold beat's runs off for hours.
    if cursor is not None and (problem := cursor_problem(cursor)) is not None:
        raise BadMessage(f"reconciliation cursor {cursor!r:.200}: {problem}")
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
    if cursor["phase"] == "required":
        waiting = bulk_waiting()
        if waiting is None or waiting >= settings.bulk_max_queued:
            # Unknown (the broker did not answer) counts as full: never flood blindly.
            _continue(cursor, run, countdown=BACKPRESSURE_WAIT)
            return {"phase": cursor["phase"], "status": "waiting", "queued": waiting}
    try:
        counts, following = Reconciler(enqueue=enqueue_backfill).step(cursor)
    except BadMessage:
        cache.delete(RECONCILE_LOCK)  # ours (taken above): its `after` is no key of the model
        raise
    if following is None:
        cache.delete(RECONCILE_LOCK)
    else:
        _continue(following, run)
    return {"phase": cursor["phase"], **counts}


def bulk_waiting() -> int | None:
    """How many tasks wait on the bulk lane now (None: the broker did not answer)."""
    lengths = broker.queue_lengths([get_settings().bulk_queue])
    return None if lengths is None else sum(lengths.values())


def _continue(cursor: dict[str, Any], run: str, countdown: int | None = None) -> None:
    # No expiry: the chain's message may wait behind a full bulk lane for longer than a
    # reconciliation period; a chain replaced meanwhile finds the lock changed and stops.
    reconcile.apply_async(
        kwargs={"cursor": cursor, "run": run},
        queue=get_settings().bulk_queue,
        countdown=countdown,
    )
