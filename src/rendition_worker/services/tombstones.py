"""Stale files: recorded as durable tombstones first, deleted by a worker once due."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from rendition_worker import registry
from rendition_worker.conf import get_settings
from rendition_worker.models import Rendition, Tombstone
from rendition_worker.services.deletion import Deletion, files_delete

# One delete task handles this many tombstones, then re-enqueues itself if more are due:
# S3 deletes them in one DeleteObjects request (its limit is 1,000 keys), a local disk one
# file at a time at ~1 ms each; the reference checks are one query per registered field.
BATCH_SIZE = 1_000
# Seconds before a file the storage failed to delete is tried again: past a transient error,
# while a denying bucket policy makes every try fail, one try per reconciliation or so.
RETRY_FAILED_AFTER = 300


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


def _referenced_names(due: list[Tombstone]) -> set[tuple[str, str]]:
    """(kind, name) of the due files that a row references again: one query per field."""
    names = {kind: {t.name for t in due if t.kind == kind} for kind in Tombstone.Kind.values}
    found: set[tuple[str, str]] = set()
    renditions = names[Tombstone.Kind.RENDITION]
    if renditions:
        recorded = Rendition.objects.filter(name__in=renditions).values_list("name", flat=True)
        found.update((Tombstone.Kind.RENDITION, name) for name in recorded)
    originals = names[Tombstone.Kind.ORIGINAL]
    for entry in registry.registered_fields() if originals else ():
        column = entry.field.attname
        rows = entry.model._default_manager.filter(**{f"{column}__in": originals})
        found.update(
            (Tombstone.Kind.ORIGINAL, str(name)) for name in rows.values_list(column, flat=True)
        )
    return found


def tombstones_delete(limit: int = BATCH_SIZE) -> dict[str, int]:
    """Delete up to `limit` due files, in batches per storage; returns counts.

    A file the storage failed to delete (a key S3's DeleteObjects reported) keeps its
    tombstone, due again after RETRY_FAILED_AFTER; other storage errors propagate (retry).
    """
    deleted = kept = refused = failed = 0
    due = list(
        Tombstone.objects.filter(delete_after__lte=timezone.now()).order_by("delete_after")[:limit]
    )
    # Re-checked now, for the file must survive if referenced again: an original's name
    # may have been uploaded again since (S3 with file_overwrite=True), and a rendition's
    # content-addressed name recorded again (the same bytes rendered once more, as when a
    # task that retired every rendition of an overwritten file is delivered twice).
    referenced = _referenced_names(due)
    by_storage: dict[str, list[Tombstone]] = {}
    done: list[int] = []
    for tombstone in due:
        if (tombstone.kind, tombstone.name) in referenced:
            kept += 1
            done.append(tombstone.pk)
        else:
            by_storage.setdefault(tombstone.storage, []).append(tombstone)
    _forget(done)
    for storage_ref, group in by_storage.items():
        outcome = Deletion()
        try:
            files_delete(registry.storage_for(storage_ref), [t.name for t in group], outcome)
        finally:
            # Also when the storage raised midway (the task retries): the files deleted so
            # far are forgotten, so that the retry goes on from there. A refused name
            # (outside the storage, forged by raw SQL) is never deleted and its tombstone
            # dropped, or it would fail every later batch and block the ones behind it.
            gone = {*outcome.deleted, *outcome.refused}
            _forget([t.pk for t in group if t.name in gone])
        retry = [t.pk for t in group if t.name in outcome.failed]
        if retry:
            later = timezone.now() + timedelta(seconds=RETRY_FAILED_AFTER)
            Tombstone.objects.filter(pk__in=retry).update(delete_after=later)
        deleted += len(outcome.deleted)
        refused += len(outcome.refused)
        failed += len(retry)
    remaining = Tombstone.objects.filter(delete_after__lte=timezone.now()).exists()
    return {
        "deleted": deleted,
        "kept_referenced": kept,
        "refused": refused,
        "failed": failed,
        "more": int(remaining),
    }


def _forget(pks: list[int]) -> None:
    if pks:
        with transaction.atomic():
            Tombstone.objects.filter(pk__in=pks).delete()
