"""Security (issue 6): hostile upload names, pickle refused, specs only from the sets,
credentials only from the environment, decompression bombs refused before decoding.

Everything goes through the real path: the ORM, the real Celery worker on Redis (messages
published to its queue as an attacker with broker access would), real files under a
MEDIA_ROOT inside a sentinel folder, the real docker-compose.yml and Dockerfile. Tests of
`get_rendition` and the template tags refusing specs outside the sets are in
test_reading.py and test_templatetags.py; this file adds that such a refusal enqueues nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import signals
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.exceptions import SuspiciousFileOperation
from django.core.management import call_command
from django.db import DataError, connection, transaction
from django.template import Context, Template
from PIL import ImageFile, PngImagePlugin

import rendition_worker
from rendition_worker.conf import get_settings
from rendition_worker.core.errors import BadSource, SourceProblem
from rendition_worker.core.naming import STEM_MAX_LENGTH, parse_rendition_name
from rendition_worker.core.pipeline import RenderOptions, render
from rendition_worker.core.sources import Limits
from rendition_worker.core.specs import parse_spec
from rendition_worker.models import Rendition, Source, State
from tests.celery_app import app
from tests.live_worker import (
    SERVICES_REQUIRED,
    WorkerTracker,
    jpeg_bytes,
    media_files,
    upload,
    wait_for,
    wait_idle,
)
from tests.testapp.models import Photo, Plain

ROOT = Path(__file__).resolve().parents[2]
HERO_AND_THUMB = 7  # Photo.image: hero (2 widths x 3 formats) + thumb, in tests/settings.py
# Longest rendition name the naming scheme can make with these settings: PATH, shard, key,
# a stem of at most STEM_MAX_LENGTH, then 80 for the dotted spec (22 at most in
# tests/settings.py), the fingerprint and the extension.
NAME_BOUND = len("renditions/ab/0123456789abcdef/") + STEM_MAX_LENGTH + 80
SAFE_NAME = re.compile(r"[a-z0-9._/-]+")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# Helpers ------------------------------------------------------------------------------------


class Published:
    """Task messages the test process publishes (before_task_publish), by task name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, sender: str | None = None, **kwargs: Any) -> None:
        self.names.append(str(sender))


@pytest.fixture
def published() -> Iterator[Published]:
    recorder = Published()
    signals.before_task_publish.connect(recorder, weak=False)
    yield recorder
    signals.before_task_publish.disconnect(recorder)


class Started:
    """Ids of the tasks the worker started running (task_prerun), from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: set[str] = set()

    def __call__(self, task_id: str = "", **kwargs: Any) -> None:
        with self.lock:
            self.ids.add(task_id)


@pytest.fixture
def started() -> Iterator[Started]:
    recorder = Started()
    signals.task_prerun.connect(recorder, weak=False)
    yield recorder
    signals.task_prerun.disconnect(recorder)


def files_under(folder: Path) -> set[Path]:
    """Every file and folder under `folder` (the sentinel: nothing may appear outside media)."""
    return set(folder.rglob("*"))


def settled(photo: Photo, count: int = HERO_AND_THUMB) -> list[Rendition]:
    """Wait until `photo.image` is ready with `count` renditions of its current file."""

    def ready() -> list[Rendition] | None:
        source = Source.objects.filter(object_id=str(photo.pk), field="image").first()
        if source is None or source.name != photo.image.name or source.state != State.READY:
            return None
        rows = list(Rendition.objects.filter(source=source, state=State.READY))
        return rows if len(rows) == count else None

    rows: list[Rendition] = wait_for(ready, what=f"{count} renditions of {photo.image.name!r}")
    return rows


def render_template(text: str, **context: Any) -> str:
    """Render a template fragment with `{% load renditions %}`."""
    return Template("{% load renditions %}" + text).render(Context(context))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of `width` x `height` black pixels, deflated to ~1/1000.

    Decoding it takes a byte per pixel (Pillow keeps mode "1" as 8 bits), then the same
    again to convert it to a working mode: 144 MB and more for 12000 x 12000.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextmanager
def peak_memory_growth() -> Iterator[list[int]]:
    """Bytes by which this process's peak RSS rose over the block (the worker is a thread).

    Linux resets the peak (VmHWM) to the current RSS when "5" is written to clear_refs, so
    whatever ran before (the rest of the session) does not hide a rise.
    """
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        message = "needs Linux's /proc/self/clear_refs to reset the peak RSS"
        if SERVICES_REQUIRED:
            pytest.fail(message + " (RENDITION_WORKER_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    clear_refs.write_text("5")
    before = _status_kib("VmRSS")
    growth: list[int] = []
    yield growth
    growth.append((_status_kib("VmHWM") - before) * 1024)


def queue_length() -> int:
    """Messages waiting in this run's queue on Redis."""
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    return int(client.llen(django_settings.TEST_QUEUE))


