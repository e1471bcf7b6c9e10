"""Resolve the registered fields (`app_label.Model.field`) to models, fields and storages."""

from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.files.storage import Storage, storages
from django.db import models

from rendition_worker.conf import RenditionSettings, get_settings
from rendition_worker.core.errors import BadMessage

FIELD_STORAGE_PREFIX = "field:"


@dataclass(frozen=True)
class RegisteredField:
    """One registered file field: its settings key, model and field."""

    key: str
    model: type[models.Model]
    field: models.FileField

    @property
    def name(self) -> str:
        """The field's name on the model."""
        return self.field.name

    @property
    def model_label(self) -> str:
        """`app_label.modelname`, as task arguments carry it."""
        return str(self.model._meta.label_lower)


def resolve_field(key: str) -> RegisteredField:
    """The field a FIELDS key names; `LookupError` saying what is wrong otherwise."""
    parts = key.split(".")
    if len(parts) != 3:
        raise LookupError(f"{key!r} is not of the form 'app_label.Model.field'")
    app_label, model_name, field_name = parts
    model = apps.get_model(app_label, model_name)  # raises LookupError with its own message
    try:
        field = model._meta.get_field(field_name)
    except Exception as exc:
        raise LookupError(f"{model.__name__} has no field {field_name!r}") from exc
    if not isinstance(field, models.FileField):
        raise LookupError(f"{key} is a {type(field).__name__}, not an ImageField or FileField")
    return RegisteredField(key, model, field)


def registered_fields() -> tuple[RegisteredField, ...]:
    """Every resolvable registered field (checks report the others)."""
    settings = get_settings()
    cached = _resolved.get("last")
    if cached is not None and cached[0] is settings:
        return cached[1]
    found = []
    for key in settings.fields:
        try:
            found.append(resolve_field(key))
        except LookupError:
            continue
    # One slot, keyed by the settings object: a new one (override_settings) replaces it.
    _resolved["last"] = (settings, tuple(found))
    return _resolved["last"][1]


_resolved: dict[str, tuple[RenditionSettings, tuple[RegisteredField, ...]]] = {}


def fields_of(model: type[models.Model]) -> tuple[RegisteredField, ...]:
    """The registered fields of `model` (concrete model of a proxy included)."""
    concrete = model._meta.concrete_model
    return tuple(entry for entry in registered_fields() if entry.model is concrete)


def field_for(model_label: str, field_name: str) -> RegisteredField | None:
    """The registered field named by a task's arguments, or None if it is not registered."""
    for entry in registered_fields():
        if entry.model_label == model_label and entry.name == field_name:
            return entry
    return None


def field_named(model_label: str, field_name: str) -> RegisteredField:
    """`field_for`, for a task's arguments: `BadMessage` when they name no registered field."""
    entry = field_for(model_label, field_name)
    if entry is None:
        raise BadMessage(f"{model_label[:100]}.{field_name[:100]} is not a registered field")
    return entry


def row_for(entry: RegisteredField, object_id: str) -> models.Model | None:
    """The row of `entry`'s model that `object_id` names, or None if it is gone.

    `BadMessage` for an id that can be no primary key of that model ('1 OR 1=1' for an
    integer key): a message that holds one is wrong, not late.
    """
    try:
        key = entry.model._meta.pk.to_python(object_id)
    except ValidationError as exc:
        shown = object_id if len(object_id) <= 60 else object_id[:60] + "..."
        raise BadMessage(f"{shown!r} is not a primary key of {entry.model_label}") from exc
    return entry.model._default_manager.filter(pk=key).first()


def rendition_storage_ref(entry: RegisteredField) -> str:
    """Where `entry`'s renditions go: the STORAGE alias, or the source field's own storage."""
    alias = get_settings().storage
    return alias if alias is not None else FIELD_STORAGE_PREFIX + entry.key


def original_storage_ref(entry: RegisteredField) -> str:
    """A reference to the storage of `entry`'s original files."""
    return FIELD_STORAGE_PREFIX + entry.key


def file_name(instance: models.Model, entry: RegisteredField) -> str | None:
    """The file name in `entry`'s field of `instance`; None when the field was not loaded."""
    value = instance.__dict__.get(entry.field.attname, _DEFERRED)
    if value is _DEFERRED:
        return None
    name = getattr(value, "name", value)
    return str(name) if name else ""


_DEFERRED = object()


def storage_for(ref: str) -> Storage:
    """The storage a reference names (see `rendition_storage_ref`)."""
    if ref.startswith(FIELD_STORAGE_PREFIX):
        return resolve_field(ref.removeprefix(FIELD_STORAGE_PREFIX)).field.storage
    return storages[ref]
