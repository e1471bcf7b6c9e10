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
    Both INSERTs (the retired original's tombstone, the intent) share one savepoint: a
    failure is logged, the message goes out without a record, and the save goes on.
    """
    retire = bool(old) and old != new and get_settings().delete_originals
    intent = outbox.intent_new(
        entry, object_id, new, overwritten=overwritten, retired_original=retire
    )
    try:
        with outbox.savepoint(using):
            if retire:
                tombstones_add(registry.original_storage_ref(entry), [old], Tombstone.Kind.ORIGINAL)
            outbox.intent_insert(intent, using)
    except DatabaseError:
        logger.exception(
            "rendition-worker could not record the change of %s pk=%s field %s (%r -> %r); "
            "the old original stays in storage and the work is published without a record",
            entry.model._meta.label,
            object_id,
            entry.name,
            old,
            new,
        )
        intent.pk = None
        intent.retired_original = False
    return outbox.intent_message(intent)


def change_publish(message: outbox.Message) -> None:
    """After the commit: hand the recorded work to the background publisher."""
    outbox.publisher.submit(message)
