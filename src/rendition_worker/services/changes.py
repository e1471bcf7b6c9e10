"""React to a change of a registered field: new, replaced, cleared or deleted row.

The web request pays for two things only. Inside the transaction that changes the row, a
tombstone for a replaced or deleted original (an INSERT in that transaction, so it commits
or rolls back with the change, at no extra commit; whether the file is still referenced is
decided when it falls due). After the commit, one task on the queue. The worker updates
the state rows and retires stale renditions (`state.source_point_at`); lookups cannot serve
stale renditions meanwhile, because their cache keys include the file name.
"""

from __future__ import annotations

import logging

from django.conf import settings as django_settings
from django.db import DatabaseError, transaction

from rendition_worker import registry, tasks
from rendition_worker.conf import get_settings
from rendition_worker.models import Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services.tombstones import tombstones_add

logger = logging.getLogger(__name__)


def original_retire(entry: RegisteredField, old: str, new: str | None, *, using: str) -> bool:
    """In the changing transaction: tombstone the original `old` if it is being replaced.

    Runs in a savepoint, so that a failure is logged and never breaks the user's save.
    """
    if not old or old == new or not get_settings().delete_originals:
        return False
    try:
        with transaction.atomic(using=using):
            tombstones_add(registry.original_storage_ref(entry), [old], Tombstone.Kind.ORIGINAL)
    except DatabaseError:
        logger.exception(
            "rendition-worker could not record %r of %s.%s for deletion; it stays in storage",
            old,
            entry.model._meta.label,
            entry.name,
        )
        if django_settings.DEBUG:
            raise
        return False
    return True


def source_changed(
    entry: RegisteredField,
    object_id: str,
    new: str | None,
    *,
    overwritten: bool = False,
    retired_original: bool = False,
) -> None:
    """After the commit: hand the change of `entry` on row `object_id` to the worker.

    `new` None or '' means the row was deleted or the field cleared. `overwritten`: a new
    file was uploaded under the old name, so every rendition is stale.
    """
    if new:
        tasks.enqueue_generate(
            entry, object_id, new, overwritten=overwritten, retired_original=retired_original
        )
    else:
        tasks.enqueue_forget(entry, object_id)
