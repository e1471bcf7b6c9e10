"""Read renditions: the ready renditions and placeholder of a field's current file.

A lookup is keyed by the source version (`cache.renditions_key`: content type, row, field,
file name), so a replaced image never finds the old image's entry; the write side drops the
entry on every change. One query (the state row joined to its ready renditions) fills one
entry that holds both the renditions and the placeholder, so a page that shows both pays
for one. Only primitives are cached; URLs are built at read time, because a signed storage
URL (S3) expires and must not outlive its page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.contrib.contenttypes.models import ContentType
from django.core.cache import BaseCache
from django.db import models
from django.db.models import FilteredRelation, Q
from django.db.models.fields.files import FieldFile

from rendition_worker import cache, registry
from rendition_worker.conf import get_settings
from rendition_worker.core.encoding import MEDIA_TYPES
from rendition_worker.core.placeholder import Placeholder
from rendition_worker.core.specs import canonical_spec
from rendition_worker.models import Source, State
from rendition_worker.registry import RegisteredField

# Where `prefetch_renditions` leaves its results on each instance:
# {field name: {source file name: entry}}; the file name guards against a field changed since.
PREFETCH_ATTRIBUTE = "_rendition_worker_prefetched"
# A reader's SELECT and its cache write can straddle the worker's last invalidation, which
# would leave a partial list cached until the next change. Partial lists (pending or failed
# sources) are therefore kept only this many seconds: the staleness is bounded, and a page
# of pending images still costs at most one query per this interval.
INCOMPLETE_TIMEOUT = 10

# What the cache holds per rendition, JSON-able: (name, spec, format, width, height, size).
Row = tuple[str, str, str, int, int, int]
_COLUMNS = ("name", "spec", "format", "width", "height", "size")
_JOINED = tuple(f"ready__{column}" for column in _COLUMNS)
# The placeholder, JSON-able: (color, data URI, width, height) of the upright source.
PlaceholderRow = tuple[str, str, int, int]
_PLACEHOLDER_COLUMNS = ("placeholder_color", "placeholder_uri", "width", "height")
# The state row's (state, error) for this version; None while the worker has not recorded it.
StatusRow = tuple[str, str]
# One cached lookup of a source version: its ready renditions, placeholder and state.
Entry = tuple[tuple[Row, ...], PlaceholderRow | None, StatusRow | None]
# What a version nobody has recorded yet looks up as.
_NOTHING: Entry = ((), None, None)

StatusState = Literal["pending", "ready", "failed"]


@dataclass(frozen=True, slots=True)
class RenditionInfo:
    """One ready rendition: its canonical spec, storage name, URL, format, pixels and bytes."""

    spec: str
    name: str
    url: str
    format: str
    width: int
    height: int
    size: int

    @property
    def media_type(self) -> str:
        """The MIME type, as `<source type>` wants it (`image/avif`)."""
        return MEDIA_TYPES[self.format]


@dataclass(frozen=True, slots=True)
class Status:
    """Where the renditions of a field's current file stand; `error` is set when failed."""

    state: StatusState
    error: str = ""


def registered_field(fieldfile: FieldFile) -> RegisteredField:
    """The registered field a fieldfile belongs to; `ValueError` naming it otherwise."""
    if not isinstance(fieldfile, FieldFile):
        raise TypeError(f"expected a FieldFile (obj.image), not {type(fieldfile).__name__}")
    return _entry_for(type(fieldfile.instance), fieldfile.field.name)


def field_entry(model: type[models.Model], field_name: str) -> RegisteredField:
    """The registered field `field_name` of `model`; `ValueError` naming it otherwise."""
    return _entry_for(model, field_name)


def get_renditions(fieldfile: FieldFile) -> dict[str, RenditionInfo]:
    """The ready renditions of the field's current file, keyed by canonical spec."""
    entry = registered_field(fieldfile)
    name = fieldfile.name or ""
    instance = fieldfile.instance
    if not name or instance.pk is None:
        return {}
    rows, _, _ = _entry(entry, instance, name)
    return _infos(entry, rows)