# 1. Upload names ----------------------------------------------------------------------------

# Names Django must refuse before writing anything: they point outside upload_to.
REFUSED_NAMES = {
    "parent-traversal": "../../etc/passwd.jpg",
    "absolute": "/etc/evil.jpg",
    "inner-traversal": "sub/../../../escaped.jpg",
    "backslash-traversal": "..\\..\\windows.jpg",
}
# ~300 characters mixing a camera emoji, a right-to-left override, Hebrew, a combining
# accent, Arabic and Latin: 4-, 3- and 2-byte UTF-8, none of it valid in our rendition names.
_MIXED = (
    "\U0001f4f7\u202e\u05e9\u05dc\u05d5\u05dd\u0301"  # emoji, RTL override, Hebrew, accent
    "cafe\u0301\u0627\u0644\u0639\u0631\u0628\u064a "  # combining accent, Arabic
)
LONG_UNICODE = (_MIXED * 20)[:300] + ".jpg"
# Names Django keeps in some form: control characters, very long unicode (CJK: Django cuts
# the name to the field's max_length in characters, which is 255 bytes here).
STORED_NAMES = {
    "nul": "a\x00b.jpg",
    "tab-newline": "tab\tnew\nline.jpg",
    "ansi-escape": "\x1b[31m.jpg",
    "escape-in-folder": "dir\x1b[31m\x07/x.jpg",  # Django cleans base names only
    "long-unicode": LONG_UNICODE,
    "long-cjk": "\u4e2d" * 300 + ".jpg",
}


@pytest.mark.parametrize("name", REFUSED_NAMES.values(), ids=REFUSED_NAMES.keys())
def test_traversing_upload_name_is_refused_before_anything_is_written(
    worker: WorkerTracker, settings: Any, tmp_path: Path, published: Published, name: str
) -> None:
    before = files_under(tmp_path)
    with pytest.raises(SuspiciousFileOperation):
        Photo.objects.create(image=upload(jpeg_bytes(), name))
    assert not Photo.objects.exists()
    assert not Source.objects.exists()
    assert published.names == []
    assert queue_length() == 0
    assert files_under(tmp_path) == before
    target = os.path.normpath(Path(settings.MEDIA_ROOT, "photos", name.replace("\\", "/")))
    assert not Path(target).exists(), f"{target} was written"


@pytest.mark.parametrize("name", STORED_NAMES.values(), ids=STORED_NAMES.keys())
def test_hostile_upload_name_is_stored_and_rendered_inside_media_root(
    worker: WorkerTracker, settings: Any, tmp_path: Path, name: str
) -> None:
    media = Path(settings.MEDIA_ROOT)
    before = files_under(tmp_path)
    with transaction.atomic():
        photo = Photo.objects.create(image=upload(jpeg_bytes(), name))
        # Before commit nothing is enqueued: the page shows the original, by a quoted URL.
        pending = render_template('{% picture photo.image "hero" alt="" %}', photo=photo)
    stored = photo.image.name
    assert not Path(stored).is_absolute() and ".." not in Path(stored).parts
    assert (media / stored).resolve().is_relative_to(media.resolve())
    assert (media / stored).is_file()
    assert len(Path(stored).name.encode()) <= 255
    assert not CONTROL.search(pending), pending
    assert f'src="{photo.image.url}"' in pending

    rows = settled(photo)
    wait_idle(worker)
    for row in rows:
        assert SAFE_NAME.fullmatch(row.name), row.name
        assert len(row.name) <= NAME_BOUND, row.name
        parsed = parse_rendition_name(row.name, get_settings().path)
        assert parsed is not None, row.name
    assert media_files(media, "renditions/") == {row.name for row in rows}
    for path in media.rglob("*"):
        assert path.resolve().is_relative_to(media.resolve()), path
    assert {p for p in files_under(tmp_path) if not p.is_relative_to(media)} == before
    ready = render_template('{% picture photo.image "hero" alt="" %}', photo=photo)
    assert not CONTROL.search(ready), ready
    assert all(row.name in ready for row in rows if row.spec.startswith("width-"))


