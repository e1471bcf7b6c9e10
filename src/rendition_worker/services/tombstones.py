"""Stale files: recorded as durable tombstones first, deleted by a worker once due."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from django.core.exceptions import SuspiciousFileOperation
from django.db import transaction
from django.utils import timezone

from rendition_worker import registry
from rendition_worker.conf import get_settings
from rendition_worker.models import Rendition, Tombstone

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


def rendition_referenced(name: str) -> bool:
    """Whether a rendition row records the file `name` (made again since it went stale)."""
    return Rendition.objects.filter(name=name).exists()


def _referenced(tombstone: Tombstone) -> bool:
    if tombstone.kind == Tombstone.Kind.ORIGINAL:
        return original_referenced(tombstone.name)
    return rendition_referenced(tombstone.name)


def tombstones_delete(limit: int = BATCH_SIZE) -> dict[str, int]:
    """Delete up to `limit` due files; returns counts. Storage errors propagate (retry)."""
    deleted = kept = refused = 0
    due = list(
        Tombstone.objects.filter(delete_after__lte=timezone.now()).order_by("delete_after")[:limit]
    )
    for tombstone in due:
        # Re-checked now, for the file must survive if referenced again: an original's name
        # may have been uploaded again since (S3 with file_overwrite=True), and a rendition's
        # content-addressed name recorded again (the same bytes rendered once more, as when a
        # task that retired every rendition of an overwritten file is delivered twice).
        if _referenced(tombstone):
            kept += 1
        else:
            try:
                registry.storage_for(tombstone.storage).delete(tombstone.name)
            except (SuspiciousFileOperation, ValueError):
                # A name outside the storage or one it cannot hold (a row's name forged by
                # raw SQL): never deleted, and its tombstone dropped, or it would fail every
                # later batch at its head and no stale file would ever be deleted again.
                logger.warning(
                    "refused to delete %r: not a valid name in its storage", tombstone.name
                )
                refused += 1
            else:
                deleted += 1
        with transaction.atomic():
            Tombstone.objects.filter(pk=tombstone.pk).delete()
    remaining = Tombstone.objects.filter(delete_after__lte=timezone.now()).exists()
    return {"deleted": deleted, "kept_referenced": kept, "refused": refused, "more": int(remaining)}
