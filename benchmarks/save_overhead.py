"""Benchmark: what rendition-worker adds to a model save(), with and without an image change.

Two cases, each timed on a model the app watches ("with app") and the same model without
the app ("without app"), in one process and one run:
- image changed: assign a new in-memory JPEG (the same bytes on both sides) and save();
  the file write to MEDIA_ROOT is part of both. By default the file is under 1 KB, so the
  save is as cheap as it gets and the ratio as strict; `--upload-kb` sizes it like a photo.
  With the app this replaces a stored image,
  so inside the transaction `change_record` INSERTs one tombstone for the old original and
  one outbox intent, and after commit `change_publish` hands the message to the background
  publisher, which publishes one `rendition_worker.generate` message to Redis off the
  request's thread (the app's most expensive save);
- image unchanged: save() again with nothing changed (an UPDATE on both sides); with the app
  the handlers run and must enqueue nothing.

"With app" is `testapp.Photo`, registered: the app's post_init/pre_save/post_save/post_delete
handlers run. "Without app" is, by default, the same `Photo` model with those handlers
disconnected (`handlers.disconnect()`): the app touches a save only through them, so this is
a model's state when the app is not installed, with identical columns, index and upload path.
A separate process without the app in INSTALLED_APPS would be the literal reading, but its
saves cannot be interleaved with ours, so drift between the processes (this is a shared
machine) would land in the ratio. `--baseline plain` uses `testapp.Plain`, a model the app
does not register; it is not the same shape (one image column against Photo's title, album
foreign key, image and cover), and on SQLite an unchanged save of it is a no-op write whose
COMMIT skips the disk, while Photo's UPDATE rewrites the album_id index: the ratio then
charges the difference of the models to the app.

Method: every save runs in its own `transaction.atomic()`, so the on_commit callbacks run
inside the timed region (perf_counter_ns from entering the block to leaving it). The sides
alternate save by save, and which goes first alternates too, to cancel drift and order
effects; the handlers are (dis)connected between timed regions and the signals' receiver
caches refilled, so the switch is never timed. Medians (and p90) over N saves per side and
case, after a warm-up. The enqueue is also timed on its own: marker callbacks registered
with `on_commit` right before and right after save() bracket the callbacks the handlers
register ("on_commit ms": the hand-over to the publisher, without the COMMIT); then the
parts (`change_record`: the two INSERTs, in autocommit here; `change_publish`; and the
publisher thread's own publish, which no save waits for) are timed alone to show where the
time goes. The measurement is checked to be real: once the publisher is flushed, the
messages on the benchmark's own Redis queue (LLEN) and the `after_task_publish` signals must
both equal the number of timed changing saves with the app, as must the new tombstone and
intent rows; the queue's keys are deleted at the end.

Broker faults: the changing saves again, `--fault-n` per side, with the site's Celery app
pointed at a port where nothing listens ("broker stopped") and at a socket that accepts
connections and never answers ("broker hanging"). Target (issue 11): the app adds under
100 ms to such a save (it adds a fraction of a millisecond: the save never touches the
broker; what waits is the publisher thread, and the relay publishes the intents later).

Targets (issues 3 and 11): with app / without app under 1.5x in both cases, under 2 ms
added to a save that enqueues (median with app minus median without), 0 (within noise) to
one that does not, and under 100 ms added to a changing save while the broker is down.

Run: `python benchmarks/save_overhead.py [--database postgres] [-n 300]` from the project
root; needs Redis at tests.settings' CELERY_BROKER_URL and, for postgres, PostgreSQL on
127.0.0.1:5432 (trust auth, user postgres), where a database is created and dropped.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support import PG_ADMIN, create_postgres_database, drop_postgres_database

if TYPE_CHECKING:
    from django.db import models

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.5
TARGET_ADDED_MS = 2.0
TARGET_FAULT_ADDED_MS = 100.0


@dataclass
class Timings:
    """Nanosecond timings of one side of one case, one entry per timed save."""

    total: list[int] = field(default_factory=list)
    hooks: list[int] = field(default_factory=list)  # the app's on_commit callbacks

    @staticmethod
    def median_ms(values: list[int]) -> float:
        """Median of nanosecond `values`, in milliseconds."""
        return statistics.median(values) / 1e6

    @property
    def median(self) -> float:
        """Median whole save, ms."""
        return self.median_ms(self.total)

    @property
    def p90(self) -> float:
        """90th percentile of the whole saves, ms."""
        return statistics.quantiles(self.total, n=10, method="inclusive")[8] / 1e6


def jpeg_bytes(size_kb: int) -> bytes:
    """A small JPEG, padded after its end marker (readers ignore that) to `size_kb` if larger."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    return data + bytes(max(0, size_kb * 1024 - len(data)))


