"""The outbox: how a change asks for work without ever waiting on the broker.

1. In the transaction that changes a row, an `Intent` row records the work (it commits or
   rolls back with the change).
2. After the commit the intent is handed to this process's publisher thread, which
   publishes it at once: the request never touches the broker, so a broker that is down
   or hangs costs a save nothing.
3. The worker deletes the intent when it has done the work (`intent_done`); a message for
   an intent already done is a duplicate and does nothing (`intent_pending`).
4. The relay (`intents_relay`, a beat task every RELAY_AFTER seconds) publishes again what
   no worker took up within RELAY_AFTER: a publish that failed, a process that died before
   publishing, a message the broker lost. Each further publish of one intent waits twice as
   long, so a long backlog gets a few duplicates, not one a minute.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Celery
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from rendition_worker.conf import get_settings
from rendition_worker.models import Intent
from rendition_worker.registry import RegisteredField
from rendition_worker.services import broker

logger = logging.getLogger(__name__)

# How long the publisher thread waits for a broker that hangs, per attempt.
PUBLISH_TIMEOUT = 5.0
# Intents handed to the thread and not yet published; past this they wait for the relay.
MAX_WAITING = 10_000
# Messages the publisher thread sends on one connection.
PUBLISH_BATCH = 500
# Intents the relay publishes per run; it runs again every RELAY_AFTER seconds.
RELAY_BATCH = 1_000
# A waiting intent is published again at most this often, however long it has waited.
RELAY_MAX_INTERVAL = 3600
# What a process still has to publish when it exits gets this long before the relay's turn.
EXIT_FLUSH_SECONDS = 3.0

TASKS = {
    Intent.Action.GENERATE: "rendition_worker.generate",
    Intent.Action.FORGET: "rendition_worker.delete",
}


@dataclass(frozen=True, slots=True)
class Message:
    """A task message to publish: the task's name, its JSON kwargs and the lane."""

    task: str
    kwargs: dict[str, Any]
    lane: str


def intent_new(
    entry: RegisteredField,
    object_id: str,
    name: str | None,
    *,
    overwritten: bool = False,
    retired_original: bool = False,
    force: bool = False,
    lane: str = broker.INTERACTIVE,
) -> Intent:
    """An unsaved intent for the work on `name` ('' or None: forget the row)."""
    now = timezone.now()
    return Intent(
        action=Intent.Action.GENERATE if name else Intent.Action.FORGET,
        lane=lane,
        model=entry.model_label,
        object_id=object_id,
        field=entry.name,
        name=name or "",
        overwritten=overwritten,
        retired_original=retired_original,
        force=force,
        created_at=now,
        due_at=now + timedelta(seconds=get_settings().relay_after),
    )


def intent_record(
    entry: RegisteredField,
    object_id: str,
    name: str | None,
    *,
    using: str,
    force: bool = False,
    lane: str = broker.INTERACTIVE,
) -> Message:
    """In the current transaction: record the work for `name`; the message to publish.

    If the intent cannot be written it is logged and the message goes out without one (the
    reconciliation is the safety net): a failure here never breaks the caller's transaction.
    """
    intent = intent_new(entry, object_id, name, force=force, lane=lane)
    try:
        with savepoint(using):
            intent_insert(intent, using)
    except DatabaseError:
        logger.exception(
            "rendition-worker could not record the work for %s pk=%s field %s; "
            "it is published without a record",
            entry.model_label,
            object_id,
            entry.name,
        )
        intent.pk = None
    return intent_message(intent)


def intent_insert(intent: Intent, using: str) -> None:
    """INSERT the intent (its id set): one statement, no model signals."""
    Intent.objects.using(using).bulk_create([intent])


def work_request(
    entry: RegisteredField,
    object_id: str,
    name: str,
    *,
    force: bool = False,
    lane: str = broker.INTERACTIVE,
    using: str = "default",
) -> None:
    """Ask for the generation of `name` for a row, durably, without waiting on the broker.

    For a person's action (the admin's regenerate): recorded now, published after the
    commit of the current transaction (at once outside one).
    """
    message = intent_record(entry, object_id, name, using=using, force=force, lane=lane)
    transaction.on_commit(functools.partial(publisher.submit, message), using=using, robust=True)


def savepoint(using: str) -> contextlib.AbstractContextManager[object]:
    """A savepoint inside a transaction (our failure must not doom the user's); else nothing.

    In autocommit an INSERT is its own statement: a transaction around it would cost a commit.
    """
    if connections[using].in_atomic_block:
        return transaction.atomic(using=using)
    return contextlib.nullcontext()


def intent_message(intent: Intent) -> Message:
    """The task message that carries out `intent`."""
    kwargs: dict[str, Any] = {
        "model": intent.model,
        "object_id": intent.object_id,
        "field": intent.field,
    }
    if intent.action == Intent.Action.GENERATE:
        kwargs.update(
            name=intent.name,
            force=intent.force,
            overwritten=intent.overwritten,
            retired_original=intent.retired_original,
        )
    if intent.pk is not None:
        kwargs["intent"] = intent.pk
    return Message(TASKS[Intent.Action(intent.action)], kwargs, intent.lane)