# Names no upload can produce, written by raw SQL, update() or a legacy import; ABSOLUTE
# stands for the absolute path of the secret file outside MEDIA_ROOT.
FORGED_NAMES = {
    "parent": "../secret.jpg",
    "absolute": "ABSOLUTE",
    "nul": "photos/a\x00b.jpg",
}


@pytest.mark.parametrize("forged", FORGED_NAMES.values(), ids=FORGED_NAMES.keys())
def test_a_name_forged_in_the_database_is_failed_never_read_and_never_deleted(
    worker: WorkerTracker, settings: Any, tmp_path: Path, forged: str
) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes(color=(10, 200, 10)))
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    forged = str(secret) if forged == "ABSOLUTE" else forged
    photo = Photo.objects.create(image=upload(jpeg_bytes(), "kept.jpg"))
    settled(photo)
    wait_idle(worker)
    if "\x00" in forged and connection.vendor == "postgresql":
        with pytest.raises(DataError, match="NUL"):  # PostgreSQL text cannot hold it at all
            Photo.objects.filter(pk=photo.pk).update(image=forged)
        return
    # update() sends no signal: the beat reconciliation is what finds the row.
    Photo.objects.filter(pk=photo.pk).update(image=forged)
    call_command("renditions", "reconcile", stdout=io.StringIO())
    wait_idle(worker)

    source = wait_for(
        lambda: Source.objects.filter(
            object_id=str(photo.pk), field="image", name=forged, state=State.FAILED
        ).first(),
        what="the forged name to be recorded as failed",
    )
    assert "refused by its storage" in source.error, source.error
    assert settings.MEDIA_ROOT not in source.error  # no server path in what the admin shows
    assert not Rendition.objects.filter(source_name=forged).exists()
    assert rendition_worker.get_status(Photo.objects.get(pk=photo.pk).image).state == "failed"

    # Deleting the row must not delete the file its name points at, nor block the deletion
    # of every later stale file behind a tombstone that can never be deleted.
    Photo.objects.get(pk=photo.pk).delete()
    wait_idle(worker)
    other = Photo.objects.create(image=upload(jpeg_bytes(), "first.jpg"))
    first = {row.name for row in settled(other)}
    other.image = upload(jpeg_bytes(color=(1, 2, 3)), "second.jpg")
    other.save()
    settled(other)
    wait_for(
        lambda: not first & media_files(settings.MEDIA_ROOT, "renditions/"),
        what="the replaced image's renditions to be deleted",
    )
    wait_idle(worker)
    assert hashlib.sha256(secret.read_bytes()).hexdigest() == digest


# 2. Pickle refused ---------------------------------------------------------------------------