def configure_django(database: str, db_name: str, workdir: Path, queue: str) -> None:
    """Set Django up on tests.settings with a database, media and queue of this run's own."""
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from django import setup as setup_django
    from django.conf import settings
    from django.core.management import call_command
    from tests import settings as test_settings

    # tests.settings makes a temp folder on import; this run keeps everything in `workdir`.
    shutil.rmtree(test_settings._RUN_DIR, ignore_errors=True)
    if database == "postgres":
        db: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db_name,
            "USER": PG_ADMIN["user"],
            "HOST": PG_ADMIN["host"],
            "PORT": str(PG_ADMIN["port"]),
        }
    else:
        db = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(workdir / "bench.sqlite3"),
            "OPTIONS": test_settings.DATABASES["default"].get("OPTIONS", {}),
        }
    # settings.configure() rather than editing the module: tests.settings stays as it is,
    # and every value not overridden here is the test project's.
    values = {name: getattr(test_settings, name) for name in dir(test_settings) if name.isupper()}
    values.update(
        DATABASES={"default": db},
        MEDIA_ROOT=str(workdir / "media"),
        RENDITION_WORKER={**test_settings.RENDITION_WORKER, "QUEUE": queue},
        CELERY_TASK_DEFAULT_QUEUE=queue,
    )
    settings.configure(**values)
    setup_django()
    call_command("migrate", run_syncdb=True, verbosity=0)


@contextmanager
def app_handlers(on: bool) -> Iterator[None]:
    """Run with rendition-worker's model handlers connected (`on`) or not, then reconnect."""
    from django.db.models.signals import post_delete, post_init, post_save, pre_save
    from tests.testapp.models import Photo, Plain

    from rendition_worker import handlers

    if not on:
        handlers.disconnect()
    # (Dis)connecting clears the signals' per-sender receiver caches; refill them here, so
    # that the timed save does not pay a lookup a long-running process pays once.
    for signal in (post_init, pre_save, post_save, post_delete):
        signal.has_listeners(Photo)
        signal.has_listeners(Plain)
    try:
        yield
    finally:
        if not on:
            handlers.connect()


def timed_save(instance: models.Model, upload: bytes | None, name: str, timings: Timings) -> None:
    """Save `instance` in its own transaction (with a new image if `upload`); record times."""
    from django.core.files.base import ContentFile
    from django.db import transaction

    content = ContentFile(upload, name=name) if upload is not None else None
    marks: list[int] = []
    started = time.perf_counter_ns()
    with transaction.atomic():
        # Callbacks run in registration order: these two bracket the app's callbacks.
        transaction.on_commit(lambda: marks.append(time.perf_counter_ns()))
        if content is not None:
            instance.image = content  # type: ignore[attr-defined]
        instance.save()
        transaction.on_commit(lambda: marks.append(time.perf_counter_ns()))
    timings.total.append(time.perf_counter_ns() - started)
    timings.hooks.append(marks[1] - marks[0])


