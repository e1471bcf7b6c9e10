"""Point a source's state row at its current file and retire everything made from others."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone

from rendition_worker import cache, registry
from rendition_worker.conf import get_settings
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services.tombstones import original_referenced, tombstones_add


@dataclass(frozen=True, slots=True)
class Retired:
    """What `source_point_at` tombstoned: rendition files and originals."""

    renditions: int
    originals: int


def source_point_at(
    entry: RegisteredField, object_id: str, old: str, new: str, *, overwritten: bool = False
) -> Retired:
    """Make the state of `entry` on row `object_id` follow file `new` ('' = no file, no row).

    Under a lock on the state row (the worker records renditions under the same lock):
    renditions of any other file, or all of them when `overwritten` (a new upload kept the
    name), are deleted and their files tombstoned; so is the original `old` when
    DELETE_ORIGINALS is on and no registered field references it any more.
    """
    settings = get_settings().require_valid()
    content_type = ContentType.objects.get_for_model(entry.model)
    with transaction.atomic():
        source = (
            Source.objects.select_for_update()
            .filter(content_type=content_type, object_id=object_id, field=entry.name)
            .first()
        )
        stale = Rendition.objects.filter(source=source)
        if not overwritten:
            stale = stale.exclude(source_name=new)
        stale_files = [name for name in stale.values_list("name", flat=True) if name]
        stale_versions = set(stale.values_list("source_name", flat=True))
        if source is not None:
            stale_versions.add(source.name)
        stale.delete()
        if not new:
            if source is not None:
                source.delete()
        elif source is None or source.name != new or overwritten:
            Source.objects.update_or_create(
                content_type=content_type,
                object_id=object_id,
                field=entry.name,
                defaults=_pending(new),
            )
        tombstones_add(registry.rendition_storage_ref(entry), stale_files, Tombstone.Kind.RENDITION)
        retire_original = (
            settings.delete_originals and old and old != new and not original_referenced(old)
        )
        originals = [old] if retire_original else []
        tombstones_add(registry.original_storage_ref(entry), originals, Tombstone.Kind.ORIGINAL)
    cache.invalidate(content_type.pk, object_id, entry.name, old, new, *stale_versions)
    return Retired(len(stale_files), len(originals))


def _pending(name: str) -> dict[str, object]:
    # Dropping the claim lets the new version's task start at once; a worker still busy
    # with the old version notices the new name before it records anything.
    return {
        "name": name,
        "digest": "",
        "state": State.PENDING,
        "error": "",
        "width": None,
        "height": None,
        "claim": "",
        "claimed_until": None,
        "enqueued_at": timezone.now(),
        "started_at": None,
        "finished_at": None,
        "render_ms": None,
    }