class _MakesFolderWhenUnpickled:
    """A payload whose unpickling creates a folder: proof that someone ran pickle.loads."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def _publish_protocol_2(payload: _MakesFolderWhenUnpickled, queue: str) -> str:
    """The current message format: the task name in a header, the pickled body beside it."""
    kwargs = {"model": payload, "object_id": "1", "field": "image", "name": "x.jpg"}
    result = app.send_task(
        "rendition_worker.generate", kwargs=kwargs, serializer="pickle", queue=queue
    )
    return str(result.id)


def _publish_protocol_1(payload: _MakesFolderWhenUnpickled, queue: str) -> str:
    """The old format Celery still consumes: everything, the task name too, in the body."""
    task_id = str(uuid.uuid4())
    body = {"task": "rendition_worker.generate", "id": task_id, "args": [payload], "kwargs": {}}
    with app.connection_for_write() as connection:
        connection.Producer(serializer="pickle").publish(body, exchange=queue, routing_key=queue)
    return task_id


@pytest.mark.parametrize(
    "publish", [_publish_protocol_2, _publish_protocol_1], ids=["protocol-2", "protocol-1"]
)
def test_pickled_message_is_refused_and_the_worker_keeps_working(
    worker: WorkerTracker,
    settings: Any,
    tmp_path: Path,
    started: Started,
    publish: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_MakesFolderWhenUnpickled(control)))
    assert control.is_dir(), "the payload is live: unpickling it runs os.mkdir"
    marker = tmp_path / "unpickled"

    task_id = publish(_MakesFolderWhenUnpickled(marker), settings.TEST_QUEUE)
    refusal = "untrusted content of type pickle"
    wait_for(
        lambda: marker.exists() or any(refusal in r.getMessage() for r in caplog.records),
        what="the worker to refuse the pickled message",
    )
    assert not marker.exists(), "the worker unpickled the message"
    # The worker consumes in order: once a later upload is rendered, it has dealt with the
    # pickled message, and it is alive.
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo)
    wait_idle(worker)
    assert not marker.exists(), "the worker unpickled the message"
    assert task_id not in started.ids
    assert queue_length() == 0  # refused for good, not requeued


# What the demo's Celery app (the one Compose runs) ends up configured with.
DEMO_CELERY_PROBE = """
import json
from rendition_worker.demo.celery import app
conf = app.conf
print(json.dumps({
    "accept_content": list(conf.accept_content),
    "result_accept_content": conf.result_accept_content,
    "task_serializer": conf.task_serializer,
    "result_serializer": conf.result_serializer,
    "event_serializer": conf.event_serializer,
}))
"""
COMPOSE_LIKE_ENVIRONMENT = {
    "DATABASE_URL": "postgres://rendition:not-a-secret@postgres.invalid:5432/rendition",
    "CELERY_BROKER_URL": "redis://:not-a-secret@redis.invalid:6379/0",
    "CACHE_URL": "redis://:not-a-secret@redis.invalid:6379/1",
    "DJANGO_SECRET_KEY": "not-a-secret",
}


@pytest.mark.parametrize(
    "environment", [{}, COMPOSE_LIKE_ENVIRONMENT], ids=["embedded-defaults", "compose"]
)
def test_the_demo_celery_app_accepts_json_only(tmp_path: Path, environment: dict[str, str]) -> None:
    from rendition_worker.demo.environment import HOME, VARIABLES

    env = {name: value for name, value in os.environ.items() if name not in VARIABLES}
    env |= {
        "DJANGO_SETTINGS_MODULE": "rendition_worker.demo.settings",
        HOME: str(tmp_path),
        **environment,
    }
    done = subprocess.run(
        [sys.executable, "-c", DEMO_CELERY_PROBE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    conf = json.loads(done.stdout)
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] in (None, ["json"])  # None: accept_content applies
    assert (conf["task_serializer"], conf["result_serializer"]) == ("json", "json")
    assert conf["event_serializer"] == "json"


def test_the_test_projects_celery_app_accepts_json_only() -> None:
    # The app the session worker above runs: what the pickle test proves is its refusal.
    assert list(app.conf.accept_content) == ["json"]
    assert app.conf.result_accept_content in (None, ["json"])
    assert app.conf.task_serializer == "json"


# 3. Specs only from the configured sets -------------------------------------------------------

# get_rendition and the template tags refusing these with ValueError is tested in
# test_reading.py (test_get_rendition_canonicalises_and_refuses_specs_outside_the_sets) and
# test_templatetags.py (test_sets_and_specs_outside_the_field_are_developer_errors).
UNCONFIGURED_SPECS = ("width-100000|format-png", "original|format-png", "fill-64x64|format-jpeg")
REFUSED = "not in the sets|Invalid spec"


def test_a_page_asking_for_an_unconfigured_spec_enqueues_nothing(
    worker: WorkerTracker, settings: Any, published: Published
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo)
    wait_idle(worker)
    files = media_files(settings.MEDIA_ROOT)
    published.names.clear()
    for spec in UNCONFIGURED_SPECS:
        with pytest.raises(ValueError, match=REFUSED):
            rendition_worker.get_rendition(photo.image, spec)
        with pytest.raises(ValueError, match=REFUSED):
            render_template(f'{{% rendition_url photo.image "{spec}" %}}', photo=photo)
    wait_idle(worker)
    assert published.names == []
    assert queue_length() == 0
    assert media_files(settings.MEDIA_ROOT) == files
    assert set(Rendition.objects.values_list("spec", flat=True)) == required_specs()


def required_specs() -> set[str]:
    """The canonical specs of testapp.Photo.image's sets."""
    return {str(spec) for spec in get_settings().specs_for("testapp.Photo.image")}