def time_parts(n: int, warmup: int, object_id: str) -> dict[str, float]:
    """Median ms of the app's parts of a changing save, each called alone, interleaved."""
    from celery.app import app_or_default

    from rendition_worker import registry
    from rendition_worker.services import broker
    from rendition_worker.services.changes import change_publish, change_record
    from rendition_worker.services.outbox import PUBLISH_TIMEOUT, publisher

    (entry,) = (e for e in registry.registered_fields() if e.key == "testapp.Photo.image")
    new, old = "photos/parts-new.jpg", "photos/parts-old.jpg"
    message = change_record(entry, object_id, old, new, using="default")
    connection = broker.broker_connection(PUBLISH_TIMEOUT, app_or_default(None))
    queue = broker.lane_queue(broker.INTERACTIVE)
    parts: dict[str, Callable[[], object]] = {
        "change_record (in the transaction)": lambda: change_record(
            entry, object_id, old, new, using="default"
        ),
        "change_publish (after commit)": lambda: change_publish(message),
        "the thread's publish (not waited for)": lambda: broker.publish(
            connection, message.task, message.kwargs, queue
        ),
    }
    timings: dict[str, list[int]] = {name: [] for name in parts}
    for i in range(warmup + n):
        names = list(parts)
        names = names[i % len(names) :] + names[: i % len(names)]
        for name in names:
            started = time.perf_counter_ns()
            parts[name]()
            if i >= warmup:
                timings[name].append(time.perf_counter_ns() - started)
    publisher.flush(60)
    connection.release()
    return {name: Timings.median_ms(values) for name, values in timings.items()}


@contextmanager
def broker_fault(kind: str) -> Iterator[None]:
    """Point the site's Celery app at a broker that is stopped or hanging, then back."""
    import socket

    from celery.app import app_or_default

    app: Any = app_or_default(None)  # its pool is private, broker_url typed read-only
    working = app.conf.broker_url
    listener = None
    if kind == "stopped":
        with socket.socket() as probe:  # a free port, closed again: connections are refused
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    else:
        # Listening, never accepting: the kernel completes the handshakes (backlog), then
        # nothing is ever read or answered, as behind a firewall that drops packets.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        port = listener.getsockname()[1]
    app.conf.broker_url = f"redis://127.0.0.1:{port}/0"
    app._pool = None
    try:
        yield
    finally:
        app.conf.broker_url = working
        app._pool = None
        if listener is not None:
            listener.close()


def bench_faults(n: int, with_app: models.Model, without_app: models.Model, upload: bytes,
                 handlers_on_without: bool) -> dict[str, tuple[Timings, Timings]]:  # fmt: skip
    """The changing saves, interleaved, during each broker fault: (with app, without)."""
    results: dict[str, tuple[Timings, Timings]] = {}
    for kind in ("stopped", "hanging"):
        with_timings, without_timings = Timings(), Timings()
        with broker_fault(kind):
            for i in range(n):
                sides = [(with_app, True, with_timings), (without_app, handlers_on_without,
                         without_timings)]  # fmt: skip
                if i % 2:
                    sides.reverse()
                for instance, handlers_on, timings in sides:
                    with app_handlers(on=handlers_on):
                        timed_save(instance, upload, f"{kind}{i}.jpg", timings)
        results[kind] = (with_timings, without_timings)
    return results


@dataclass
class Run:
    """Everything one benchmark run measured and counted."""

    n: int
    database: str
    baseline: str
    upload_bytes: int
    changed_with: Timings = field(default_factory=Timings)
    changed_without: Timings = field(default_factory=Timings)
    unchanged_with: Timings = field(default_factory=Timings)
    unchanged_without: Timings = field(default_factory=Timings)
    published: int = 0
    queued: int = 0
    tombstones: int = 0
    intents: int = 0
    parts: dict[str, float] = field(default_factory=dict)
    faults: dict[str, tuple[Timings, Timings]] = field(default_factory=dict)


