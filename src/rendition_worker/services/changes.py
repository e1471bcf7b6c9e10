"""React to a committed change of a registered field: new, replaced, cleared or deleted row.

Runs in `on_commit`, so only for changes that happened: the state row follows the new file
(see `state.source_point_at`), then generation and deletion are enqueued.
"""

from __future__ import annotations

from rendition_worker import tasks
from rendition_worker.registry import RegisteredField
from rendition_worker.services.state import source_point_at


def source_changed(
    entry: RegisteredField, object_id: str, old: str, new: str | None, *, overwritten: bool = False
) -> None:
    """Apply a committed change of `entry` on row `object_id`; `new` None means deleted.

    `overwritten`: a new file was uploaded under the old name, so every rendition is stale.
    """
    retired = source_point_at(entry, object_id, old, new or "", overwritten=overwritten)
    if retired.renditions or retired.originals:
        tasks.enqueue_delete()
    if new:
        tasks.enqueue_generate(entry, object_id, new)