class Finished:
    """What each task the worker ran returned (or raised), by task id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: dict[str, Any] = {}

    def __call__(self, task_id: str = "", retval: Any = None, **kwargs: Any) -> None:
        with self.lock:
            self.results[task_id] = retval


@pytest.fixture
def finished() -> Iterator[Finished]:
    recorder = Finished()
    signals.task_postrun.connect(recorder, weak=False)
    yield recorder
    signals.task_postrun.disconnect(recorder)


def test_forged_task_messages_render_nothing_outside_the_configured_specs(
    worker: WorkerTracker, settings: Any, finished: Finished
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    settled(photo)
    plain = Plain.objects.create(image=upload(jpeg_bytes(), "plain.jpg"))  # not registered
    user = User.objects.create_user("victim", password="correct horse battery staple")
    wait_idle(worker)
    files = media_files(settings.MEDIA_ROOT)
    rows = set(Rendition.objects.values_list("name", "spec"))
    genuine = {
        "model": "testapp.photo",
        "object_id": str(photo.pk),
        "field": "image",
        "name": photo.image.name,
    }
    # What an attacker who can write to the broker would try, and what the task must answer.
    forged: dict[str, tuple[str, dict[str, Any], Any]] = {
        "unregistered-model": (
            "rendition_worker.generate",
            {
                "model": "testapp.plain",
                "object_id": str(plain.pk),
                "field": "image",
                "name": plain.image.name,
            },
            {"status": "rejected"},
        ),
        "auth-user-password": (
            "rendition_worker.generate",
            {
                "model": "auth.user",
                "object_id": str(user.pk),
                "field": "password",
                "name": user.password,
            },
            {"status": "rejected"},
        ),
        "not-a-file-field": (
            "rendition_worker.generate",
            {**genuine, "field": "title"},
            {"status": "rejected"},
        ),
        "spec-argument": (
            "rendition_worker.generate",
            {**genuine, "spec": "width-100000|format-png", "width": 100_000},
            {"status": "rejected", "error": "got an unexpected keyword argument 'spec'"},
        ),
        "spec-as-name": (
            "rendition_worker.generate",
            {**genuine, "name": "width-100000|format-png"},
            {"status": "stale"},
        ),
        "another-file": (
            "rendition_worker.generate",
            {**genuine, "name": "../../etc/passwd"},
            {"status": "stale"},
        ),
        "forced": (
            "rendition_worker.generate",
            {**genuine, "force": True, "retry_failed": True},
            {"status": "ready", "renditions": 0},
        ),
        "sql-in-id": (
            "rendition_worker.generate",
            {**genuine, "object_id": "1 OR 1=1"},
            {"status": "rejected", "error": "'1 OR 1=1' is not a primary key of testapp.photo"},
        ),
        "model-as-object": (
            "rendition_worker.generate",
            {**genuine, "model": {"app_label": "testapp", "model": "photo"}},
            {"status": "rejected"},
        ),
        "delete-a-live-source": (
            "rendition_worker.delete",
            {key: genuine[key] for key in ("model", "object_id", "field")},
            {"status": "has-file"},
        ),
    }
    ids = {
        key: str(app.send_task(task, kwargs=kwargs, queue=settings.TEST_QUEUE).id)
        for key, (task, kwargs, _) in forged.items()
    }
    wait_for(
        lambda: set(ids.values()) <= set(finished.results),
        what="the worker to run every forged message",
    )
    wait_idle(worker)
    for key, (_, _, expected) in forged.items():
        result = finished.results[ids[key]]
        if isinstance(expected, type):
            assert isinstance(result, expected), (key, result)
        else:
            assert {k: result.get(k) for k in expected} == expected, (key, result)

    assert set(Rendition.objects.values_list("name", "spec")) == rows
    assert set(Rendition.objects.values_list("spec", flat=True)) == required_specs()
    assert set(Source.objects.values_list("object_id", "field")) == {(str(photo.pk), "image")}
    assert media_files(settings.MEDIA_ROOT) == files
    user.refresh_from_db()
    assert user.check_password("correct horse battery staple")
    # The worker survived all of it.
    after = Photo.objects.create(image=upload(jpeg_bytes(color=(9, 9, 9)), "after.jpg"))
    settled(after)


# 4. Credentials only from the environment ------------------------------------------------------

CREDENTIAL_NAME = re.compile(r"PASS|SECRET|KEY|TOKEN|AUTH|CREDENTIAL|PRIVATE", re.IGNORECASE)
# `${VAR}` or `${VAR:?message}` / `${VAR?message}`: never `${VAR:-default}`, a baked default.
REFERENCE = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?:(?::?\?)[^}]*)?\}")
URL_PASSWORD = re.compile(r"://[^/@\s:]*:(?P<password>\$\{[^}]*\}|[^@/\s]*)@")
# A variable the container's shell expands (compose turns `$$` into `$`).
SHELL_VARIABLE = re.compile(r'^"?\$\$\{?(?P<var>[A-Za-z_][A-Za-z0-9_]*)\}?"?$')


def compose_file() -> dict[str, Any]:
    """docker-compose.yml, anchors and merge keys resolved."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, from either the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def referenced_variable(value: str) -> str | None:
    """The variable a whole value refers to, if it is exactly one reference without default."""
    match = REFERENCE.fullmatch(value)
    return match["var"] if match else None