def bench(n: int, warmup: int, database: str, baseline: str, upload: bytes, fault_n: int) -> Run:
    """Time the saves, interleaved; return the timings and what was published."""
    from celery.signals import after_task_publish
    from tests.testapp.models import Photo, Plain

    from rendition_worker.models import Intent, Tombstone
    from rendition_worker.services.outbox import publisher

    handlers_on_without = baseline == "plain"  # Plain has no handlers to disconnect
    with_app = Photo.objects.create(title="with app")
    with app_handlers(on=handlers_on_without):
        without_app: models.Model = (
            Plain.objects.create() if baseline == "plain" else Photo.objects.create()
        )
    # A first image on both rows, so that every timed change is a replacement (the path
    # that also writes a tombstone), not a first upload.
    timed_save(with_app, upload, "first.jpg", Timings())
    with app_handlers(on=handlers_on_without):
        timed_save(without_app, upload, "first.jpg", Timings())

    published: list[str] = []

    def count_publish(sender: object = None, **kwargs: Any) -> None:
        published.append(str(sender))

    after_task_publish.connect(count_publish, weak=False)
    run = Run(n, database, baseline, len(upload))
    tombstones_before = intents_before = 0
    for i in range(warmup + n):
        if i == warmup:  # the timed part starts: forget the warm-up's messages and timings
            publisher.flush(60)
            _purge_queue()
            published.clear()
            tombstones_before = Tombstone.objects.count()
            intents_before = Intent.objects.count()
            run = Run(n, database, baseline, len(upload))
        sides = [
            (with_app, True, run.changed_with, run.unchanged_with),
            (without_app, handlers_on_without, run.changed_without, run.unchanged_without),
        ]
        if i % 2:
            sides.reverse()
        for instance, handlers_on, changed, _ in sides:
            with app_handlers(on=handlers_on):
                timed_save(instance, upload, f"v{i}.jpg", changed)
        for instance, handlers_on, _, unchanged in sides:
            with app_handlers(on=handlers_on):
                timed_save(instance, None, "", unchanged)
    if not publisher.flush(120):
        sys.exit("the outbox publisher did not publish every message within 120 s")
    after_task_publish.disconnect(count_publish)
    run.published = len(published)
    run.queued = _queue_length()
    run.tombstones = Tombstone.objects.count() - tombstones_before
    # No worker takes them up here: every intent of a timed save is still recorded.
    run.intents = Intent.objects.count() - intents_before
    # After the counts: these publish and record too.
    run.parts = time_parts(n, warmup, str(with_app.pk))
    run.faults = bench_faults(fault_n, with_app, without_app, upload, handlers_on_without)
    return run


def _redis() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _require_redis() -> None:
    import redis
    from django.conf import settings

    try:
        _redis().ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis is not reachable at {settings.CELERY_BROKER_URL}: {exc}")


def _queue_keys(queue: str) -> list[str]:
    # kombu's Redis transport keeps priority levels > 0 in lists named queue + "\x06\x16" + n.
    return [queue] + [key.decode() for key in _redis().scan_iter(match=f"{queue}\x06\x16*")]


def _queue_length() -> int:
    from rendition_worker.conf import get_settings

    client = _redis()
    return sum(int(client.llen(key)) for key in _queue_keys(get_settings().queue))


def _purge_queue() -> None:
    from rendition_worker.conf import get_settings

    _redis().delete(*_queue_keys(get_settings().queue))


