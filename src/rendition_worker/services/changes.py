"""React to a change of a registered field: new, replaced, cleared or deleted row.

The web request pays for one thing only: inside the transaction that changes the row, an
INSERT of the work to do (an `Intent`, see `outbox`) and, for a replaced or deleted
original, of its tombstone; they commit or roll back with the change. After the commit the
message is handed to a background publisher: the request never waits on the broker. The
worker updates the state rows and retires stale renditions (`state.source_point_at`);
lookups cannot serve stale renditions meanwhile, because their cache keys include the
file name.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError

from rendition_worker import registry
from rendition_worker.conf import get_settings
from rendition_worker.models import Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services import outbox
from rendition_worker.services.tombstones import tombstones_add

logger = logging.getLogger(__name__)


def change_record(
    entry: RegisteredField,
    object_id: str,
    old: str,
    new: str | None,
    *,
    using: str,
    overwritten: bool = False,
) -> outbox.Message:
    """In the changing transaction: record the work a change of `entry` asks for.

    `new` None or '' means the row was deleted or the field cleared; `overwritten`, that a
    new file was uploaded under the old name. Returns the message to publish after commit.
    A failure is logged and never breaks the user's save.
    """
    retire = bool(old) and old != new and get_settings().delete_originals
    if retire:
        try:
            with outbox.savepoint(using):
                tombstones_add(registry.original_storage_ref(entry), [old], Tombstone.Kind.ORIGINAL)
        except DatabaseError:
            logger.exception(
                "rendition-worker could not record %r of %s.%s for deletion; it stays in storage",
                old,
                entry.model._meta.label,
                entry.name,
            )
            retire = False
    return outbox.intent_record(
        entry,
        object_id,
        new,
        using=using,
        overwritten=overwritten,
        retired_original=retire,
    )


def change_publish(message: outbox.Message) -> None:
    """After the commit: hand the recorded work to the background publisher."""
    outbox.publisher.submit(message)
