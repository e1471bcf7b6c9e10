"""Point a source's state row at its current file and retire everything made from others."""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.utils import timezone

from rendition_worker import cache, registry
from rendition_worker.conf import get_settings
from rendition_worker.core.naming import source_key, source_prefix
from rendition_worker.core.planner import SourceRef
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.registry import RegisteredField
from rendition_worker.services.tombstones import tombstones_add


def source_point_at(
    entry: RegisteredField,
    object_id: str,
    new: str,
    *,
    overwritten: bool = False,
    digest: str = "",
) -> int:
    """Make the state of `entry` on row `object_id` follow file `new` ('' = no file, no row).

    Under a lock on the state row (the worker records renditions under the same lock), the
    renditions of any other file, or all of them when `overwritten` (a new upload kept the
    name), are deleted and their files tombstoned. Returns how many files were tombstoned.
    `digest`: the SHA-256 of the overwritten file's bytes. If the row is ready for those very
    bytes, nothing is stale and nothing changes; otherwise what was made from them stays.
    """
    content_type = ContentType.objects.get_for_model(entry.model)
    with transaction.atomic():
        source = (
            Source.objects.select_for_update()
            .filter(content_type=content_type, object_id=object_id, field=entry.name)
            .first()
        )
        if (
            overwritten
            and digest
            and source is not None
            and (source.name, source.digest, source.state) == (new, digest, State.READY)
        ):
            # Decided under the lock: another task of the same upload may have finished
            # these bytes since the caller last looked at the row.
            return 0
        stale = Rendition.objects.filter(source=source)
        if not overwritten:
            stale = stale.exclude(source_name=new)
        elif digest:
            # A duplicate task may be rendering these bytes: its renditions are what this
            # upload's render would write again under the same names (content-addressed),
            # and tombstones on those names would delete the files rewritten after them.
            key = source_key(SourceRef(entry.model_label, object_id, entry.name).identity, digest)
            same_bytes = source_prefix(get_settings().path, key)
            stale = stale.exclude(source_name=new, name__startswith=same_bytes)
        stale_files = [name for name in stale.values_list("name", flat=True) if name]
        stale_versions = set(stale.values_list("source_name", flat=True))
        if source is not None:
            stale_versions.add(source.name)
        stale.delete()
        if not new:
            if source is not None:
                source.delete()
        elif source is None:
            try:
                with transaction.atomic():
                    Source.objects.create(
                        content_type=content_type,
                        object_id=object_id,
                        field=entry.name,
                        **_pending(new),
                    )
            except IntegrityError:
                # Two first tasks for one source raced; the winner's row (and claim) stands.
                pass
        elif source.name != new or overwritten:
            Source.objects.filter(pk=source.pk).update(**_pending(new))
        tombstones_add(registry.rendition_storage_ref(entry), stale_files, Tombstone.Kind.RENDITION)
    cache.invalidate(content_type.pk, object_id, entry.name, new, *stale_versions)
    return len(stale_files)


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
        # A focal point, subject and placeholder belong to one file: a new one starts over.
        "focal_point": None,
        "subject": None,
        "placeholder_color": "",
        "placeholder_uri": "",
    }


def source_forget(model_label: str, object_id: str, field: str) -> dict[str, int | str]:
    """After a row was deleted or its field cleared: retire its renditions and state row.

    The row is read again first: if it has a file by now (cleared, then set again before
    this ran), the generation task of that file owns the state and nothing is retired.
    """
    entry = registry.field_named(model_label, field)
    instance = registry.row_for(entry, object_id)
    if instance is not None and registry.file_name(instance, entry):
        return {"status": "has-file"}
    return {"status": "forgotten", "retired": source_point_at(entry, object_id, "")}