def command_words(service: dict[str, Any]) -> list[str]:
    """A service's command (and healthcheck test) split into words, shell strings included."""
    words: list[str] = []
    for part in (service.get("command"), (service.get("healthcheck") or {}).get("test")):
        for item in [part] if isinstance(part, str) else part or []:
            words.extend(shlex.split(str(item), posix=False))
    return words


def test_compose_takes_every_credential_from_the_environment() -> None:
    services = compose_file()["services"]
    credentials: set[str] = set()
    for name, service in services.items():
        for key, value in environment_of(service).items():
            if CREDENTIAL_NAME.search(key):
                variable = referenced_variable(value)
                assert variable, f"{name}: {key}={value!r} is not a ${{VAR:?...}} reference"
                credentials.add(variable)
            for match in URL_PASSWORD.finditer(value):
                password = match["password"]
                variable = referenced_variable(password)
                assert variable, f"{name}: {key} embeds the password {password!r} in its URL"
                credentials.add(variable)
        for word in command_words(service):
            for match in URL_PASSWORD.finditer(word):
                assert referenced_variable(match["password"]), f"{name}: {word!r}"
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY"} <= credentials

    # The database and broker URLs use the passwords the servers are started with.
    postgres = environment_of(services["postgres"])
    assert referenced_variable(postgres["POSTGRES_PASSWORD"]) == "POSTGRES_PASSWORD"
    for name in ("web", "worker", "beat", "flower"):
        env = environment_of(services[name])
        for key, variable in (
            ("DATABASE_URL", "POSTGRES_PASSWORD"),
            ("CELERY_BROKER_URL", "REDIS_PASSWORD"),
        ):
            match = URL_PASSWORD.search(env[key])
            assert match is not None, f"{name}: {key} has no password"
            assert referenced_variable(match["password"]) == variable, (name, key)


def test_redis_requires_the_password_from_the_environment() -> None:
    redis_service = compose_file()["services"]["redis"]
    words = command_words(redis_service)
    flat = " ".join(words)
    assert "--requirepass" in flat, "redis-server runs without a password"
    after = flat.split("--requirepass", 1)[1].split()[0].strip("\"'")
    variable = SHELL_VARIABLE.fullmatch(after)
    assert variable, f"--requirepass takes {after!r}, not a variable of the environment"
    env = environment_of(redis_service)
    assert referenced_variable(env[variable["var"]]) == "REDIS_PASSWORD"


def test_flower_requires_basic_auth_from_the_environment() -> None:
    flower = compose_file()["services"]["flower"]
    env = environment_of(flower)
    auth = env.get("FLOWER_BASIC_AUTH", "")
    assert referenced_variable(auth) == "FLOWER_BASIC_AUTH", f"FLOWER_BASIC_AUTH={auth!r}"
    for word in command_words(flower):
        assert not re.search(r"basic.?auth", word, re.IGNORECASE) or REFERENCE.search(word), (
            f"flower's command carries credentials: {word!r}"
        )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def test_the_image_bakes_in_no_credential() -> None:
    instructions = dockerfile_instructions()
    assert instructions, "the Dockerfile is empty"
    for instruction, arguments in instructions:
        if instruction in {"ENV", "ARG", "LABEL"}:
            for word in shlex.split(arguments):
                name = re.split(r"[= ]", word, maxsplit=1)[0]
                assert not CREDENTIAL_NAME.search(name), f"{instruction} {word!r} in the image"
        assert not URL_PASSWORD.search(arguments), f"{instruction} {arguments!r}"
        if instruction in {"COPY", "ADD"}:
            sources = [w for w in shlex.split(arguments) if not w.startswith("--")][:-1]
            for source in sources:
                assert source not in {".", "./", "*"} and not source.startswith(".env"), (
                    f"{instruction} {arguments!r} may copy a .env file into the image"
                )
    # The build context never carries a local .env to the builder either.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored, ".dockerignore does not exclude .env"