def get_placeholder(fieldfile: FieldFile) -> Placeholder | None:
    """The current file's placeholder (colour, blurred preview, upright size), or None.

    None for an empty field and until the worker has started on this file (it records the
    placeholder before the first rendition). Served by the same cached lookup, and the
    same prefetch, as `get_renditions`.
    """
    entry = registered_field(fieldfile)
    name = fieldfile.name or ""
    instance = fieldfile.instance
    if not name or instance.pk is None:
        return None
    _, placeholder, _ = _entry(entry, instance, name)
    return Placeholder(*placeholder) if placeholder is not None else None


def get_rendition(fieldfile: FieldFile, spec: str) -> RenditionInfo | None:
    """One ready rendition of the current file, or None; `ValueError` for a spec not in its sets."""
    entry = registered_field(fieldfile)
    canonical = canonical_spec(spec)  # InvalidSpec is a ValueError
    required = [str(required) for required in get_settings().specs_for(entry.key)]
    if canonical not in required:
        sets = ", ".join(get_settings().fields.get(entry.key, ())) or "none"
        raise ValueError(
            f"spec {canonical!r} is not in the sets of {entry.key} (its sets: {sets}); "
            "only configured specs are ever generated"
        )
    return get_renditions(fieldfile).get(canonical)


def get_status(fieldfile: FieldFile) -> Status:
    """The state of the current file's renditions: pending, ready or failed (with its error).

    An empty field is ready: there is nothing to render. A file the worker has not recorded
    yet (no state row, or one for another file) is pending.
    """
    entry = registered_field(fieldfile)
    name = fieldfile.name or ""
    instance = fieldfile.instance
    if not name:
        return Status("ready")
    if instance.pk is None:
        return Status("pending")
    # Served by the same cached lookup (and prefetch) as the renditions: a list of many
    # statuses costs no query per row.
    _, _, recorded = _entry(entry, instance, name)
    if recorded is None:
        return Status("pending")
    state, error = recorded
    if state == State.READY:
        return Status("ready")
    if state == State.FAILED:
        return Status("failed", error)
    return Status("pending")


def prefetch_renditions(objects: Iterable[models.Model], field_name: str) -> None:
    """Load the renditions of `field_name` for many objects at once, in O(1) queries.

    One cache round trip, then at most one query per model for the misses (none when the
    cache is warm). The results are attached to the instances, so `get_renditions` (and
    the template tags) on them cost nothing more. A QuerySet is evaluated, filling its
    result cache: render that same QuerySet. Instances whose field was deferred are left
    alone.
    """
    groups: dict[type[models.Model], list[models.Model]] = {}
    for instance in objects:
        concrete = instance._meta.concrete_model or type(instance)
        groups.setdefault(concrete, []).append(instance)
    for model, instances in groups.items():
        _prefetch(_entry_for(model, field_name), instances)


def _entry_for(model: type[models.Model], field_name: str) -> RegisteredField:
    for entry in registry.fields_of(model):
        if entry.name == field_name:
            return entry
    raise ValueError(
        f"{model._meta.label}.{field_name} is not a registered field; "
        "add it to RENDITION_WORKER['FIELDS'] to read its renditions"
    )


def _entry(entry: RegisteredField, instance: models.Model, name: str) -> Entry:
    loaded: dict[str, dict[str, Entry]] = instance.__dict__.get(PREFETCH_ATTRIBUTE, {})
    prefetched = loaded.get(entry.name, {}).get(name)
    if prefetched is not None:
        return prefetched
    return _lookup(entry, str(instance.pk), name)


def _lookup(entry: RegisteredField, object_id: str, name: str) -> Entry:
    content_type = ContentType.objects.get_for_model(entry.model)
    key = cache.renditions_key(content_type.pk, object_id, entry.name, name)
    store = cache.lookup_cache()
    # Only None is a miss; an entry with no renditions is a cached "none ready".
    cached: Entry | None = store.get(key)
    if cached is not None:
        return cached
    loaded = _load(content_type, [object_id], entry.name)
    found = loaded.get((object_id, name), _NOTHING)
    store.set(key, found, _timeout(store, entry, found))
    return found