def intent_pending(intent_id: int | None) -> bool:
    """Whether the work of a message is still to do (no intent: always)."""
    return intent_id is None or Intent.objects.filter(pk=intent_id).exists()


def intent_done(intent_id: int | None) -> None:
    """The worker has done (or found nothing to do for) the work of this intent."""
    if intent_id is not None:
        Intent.objects.filter(pk=intent_id).delete()


def intents_relay() -> dict[str, int]:
    """Publish again the intents that waited past their due time; stop if the broker is down."""
    settings = get_settings()
    now = timezone.now()
    due = list(Intent.objects.filter(due_at__lte=now).order_by("due_at")[:RELAY_BATCH])
    published: list[Intent] = []
    with broker.broker_connection(PUBLISH_TIMEOUT) as connection:
        errors = broker.broker_errors(connection)
        for intent in due:
            message = intent_message(intent)
            try:
                broker.publish(
                    connection,
                    message.task,
                    message.kwargs,
                    broker.lane_queue(message.lane, settings),
                )
            except errors as exc:
                logger.warning("relay stopped: the broker refused a publish (%s)", exc)
                break
            published.append(intent)
    # One UPDATE per number of earlier attempts (a handful): the next due time doubles.
    by_attempts: dict[int, list[int]] = {}
    for intent in published:
        by_attempts.setdefault(intent.attempts, []).append(intent.pk)
    for attempts, ids in by_attempts.items():
        wait = min(settings.relay_after * 2 ** (attempts + 1), RELAY_MAX_INTERVAL)
        Intent.objects.filter(pk__in=ids).update(
            attempts=attempts + 1, due_at=now + timedelta(seconds=max(wait, settings.relay_after))
        )
    return {"due": len(due), "published": len(published)}


class Publisher:
    """This process's background publisher: a thread and the intents waiting for it."""

    def __init__(self) -> None:
        self._waiting: queue.Queue[tuple[Message, Celery]] = queue.Queue(maxsize=MAX_WAITING)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._outage = False

    def submit(self, message: Message) -> None:
        """Hand a message to the thread (never blocks; past MAX_WAITING the relay has it)."""
        self._ensure_thread()
        try:
            # With the caller's Celery app: the thread's own "current app" is Celery's
            # fallback, not the site's.
            self._waiting.put_nowait((message, broker.the_app()))
        except queue.Full:
            logger.warning(
                "%d messages wait for the broker already; %s waits for the relay",
                MAX_WAITING,
                message.kwargs,
            )

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted message has been published or given up on."""
        deadline = time.monotonic() + timeout
        with self._waiting.all_tasks_done:
            while self._waiting.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._waiting.all_tasks_done.wait(remaining)
        return True

    def _ensure_thread(self) -> None:
        # Started on first use in each process: a thread does not survive a fork (gunicorn's
        # and Celery's prefork children start empty), and the queue is made anew with it.
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                self._waiting = queue.Queue(maxsize=MAX_WAITING)
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="rendition-worker-publisher", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._waiting.get()]
            # Whatever else is waiting goes out on the same connection; a connection per
            # batch, so a restarted broker or a changed broker_url never meets a stale one.
            while len(batch) < PUBLISH_BATCH:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                self._publish(batch)
            finally:
                for _ in batch:
                    self._waiting.task_done()

    def _publish(self, batch: list[tuple[Message, Celery]]) -> None:
        connections_by_app: dict[int, Any] = {}
        try:
            for index, (message, app) in enumerate(batch):
                connection = connections_by_app.get(id(app))
                if connection is None:
                    connection = broker.broker_connection(PUBLISH_TIMEOUT, app)
                    connections_by_app[id(app)] = connection
                try:
                    broker.publish(
                        connection,
                        message.task,
                        message.kwargs,
                        broker.lane_queue(message.lane),
                        app=app,
                    )
                except Exception as exc:
                    # Whatever went wrong, the intents are in the database: the relay
                    # publishes them RELAY_AFTER seconds after they were recorded. Logged
                    # once per outage; the rest of the batch would meet the same broker.
                    if not self._outage:
                        logger.warning(
                            "cannot publish %s and %d more (%s); the relay publishes them "
                            "once the broker is back",
                            message.kwargs,
                            len(batch) - index - 1,
                            exc,
                        )
                    self._outage = True
                    return
            if self._outage:
                logger.warning("the broker takes messages again")
                self._outage = False
        finally:
            for connection in connections_by_app.values():
                with contextlib.suppress(Exception):  # a broken one is dropped anyway
                    connection.release()


publisher = Publisher()
atexit.register(publisher.flush, EXIT_FLUSH_SECONDS)
