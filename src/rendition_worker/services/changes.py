"""React to a committed change of a registered field: new, replaced, cleared or deleted row.

Runs in `on_commit` inside the web request, so it does only what must not be lost, and
cheaply: a tombstone for a replaced or deleted original (one INSERT; whether the file is
still referenced is decided when it is due) and one task on the queue. The worker updates
the state rows and retires stale renditions (`state.source_point_at`). Lookups cannot serve
stale renditions meanwhile: their cache keys include the file name.
"""

from __future__ import annotations

from rendition_worker import registry, tasks
from rendition_worker.conf import get_settings
from rendition_worker.models import Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services.tombstones import tombstones_add


def source_changed(
    entry: RegisteredField, object_id: str, old: str, new: str | None, *, overwritten: bool = False
) -> None:
    """Hand a committed change of `entry` on row `object_id` to the worker; `new` None: deleted.

    `overwritten`: a new file was uploaded under the old name, so every rendition is stale.
    """
    retire_original = bool(old) and old != new and get_settings().delete_originals
    if retire_original:
        tombstones_add(registry.original_storage_ref(entry), [old], Tombstone.Kind.ORIGINAL)
    if new:
        tasks.enqueue_generate(
            entry, object_id, new, overwritten=overwritten, retired_original=retire_original
        )
    else:
        tasks.enqueue_forget(entry, object_id)
