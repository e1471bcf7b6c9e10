"""A field's renditions as plain data: what an API serves for one image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db.models.fields.files import FieldFile

from rendition_worker.conf import get_settings
from rendition_worker.services.lookups import (
    get_placeholder,
    get_renditions,
    get_status,
    registered_field,
)


def known_sets(fieldfile_or_key: FieldFile | str) -> tuple[str, ...]:
    """The set names configured for a registered field (a fieldfile or `app.Model.field`)."""
    key = (
        fieldfile_or_key
        if isinstance(fieldfile_or_key, str)
        else registered_field(fieldfile_or_key).key
    )
    return tuple(get_settings().fields.get(key, ()))


def check_sets(key: str, sets: Sequence[str]) -> None:
    """`ValueError` naming any of `sets` that `key`'s field is not configured with."""
    known = known_sets(key)
    unknown = [name for name in sets if name not in known]
    if unknown:
        raise ValueError(
            f"{key} has no set {', '.join(map(repr, unknown))}; "
            f"its sets: {', '.join(known) or 'none'}"
        )


def renditions_data(
    fieldfile: FieldFile,
    sets: Sequence[str] | None = None,
    absolute: Callable[[str], str] = str,
) -> dict[str, Any] | None:
    """`{"state", "width", "height", "original", "placeholder", "sets"}`; None when empty.

    `sets` defaults to every set of the field; each lists, per format in the order the set
    makes them, its ready renditions by width (none while pending or failed). `width` and
    `height` are the upright source's, known once the worker has started on it. `absolute`
    turns a URL into the one to serve (e.g. `request.build_absolute_uri`).
    """
    entry = registered_field(fieldfile)
    chosen = tuple(sets) if sets is not None else known_sets(entry.key)
    check_sets(entry.key, chosen)
    if not fieldfile:
        return None
    ready = get_renditions(fieldfile)
    placeholder = get_placeholder(fieldfile)
    by_set: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for set_name in chosen:
        formats: dict[str, list[dict[str, Any]]] = {}
        for spec in get_settings().set_specs(entry.key, set_name):
            rendition = ready.get(str(spec))
            # A spec without format-* keeps the source's format: known once it is rendered.
            fmt = rendition.format if rendition is not None else spec.format
            if fmt is None:
                continue
            listed = formats.setdefault(fmt, [])
            if rendition is not None:
                url = absolute(rendition.url)
                listed.append({"url": url, "width": rendition.width, "height": rendition.height})
        by_set[set_name] = {
            fmt: sorted(listed, key=lambda item: item["width"]) for fmt, listed in formats.items()
        }
    return {
        "state": get_status(fieldfile).state,
        "width": placeholder.width if placeholder is not None else None,
        "height": placeholder.height if placeholder is not None else None,
        "original": absolute(fieldfile.url),
        "placeholder": (
            {"color": placeholder.color, "data_uri": placeholder.data_uri}
            if placeholder is not None
            else None
        ),
        "sets": by_set,
    }
