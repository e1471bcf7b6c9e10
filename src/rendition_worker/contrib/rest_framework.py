"""`RenditionsField`: a read-only Django REST framework field for a registered image field."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models
from django.db.models.fields.files import FieldFile
from rest_framework import serializers

from rendition_worker.services.lookups import (
    PREFETCH_ATTRIBUTE,
    field_entry,
    prefetch_renditions,
)
from rendition_worker.services.representation import check_sets, renditions_data


class RenditionsField(serializers.Field):  # type: ignore[type-arg]
    """`{"state", "width", "height", "original", "placeholder", "sets"}`, or null when empty.

    `sets`: the sets to list (default: every set of the field). Only ready renditions are
    listed; URLs are absolute when the serializer's context has the request. On a list
    (`many=True`) the renditions of the whole page are loaded at once: one query cold, none
    warm, however many rows.
    """

    def __init__(self, *, sets: Sequence[str] | None = None, **kwargs: Any) -> None:
        kwargs["read_only"] = True
        super().__init__(**kwargs)
        if isinstance(sets, str):
            raise TypeError(f"sets must be a list of set names, not the string {sets!r}")
        self.sets = tuple(sets) if sets is not None else None

    def bind(self, field_name: str, parent: Any) -> None:
        """Check, as soon as the model is known, that the field and its sets are configured."""
        super().bind(field_name, parent)
        model = getattr(getattr(parent, "Meta", None), "model", None)
        if model is not None and self.source_attrs and len(self.source_attrs) == 1:
            entry = field_entry(model, self.source_attrs[0])  # ValueError if not registered
            if self.sets is not None:
                check_sets(entry.key, self.sets)

    def to_representation(self, value: FieldFile) -> dict[str, Any] | None:
        """The field's renditions as the contract gives them."""
        if value:
            self._prefetch_page(value)
        request = self.context.get("request")
        absolute = request.build_absolute_uri if request is not None else str
        return renditions_data(value, self.sets, absolute)

    def _prefetch_page(self, value: FieldFile) -> None:
        # On the first row of a list, load every row's renditions in one go.
        instance = getattr(value, "instance", None)
        if instance is None or PREFETCH_ATTRIBUTE in instance.__dict__:
            return
        page = getattr(getattr(self.parent, "parent", None), "instance", None)
        if isinstance(page, models.QuerySet | list | tuple) and _holds(page, instance):
            prefetch_renditions(page, value.field.name)


def _holds(page: Iterable[models.Model], instance: models.Model) -> bool:
    return any(row is instance for row in page)
