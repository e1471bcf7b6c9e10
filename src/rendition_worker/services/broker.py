"""Reach the broker without letting it hang the caller: publish and count with short timeouts.

The tasks go through the user's own Celery app (`current_app`): the reusable app creates
none. Every connection made here has its own socket timeouts, so a broker that is down
fails fast and one that hangs (a half-open connection, a firewall dropping packets) costs
at most `timeout` seconds, not kombu's default of waiting forever.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery
from celery.app import app_or_default
from kombu import Connection
from kombu.exceptions import KombuError

from rendition_worker.conf import RenditionSettings, get_settings

logger = logging.getLogger(__name__)

# What a counting caller (metrics, backpressure) waits at most for a broker that hangs.
COUNT_TIMEOUT = 2.0

# The lanes: what a person waits for, and backfills. Names used in metrics and status.
INTERACTIVE = "interactive"
BULK = "bulk"


def lane_queue(lane: str, settings: RenditionSettings | None = None) -> str:
    """The broker queue of a lane, from the settings."""
    settings = settings or get_settings()
    return settings.bulk_queue if lane == BULK else settings.queue


def the_app() -> Celery:
    """The Celery app of the calling thread (Celery's current app is per thread)."""
    return app_or_default(None)


def broker_connection(timeout: float, app: Celery | None = None) -> Connection:
    """A new connection to the app's broker whose every socket operation gives up in time."""
    app = app or the_app()
    options = {
        **(app.conf.broker_transport_options or {}),
        # Redis (the transport this service runs on) reads these; others ignore them.
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    connection: Connection = app.connection_for_write(
        transport_options=options, connect_timeout=timeout
    )
    return connection


def broker_errors(connection: Connection) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the broker is down, unreachable or refused the operation."""
    return (
        OSError,
        KombuError,  # what kombu re-raises transport errors as (OperationalError)
        *connection.connection_errors,
        *connection.channel_errors,
    )


def publish(
    connection: Connection,
    task: str,
    kwargs: Mapping[str, Any],
    queue: str,
    *,
    app: Celery | None = None,
    countdown: float | None = None,
) -> None:
    """Publish one task message by name on `connection` (raises the broker's errors)."""
    plain = dict(kwargs)
    (app or the_app()).send_task(
        task,
        kwargs=plain,
        # Our own repr of these plain values (what Flower shows): Celery's generic saferepr
        # costs a sixth of a publish.
        kwargsrepr=repr(plain),
        queue=queue,
        connection=connection,
        countdown=countdown,
        # Nothing reads the results; without this send_task subscribes to each one.
        ignore_result=True,
        # One quick retry for a connection that the server closed; then the caller's
        # fallback (the outbox's relay) takes over.
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.1},
    )


def queue_lengths(queues: Iterable[str], timeout: float = COUNT_TIMEOUT) -> dict[str, int] | None:
    """How many messages wait in each queue (not those a worker has reserved); None if down."""
    names = list(dict.fromkeys(queues))
    try:
        with broker_connection(timeout) as connection:
            errors = broker_errors(connection)
            try:
                connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))
                return {name: _length(connection, name) for name in names}
            except errors as exc:
                logger.warning("cannot count the queues on the broker: %s", exc)
                return None
    except OSError as exc:  # closing a connection that never opened
        logger.warning("cannot count the queues on the broker: %s", exc)
        return None


def _length(connection: Connection, queue: str) -> int:
    channel: Any = connection.channel()
    try:
        # passive: count without creating. A queue nobody declared yet holds nothing; Redis
        # says so with NOT_FOUND for an empty (absent) list.
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except connection.channel_errors:
        return 0
    finally:
        try:
            channel.close()
        except connection.channel_errors + connection.connection_errors:
            pass
