"""Stale files: recorded as durable tombstones first, deleted by a worker once due."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from rendition_worker import registry
from rendition_worker.conf import get_settings
from rendition_worker.models import Tombstone

logger = logging.getLogger(__name__)

# One delete task handles this many tombstones, then re-enqueues itself if more are due:
# a storage delete is ~1 ms on a local disk and ~20-50 ms on S3, so a batch stays short.
BATCH_SIZE = 200


def tombstones_add(storage_ref: str, names: Iterable[str], kind: str) -> int:
    """Record files to delete after DELETE_DELAY; returns how many were recorded."""
    due = timezone.now() + timedelta(seconds=get_settings().delete_delay)
    rows = [
        Tombstone(storage=storage_ref, name=name, kind=kind, delete_after=due)
        for name in dict.fromkeys(names)
        if name
    ]
    Tombstone.objects.bulk_create(rows)
    return len(rows)


def original_referenced(name: str) -> bool:
    """Whether any row of any registered field still points at the file `name`."""
    return any(
        entry.model._default_manager.filter(**{entry.name: name}).exists()
        for entry in registry.registered_fields()
    )


def tombstones_delete(limit: int = BATCH_SIZE) -> dict[str, int]:
    """Delete up to `limit` due files; returns counts. Storage errors propagate (retry)."""
    deleted = kept = 0
    due = list(
        Tombstone.objects.filter(delete_after__lte=timezone.now()).order_by("delete_after")[:limit]
    )
    for tombstone in due:
        # An original is re-checked now: the same name may have been uploaded again since
        # (S3 with file_overwrite=True), and that new file must survive.
        if tombstone.kind == Tombstone.Kind.ORIGINAL and original_referenced(tombstone.name):
            kept += 1
        else:
            registry.storage_for(tombstone.storage).delete(tombstone.name)
            deleted += 1
        with transaction.atomic():
            Tombstone.objects.filter(pk=tombstone.pk).delete()
    remaining = Tombstone.objects.filter(delete_after__lte=timezone.now()).exists()
    return {"deleted": deleted, "kept_referenced": kept, "more": int(remaining)}
