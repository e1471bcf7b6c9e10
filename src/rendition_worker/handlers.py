"""Model signal handlers: notice new, replaced, cleared and deleted images; act after commit.

Wired once from `AppConfig.ready()` (and again when the settings change in tests), per
registered model so that other models pay nothing. `post_init` snapshots each registered
field's file name; `post_save` compares, `post_delete` forgets. The work is recorded in the
changing transaction (an outbox row) and published after the commit by a background
thread, so a rolled-back transaction enqueues and deletes nothing and the save never waits
on the broker. A failure is logged with model, field and file and never breaks the save:
the outbox's relay and the beat reconciliation are the safety nets.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.core.files.base import File
from django.core.signals import setting_changed
from django.db import models, transaction
from django.db.models.fields.files import FieldFile
from django.db.models.signals import post_delete, post_init, post_save, pre_save

from rendition_worker import registry
from rendition_worker.registry import RegisteredField, file_name
from rendition_worker.services.changes import change_publish, change_record

logger = logging.getLogger(__name__)

# Where post_init keeps the file names the instance was loaded (or last saved) with.
SNAPSHOT_ATTRIBUTE = "_rendition_worker_names"
# Where pre_save notes the fields that get a freshly uploaded file in this save: with
# S3's file_overwrite=True a new upload can keep the old name.
UPLOADED_ATTRIBUTE = "_rendition_worker_uploaded"
_connected: list[type[models.Model]] = []


def connect() -> None:
    """Connect the handlers for every registered model (idempotent)."""
    disconnect()
    for model in {entry.model for entry in registry.registered_fields()}:
        uid = f"rendition_worker.{model._meta.label_lower}"
        post_init.connect(_post_init, sender=model, dispatch_uid=uid)
        pre_save.connect(_pre_save, sender=model, dispatch_uid=uid)
        post_save.connect(_post_save, sender=model, dispatch_uid=uid)
        post_delete.connect(_post_delete, sender=model, dispatch_uid=uid)
        _connected.append(model)
    setting_changed.connect(_rewire, dispatch_uid="rendition_worker.rewire")


def disconnect() -> None:
    """Disconnect every handler connected by `connect()`."""
    while _connected:
        model = _connected.pop()
        uid = f"rendition_worker.{model._meta.label_lower}"
        for signal in (post_init, pre_save, post_save, post_delete):
            signal.disconnect(sender=model, dispatch_uid=uid)


def _rewire(*, setting: str, **kwargs: object) -> None:
    if setting == "RENDITION_WORKER":
        connect()


def _post_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    instance.__dict__[SNAPSHOT_ATTRIBUTE] = {
        entry.name: _stored_name(instance, entry) for entry in registry.fields_of(sender)
    }


def _stored_name(instance: models.Model, entry: RegisteredField) -> str | None:
    # A file passed to the constructor is not stored yet: its name is only what the upload
    # was called ("v1.jpg"), not a file of ours to retire later ("photos/v1.jpg").
    if _uncommitted(instance.__dict__.get(entry.field.attname)):
        return ""
    return file_name(instance, entry)


def _uncommitted(value: object) -> bool:
    """Whether a field's value is a file still to be stored by this save (a new upload)."""
    # As Django's FileDescriptor sees it: a File assigned directly (`photo.image =
    # ContentFile(...)`, a form's UploadedFile) is new until the descriptor wraps it in a
    # FieldFile, which happens only when the attribute is read (full_clean, the save).
    if isinstance(value, FieldFile):
        return not getattr(value, "_committed", True)
    return isinstance(value, File)


def _pre_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    uploaded = {
        entry.name
        for entry in registry.fields_of(sender)
        if _uncommitted(instance.__dict__.get(entry.field.attname))
    }
    instance.__dict__[UPLOADED_ATTRIBUTE] = uploaded


def _post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool,
    using: str,
    update_fields: frozenset[str] | None,
    **kwargs: Any,
) -> None:
    if raw:  # loaddata: the files are whatever the fixture says; reconciliation catches up
        return
    snapshot: dict[str, str | None] = instance.__dict__.setdefault(SNAPSHOT_ATTRIBUTE, {})
    uploaded: set[str] = instance.__dict__.pop(UPLOADED_ATTRIBUTE, set())
    for entry in registry.fields_of(sender):
        if update_fields is not None and entry.name not in update_fields:
            continue
        new = file_name(instance, entry)
        old = "" if created else snapshot.get(entry.name)
        # Any new upload, not only one that kept the old name: the worker may not have seen
        # the names in between (replaced, then the first name uploaded again before it ran),
        # and it compares the content when the name is the one its state follows.
        overwritten = entry.name in uploaded and not created
        if new is None or (new == old and not created and not overwritten) or (created and not new):
            continue
        snapshot[entry.name] = new
        _record(entry, str(instance.pk), old or "", new, using=using, overwritten=overwritten)


def _post_delete(
    sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any
) -> None:
    snapshot: dict[str, str | None] = instance.__dict__.get(SNAPSHOT_ATTRIBUTE, {})
    for entry in registry.fields_of(sender):
        name = file_name(instance, entry)
        if name is None:
            name = snapshot.get(entry.name)
        _record(entry, str(instance.pk), name or "", None, using=using)


def _record(
    entry: RegisteredField,
    object_id: str,
    old: str,
    new: str | None,
    *,
    using: str,
    overwritten: bool = False,
) -> None:
    try:
        message = change_record(entry, object_id, old, new, using=using, overwritten=overwritten)
    except Exception:
        logger.exception(
            "rendition-worker could not handle %s of %s pk=%s field %s (old %r, new %r); "
            "the next reconciliation will",
            "the deletion" if new is None else "the change",
            entry.model._meta.label,
            object_id,
            entry.name,
            old,
            new,
        )
        return
    transaction.on_commit(functools.partial(change_publish, message), using=using, robust=True)