def _load(
    content_type: ContentType, object_ids: Iterable[str], field: str
) -> dict[tuple[str, str], Entry]:
    """The entries of these rows' field, keyed (object id, file name), in one query.

    A version's renditions are those made from the file its state row follows; so are its
    placeholder and state. Rows of a file the state does not follow yet have no entry.
    """
    joined = (
        Source.objects.filter(
            content_type=content_type, object_id__in=list(object_ids), field=field
        )
        .annotate(ready=FilteredRelation("renditions", condition=Q(renditions__state=State.READY)))
        .values_list(
            "object_id",
            "name",
            "state",
            "error",
            *_PLACEHOLDER_COLUMNS,
            "ready__source_name",
            *_JOINED,
        )
    )
    rows: dict[tuple[str, str], list[Row]] = {}
    placeholders: dict[tuple[str, str], PlaceholderRow | None] = {}
    statuses: dict[tuple[str, str], StatusRow] = {}
    for object_id, name, state, error, color, uri, width, height, made_from, *values in joined:
        version = (object_id, name)
        statuses[version] = (state, error)
        complete = bool(color and uri and width and height)
        placeholders[version] = (color, uri, width, height) if complete else None
        collected = rows.setdefault(version, [])
        if made_from == name and values[0]:  # renditions of another file are not current
            collected.append(_row(values))
    return {
        version: (tuple(rows[version]), placeholders[version], statuses[version])
        for version in rows
    }


def _prefetch(entry: RegisteredField, instances: Sequence[models.Model]) -> None:
    versions: dict[tuple[str, str], list[models.Model]] = {}
    for instance in instances:
        name = registry.file_name(instance, entry)
        if name and instance.pk is not None:
            versions.setdefault((str(instance.pk), name), []).append(instance)
    if not versions:
        return
    content_type = ContentType.objects.get_for_model(entry.model)
    keys = {
        version: cache.renditions_key(content_type.pk, version[0], entry.name, version[1])
        for version in versions
    }
    store = cache.lookup_cache()
    cached = store.get_many(keys.values())
    found: dict[tuple[str, str], Entry] = {
        version: cached[key] for version, key in keys.items() if key in cached
    }
    missing = [version for version in versions if version not in found]
    if missing:
        loaded = _load(content_type, {object_id for object_id, _ in missing}, entry.name)
        # Empty results are cached too, so that a warm page costs no query at all.
        by_timeout: dict[float | None, dict[str, Entry]] = {}
        for version in missing:
            value = loaded.get(version, _NOTHING)
            found[version] = value
            by_timeout.setdefault(_timeout(store, entry, value), {})[keys[version]] = value
        for timeout, entries in by_timeout.items():
            store.set_many(entries, timeout)
    for version, holders in versions.items():
        for instance in holders:
            loaded_here = instance.__dict__.setdefault(PREFETCH_ATTRIBUTE, {})
            loaded_here.setdefault(entry.name, {})[version[1]] = found[version]


def _row(values: Sequence[Any]) -> Row:
    name, spec, fmt, width, height, size = values
    # Ready rows always carry their dimensions and size; 0 keeps the type honest if not.
    return (name, spec, fmt, width or 0, height or 0, size or 0)


def _timeout(store: BaseCache, entry: RegisteredField, found: Entry) -> float | None:
    rows, _, recorded = found
    required = {str(spec) for spec in get_settings().specs_for(entry.key)}
    # Complete only once the state says so too: every rendition can be there a moment
    # before the worker records the source as ready.
    ready = recorded is not None and recorded[0] == State.READY
    if ready and required <= {row[1] for row in rows}:
        return store.default_timeout
    if store.default_timeout is None:
        return INCOMPLETE_TIMEOUT
    return min(store.default_timeout, INCOMPLETE_TIMEOUT)


def _infos(entry: RegisteredField, rows: Sequence[Row]) -> dict[str, RenditionInfo]:
    if not rows:
        return {}
    storage = registry.storage_for(registry.rendition_storage_ref(entry))
    order = {str(spec): index for index, spec in enumerate(get_settings().specs_for(entry.key))}
    # In the field's configured spec order, so that callers iterating the dict see sets in order.
    ordered = sorted(rows, key=lambda row: (order.get(row[1], len(order)), row[1]))
    return {
        spec: RenditionInfo(spec, name, storage.url(name), fmt, width, height, size)
        for name, spec, fmt, width, height, size in ordered
    }
