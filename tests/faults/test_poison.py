"""Poison messages, published by hand to a real worker: one log line each, never a retry."""

from __future__ import annotations

import re
from typing import Any

from django.core.files.base import ContentFile

from rendition_worker.models import Intent
from rendition_worker.registry import field_for
from rendition_worker.services.outbox import intent_new, intents_relay
from tests.faults.conftest import Stage, all_ready, photo_bytes, record_fault, wait_until
from tests.testapp.models import Photo

# (task, args, kwargs, what the one line says). A generate message without positional
# arguments is a real photo's genuine kwargs with these changes (None: key left out).
POISON: dict[str, tuple[str, list[Any], dict[str, Any], str]] = {
    "unknown model": (
        "generate",
        [],
        {"model": "nosuch.model", "object_id": "1", "field": "image", "name": "x.jpg"},
        "nosuch.model.image is not a registered field",
    ),
    "unknown field": (
        "generate",
        [],
        {"field": "title"},
        "testapp.photo.title is not a registered",
    ),
    "missing key": ("generate", [], {"name": None}, "missing a required argument: 'name'"),
    "extra key": ("generate", [], {"spec": "width-9999"}, "unexpected keyword argument 'spec'"),
    "id of the wrong type": ("generate", [], {"object_id": 5}, "object_id=5 is not of type str"),
    "flag of the wrong type": ("generate", [], {"force": "yes"}, "force='yes' is not of type bool"),
    "intent of the wrong type": (
        "generate",
        [],
        {"intent": "7"},
        "intent='7' is not of type int | None",
    ),
    "no such key": ("generate", [], {"object_id": "1 OR 1=1"}, "is not a primary key of"),
    "row gone": ("generate", [], {"object_id": "999999"}, "pk=999999 no longer exists"),
    "positional": ("generate", list(range(12)), {}, "too many positional arguments"),
    "delete: unknown model": (
        "delete",
        [],
        {"model": "nosuch.model", "object_id": "1", "field": "image"},
        "nosuch.model.image is not a registered field",
    ),
    "delete: half the keys": ("delete", [], {"model": "testapp.photo"}, "come together"),
    "delete: id a list": (
        "delete",
        [],
        {"model": "testapp.photo", "object_id": ["1"], "field": "image"},
        "object_id=['1'] is not of type str | None",
    ),
    "reconcile: unknown phase": (
        "reconcile",
        [],
        {"cursor": {"phase": "nowhere"}},
        "phase 'nowhere' is not one of",
    ),
    "reconcile: shard a string": (
        "reconcile",
        [],
        {"cursor": {"phase": "files", "storage": 0, "shard": "0"}},
        "shard='0' is of the wrong type",
    ),
    "reconcile: key of no row": (
        "reconcile",
        [],
        {"cursor": {"phase": "required", "field": 0, "after": "x"}},
        "cursor after='x'",
    ),
    "reconcile: cursor a string": (
        "reconcile",
        [],
        {"cursor": "required"},
        "cursor='required' is not of type dict | None",
    ),
    "relay: extra key": ("relay", [], {"batch": 10}, "unexpected keyword argument 'batch'"),
}
# Kinds whose message carries a live intent: rejected, the intent must be done.
WITH_INTENT = {"unknown field", "missing key", "extra key", "no such key"}


def test_poison_messages_get_one_log_line_each_and_the_worker_goes_on(stage: Stage) -> None:
    worker = stage.worker()
    [*pool] = worker.children()
    photo = Photo.objects.create(image=ContentFile(photo_bytes(3), "good.jpg"))
    wait_until(lambda: all_ready(1), "the genuine photo's renditions")
    entry = field_for("testapp.photo", "image")
    assert entry is not None
    genuine = {
        "model": "testapp.photo",
        "object_id": str(photo.pk),
        "field": "image",
        "name": photo.image.name,
    }
    assert stage.app is not None
    sent: dict[str, tuple[str, str, Intent | None]] = {}
    for kind, (task, args, changes, says) in POISON.items():
        kwargs = {**genuine, **changes} if task == "generate" and not args else dict(changes)
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        intent = None
        if kind in WITH_INTENT:
            intent = intent_new(entry, str(photo.pk), photo.image.name)
            intent.save()
            kwargs["intent"] = intent.pk
        message = stage.app.send_task(
            f"rendition_worker.{task}", args=args, kwargs=kwargs, queue=stage.queue
        )
        sent[kind] = (str(message.id), says, intent)

    def finished() -> bool:
        log = worker.log_text()
        return all(f"[{task_id}] succeeded" in log for task_id, _, _ in sent.values())

    wait_until(finished, "the worker to take every poison message", timeout=60)
    # And it goes on: a genuine upload after them is rendered.
    Photo.objects.create(image=ContentFile(photo_bytes(4), "after.jpg"))
    wait_until(lambda: all_ready(2), "the photo uploaded after the poison")

    log = worker.log_text()
    lines = log.splitlines()
    for kind, (task_id, says, intent) in sent.items():
        # The one line: the task logger's, naming the task and its id; nothing else of this
        # message but Celery's "received" and "succeeded".
        about = [line for line in lines if task_id in line]
        # (Celery's "succeeded" line shows the task's result, which repeats the problem.)
        problems = [line for line in about if says in line and " succeeded in " not in line]
        assert len(problems) == 1, (kind, about)
        others = [line for line in about if line not in problems]
        assert len(others) == 2, (kind, others)
        assert all(re.search(r"\] (received|succeeded in )", line) for line in others), others
        if intent is not None:
            assert "marked done" in problems[0], problems[0]
            assert not Intent.objects.filter(pk=intent.pk).exists(), kind
    assert "Traceback" not in log and "ERROR/" not in log and "Retry in" not in log, log[-3000:]
    assert worker.children() == pool  # no pool process died or was replaced
    # Nothing waits for the relay: it has nothing to publish again, now or later.
    assert not Intent.objects.exists()
    assert intents_relay() == {"due": 0, "published": 0}
    record_fault(
        "poison messages (hand-made)",
        injected=len(sent),
        landed=len(sent),
        lost=0,
        leaked=0,
        note=f"{len(sent)} messages to 4 tasks: one line each, 0 retries, 0 tracebacks; "
        f"{len(WITH_INTENT)} intents marked done; the next upload rendered",
    )