def test_the_env_example_holds_no_credential() -> None:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    credentials = {key for key in values if CREDENTIAL_NAME.search(key)}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH"} <= (
        credentials
    )
    assert {key: values[key] for key in credentials if values[key]} == {}
    # Every credential compose requires is one the operator is told to set.
    required = {
        match["var"]
        for match in REFERENCE.finditer((ROOT / "docker-compose.yml").read_text())
        if CREDENTIAL_NAME.search(match["var"])
    }
    assert required <= credentials, required - credentials


# 5. Decompression bombs refused before decoding ------------------------------------------------

# (width, height, what the error must say). 144 MP is over MAX_PIXELS (100 MP) but under the
# ceiling at which Pillow's Image.open refuses by itself (2 x 89.5 MP); 400 MP is over both,
# and MAX_PIXELS refuses it too, as it says (the engine bypasses Pillow's global check).
# Decoding either takes a byte per pixel at least: 144 MB, 400 MB.
BOMBS = {
    "over-max-pixels": (12_000, 12_000, "12000x12000 = 144,000,000 pixels"),
    "over-pillows-ceiling": (20_000, 20_000, "20000x20000 = 400,000,000 pixels"),
}
# Refusing from the header allocates next to nothing; the margin covers the interpreter, the
# database and Redis clients and the worker's thread, and is a fifth of the smaller decode.
BOMB_PEAK_GROWTH = 30 * 2**20


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
def test_a_decompression_bomb_upload_is_failed_without_decoding(
    worker: WorkerTracker, settings: Any, bomb: tuple[int, int, str]
) -> None:
    width, height, declared = bomb
    data = png_bomb(width, height)
    assert len(data) < width * height // 500  # a real bomb: tiny on disk
    wait_idle(worker)
    with peak_memory_growth() as growth:
        photo = Photo.objects.create(image=upload(data, "bomb.png"))
        source = wait_for(
            lambda: Source.objects.filter(
                object_id=str(photo.pk), field="image", state=State.FAILED
            ).first(),
            what="the bomb to be recorded as failed",
        )
        wait_idle(worker)
    assert growth[0] < BOMB_PEAK_GROWTH, f"peak RSS rose {growth[0] / 2**20:.0f} MiB"
    assert growth[0] < width * height // 4
    assert source.error.startswith("too large to decode safely"), source.error
    assert declared in source.error, source.error
    status = rendition_worker.get_status(photo.image)
    assert (status.state, status.error) == ("failed", source.error)
    assert not Rendition.objects.exists()
    assert media_files(settings.MEDIA_ROOT, "renditions/") == set()
    stored = Path(settings.MEDIA_ROOT) / photo.image.name
    assert stored.read_bytes() == data  # the original is never touched


class _LoadReached(Exception):
    """Raised instead of decoding: the pipeline got as far as loading the pixels."""


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_pixel_limit_stops_a_bomb_before_its_pixels_are_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    width = height = 12_000
    bomb = png_bomb(width, height)
    image_class = PngImagePlugin.PngImageFile
    loads: list[tuple[int, int]] = []
    original_load = image_class.load

    def counting_load(self: ImageFile.ImageFile) -> Any:
        loads.append(self.size)
        if self.size == (width, height):
            raise _LoadReached  # never actually decode 144 MP in a test
        return original_load(self)

    monkeypatch.setattr(image_class, "load", counting_load)
    specs = [parse_spec("width-320|format-jpeg"), parse_spec("width-160|format-avif")]

    with pytest.raises(BadSource) as refused:
        render(io.BytesIO(bomb), specs, RenderOptions())
    assert refused.value.problem == SourceProblem.TOO_LARGE
    assert "MAX_PIXELS" in str(refused.value)
    assert loads == []

    # The same file under a limit it fits: the pipeline goes on to load it. So the refusal
    # above came from the limit, before the load, and the counter sees loads.
    with pytest.raises(BadSource, match="_LoadReached"):
        render(io.BytesIO(bomb), specs, RenderOptions(limits=Limits(max_pixels=200_000_000)))
    assert loads == [(width, height)]
