"""Set or clear the focal point of a field's current file, and re-render only its crops.

The box is stored on the source's state row, so it belongs to that file alone (a new file
starts without one). Cropping renditions carry the box in their names, so after a change
the worker finds exactly those out of date: it renders them under new names, asked for
through the outbox on the interactive lane, and tombstones the old files (DELETE_DELAY
applies); the others stay.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from rendition_worker import cache
from rendition_worker.core.focal import parse_focal_box
from rendition_worker.models import Source, State
from rendition_worker.services import outbox
from rendition_worker.services.lookups import registered_field
from rendition_worker.services.state import source_point_at


def set_focal_point(fieldfile: FieldFile, box: Sequence[float] | None) -> bool:
    """Set (or, with None, clear) the subject box of the field's current file.

    `box` is `(x, y, width, height)` in fractions of the upright image. Returns whether it
    changed; a change queues a render of the cropping renditions (fill-*, min-*) after the
    transaction commits. `TypeError`/`ValueError` for a malformed box, an unregistered
    field, an empty field, an unsaved row, or a file that is no longer the row's.
    """
    focal = parse_focal_box(box) if box is not None else None
    entry = registered_field(fieldfile)
    instance = fieldfile.instance
    label = f"{entry.key} of {type(instance).__name__} pk={instance.pk!r}"
    name = fieldfile.name or ""
    if not name:
        raise ValueError(f"{label} is empty: there is no image to set a focal point on")
    if instance.pk is None:
        raise ValueError(f"{label}: save the row before setting a focal point on its image")
    object_id = str(instance.pk)
    stored = (
        entry.model._default_manager.filter(pk=instance.pk)
        .values_list(entry.field.attname, flat=True)
        .first()
    )
    if stored != name:
        # The focal point is of one picture: never put it on another one by mistake.
        raise ValueError(
            f"{label} holds {stored!r} in the database, not {name!r}: save the new image "
            "first, or load the row again"
        )
    content_type = ContentType.objects.get_for_model(entry.model)
    value = focal.as_list() if focal is not None else None
    with transaction.atomic():
        rows = Source.objects.select_for_update().filter(
            content_type=content_type, object_id=object_id, field=entry.name
        )
        source = rows.first()
        if source is None or source.name != name:
            # The worker has not taken this file up yet: the state follows it from now on.
            source_point_at(entry, object_id, name)
            source = rows.get()
        if source.focal_point == value:
            return False
        changes: dict[str, object] = {"focal_point": value}
        if source.state != State.FAILED:  # a source that cannot be decoded has no crops
            # Dropping the claim stops a worker still placing crops the old way before it
            # records any (it checks its claim under the row lock), and frees the source
            # for the new render at once.
            changes.update(
                state=State.PENDING, claim="", claimed_until=None, enqueued_at=timezone.now()
            )
            # Durably, in this transaction, on the interactive lane: a person waits for it.
            outbox.work_request(entry, object_id, name)
        Source.objects.filter(pk=source.pk).update(**changes)
    cache.invalidate(content_type.pk, object_id, entry.name, name)
    return True