def delete_queue(queue: str) -> None:
    """Delete the benchmark queue's keys in Redis: its message lists and kombu's bindings."""
    keys = [*_queue_keys(queue), f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    _redis().delete(*keys)


def print_table(run: Run) -> list[str]:
    """Print the figures, the breakdown and the checks; return the targets missed."""
    without = "testapp.Plain" if run.baseline == "plain" else "Photo, app handlers disconnected"
    print(
        f"database: {run.database}; N = {run.n} timed saves per side and case; upload "
        f"{run.upload_bytes} bytes;\nwith app = testapp.Photo; without app = {without}"
    )
    header = (
        f"{'case':16} {'with med':>9} {'with p90':>9} {'w/o med':>9} {'w/o p90':>9} "
        f"{'ratio':>7} {'added ms':>9} {'on_commit ms':>13}  verdict"
    )
    print(header)
    print("-" * len(header))
    failures = []
    rows = [
        ("image changed", run.changed_with, run.changed_without, True),
        ("image unchanged", run.unchanged_with, run.unchanged_without, False),
    ]
    for label, with_app, without_app, enqueues in rows:
        ratio = with_app.median / without_app.median
        added = with_app.median - without_app.median
        missed = []
        if ratio >= TARGET_RATIO:
            missed.append(f"ratio >= {TARGET_RATIO}x")
        if enqueues and added >= TARGET_ADDED_MS:
            missed.append(f"added >= {TARGET_ADDED_MS} ms")
        verdict = "FAIL " + ", ".join(missed) if missed else "PASS"
        failures += [f"{label}: {miss}" for miss in missed]
        print(
            f"{label:16} {with_app.median:9.3f} {with_app.p90:9.3f} {without_app.median:9.3f} "
            f"{without_app.p90:9.3f} {ratio:6.2f}x {added:9.3f} "
            f"{Timings.median_ms(with_app.hooks):13.3f}  {verdict}"
        )
    for kind, (with_app, without_app) in run.faults.items():
        added = with_app.median - without_app.median
        label = f"broker {kind}"
        verdict = (
            "PASS" if added < TARGET_FAULT_ADDED_MS else f"FAIL added >= {TARGET_FAULT_ADDED_MS} ms"
        )
        if verdict != "PASS":
            failures.append(f"{label}: added >= {TARGET_FAULT_ADDED_MS} ms")
        print(
            f"{label:16} {with_app.median:9.3f} {with_app.p90:9.3f} {without_app.median:9.3f} "
            f"{without_app.p90:9.3f} {with_app.median / without_app.median:6.2f}x {added:9.3f} "
            f"{Timings.median_ms(with_app.hooks):13.3f}  {verdict}"
        )
    hooks = Timings.median_ms(run.changed_with.hooks)
    added = run.changed_with.median - run.changed_without.median
    print(
        f"\nwhere a changing save's added {added:.3f} ms go (medians, ms): the app's on_commit "
        f"callbacks {hooks:.3f}; handlers in save() (the INSERTs) and the rest "
        f"{added - hooks:.3f}.\nThe parts, each called alone (autocommit):"
    )
    for name, median in run.parts.items():
        print(f"  {name:34} {median:7.3f}")
    print(
        f"\nmessages published (after_task_publish): {run.published}; on the queue (LLEN): "
        f"{run.queued}; tombstone rows created: {run.tombstones}; intents recorded: "
        f"{run.intents}; expected each: {run.n} (one per changing save with the app, none "
        "for the others)"
    )
    if not run.published == run.queued == run.tombstones == run.intents == run.n:
        failures.append("the app did not publish and record exactly one per changing save")
    print(
        "\nwith/w/o med, p90: whole save() in its own atomic block, incl. COMMIT and on_commit "
        "callbacks, ms; ratio = with med / w/o med;\nadded = with med - w/o med; on_commit = "
        "the app's on_commit callbacks alone (with app).\n"
        f"Targets: ratio < {TARGET_RATIO}x in both cases, added < {TARGET_ADDED_MS} ms on the "
        "save that enqueues."
    )
    return failures


def main() -> None:
    """Parse arguments; set up database, media and queue; run, report, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("-n", "--iterations", type=int, default=300, help="timed saves per side")
    parser.add_argument("--warmup", type=int, default=30, help="untimed saves per side first")
    parser.add_argument(
        "--upload-kb",
        type=int,
        default=0,
        help="size of the uploaded file (default: a bare 64x48 JPEG, under 1 KB)",
    )
    parser.add_argument(
        "--baseline",
        choices=("disconnected", "plain"),
        default="disconnected",
        help="without app: Photo with the app's handlers disconnected, or testapp.Plain",
    )
    parser.add_argument(
        "--fault-n", type=int, default=50, help="changing saves per side per broker fault"
    )
    args = parser.parse_args()
    import redis

    token = f"{os.getpid()}_{time.time_ns()}"
    queue = f"rw-bench-save-{token}"
    db_name = f"rw_bench_save_{token}"
    workdir = Path(tempfile.mkdtemp(prefix="rw-bench-save-"))
    created_database = configured = False
    try:
        if args.database == "postgres":
            create_postgres_database(db_name)
            created_database = True
        configure_django(args.database, db_name, workdir, queue)
        configured = True
        _require_redis()
        # The test project's Celery app, set up as DESIGN.md tells users (CELERY_* from the
        # Django settings); importing it makes it the app the shared tasks publish through.
        import tests.celery_app  # noqa: F401

        upload = jpeg_bytes(args.upload_kb)
        run = bench(
            args.iterations, args.warmup, args.database, args.baseline, upload, args.fault_n
        )
        failures = print_table(run)
    finally:
        if configured:
            from django.db import connections

            with suppress(redis.RedisError):
                delete_queue(queue)
            connections.close_all()
        if created_database:
            drop_postgres_database(db_name)
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        sys.exit(1)
    print("\nPASS")


if __name__ == "__main__":
    main()
