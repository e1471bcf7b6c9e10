"""Benchmark: the reconciler's dry-run plan over 10k, 100k and 1M required renditions.

Data. Fresh PostgreSQL databases, one per size (the first migrated, the others copies of
it; all dropped at the end). One registered field, `testapp.Photo.image`, with one set of
exactly 10 specs (widths 320, 640, 960, 1280, 1920 x avif, jpeg). For each size, N =
pairs / 10 sources are bulk-loaded with COPY into `testapp_photo`, `rendition_worker_source`
and `rendition_worker_rendition`, then VACUUM ANALYZEd and CHECKPOINTed, as a real site's
settled tables would be. Source rows are ready with a digest; rendition names are the exact
names the app gives (`naming.rendition_name` of `source_key(SourceRef(...).identity,
digest)` with the settings' encoder fingerprint), so a loaded rendition counts as present.
Per 1,000 sources (by source index modulo 1,000):
- 50 sources lack the row of one required spec: 50 missing pairs;
- 5 sources had their image replaced by `update()`: their Source row and 10 rendition rows
  are of the previous file, so 50 rows are obsolete and their 50 required pairs missing;
- 30 sources keep a row of a spec no longer in the set (`width-2560|format-avif`): 30
  obsolete rows;
- 2 Source rows (10 renditions each) belong to Photo rows that were deleted: 20 obsolete
  rows, found by the "gone" phase;
- 50 sources have one ready, current rendition row whose file is absent: 50 broken rows.
So missing = 1% and obsolete = 1% of the required pairs, broken = 0.5%. On disk (only for
the files dataset, see below) every rendition row has a file except the broken ones, plus
orphans: files named by the naming scheme (keys of sources that have no row) with no row,
one per 100 required pairs (1%). ORPHAN_GRACE is 0, so every orphan counts.

What is timed. Each measurement runs in a fresh child process (same settings, same
database), so that its peak RSS (VmHWM of /proc/self/status) is the plan's own; the child
opens its connection and fills the content-type cache before the clock starts, reports
its RSS then ("RSS0"), and the growth during the plan (VmHWM - RSS0). The steps are
`Reconciler(dry_run=True).step(cursor)` driven in a loop exactly as `Reconciler.run()`
drives them, with perf_counter around them:
- "DB plan": phases required + gone, at every size: the database part, rows read in
  batches of BATCH_SIZE sources and planned with `plan_sources`. Every size is loaded
  first, then 3 rounds (`--repeat`) run one child per size in turn, so that drift on this
  shared machine hits every size alike; per size the fastest counts, the slowest is shown,
  peak RSS is the highest. The median time of a full batch shows whether a step's cost
  depends on the table's size (it should not: that is what makes the whole linear).
- "files phase": the 256 shard steps, once per size. Files exist only for the files
  dataset (`--files-size`, default the 100k-pairs size: 10k sources, ~100k files, as the
  issue asks; empty files, in the system's temp folder unless `--media-dir`). At the
  other sizes the storage is empty, so every current ready row reads as broken (checked),
  which also makes planning costlier than on a healthy storage. In the same child, after
  the phase: its row reading alone ("rows s": the step's own reader,
  `Reconciler._recorded_files`, over every shard; it scales with rows, which every size
  has), then a bare listing walk of the same shards ("listing s": `listing.list_files`).
- "whole dry run": `Reconciler(dry_run=True).run()`, what `renditions reconcile --dry-run
  --json` runs, measured on the files dataset, its report checked key by key. At sizes
  without files it is estimated: DB plan + rows s, both measured at that size, + (phase s
  - rows s) of the files dataset per file on its disk, times the files the size would have
  (a slight overestimate: per-shard fixed costs are scaled too). `--files-size 1000000`
  measures it at 1M instead (1M files: minutes to write on this VM's disk, ~30 s on tmpfs
  with `--media-dir /dev/shm`; listing a warm tree costs about the same on both).
The database and the file tree were just written, so PostgreSQL's and the OS's caches are
warm: this is the planning cost, not a cold disk's.

Checks. Every count reported is compared with what was loaded (sources, required,
present, missing, obsolete, failed, orphans, broken, files listed); a mismatch is a bug in
the reconciler and fails the run. Targets (the issue): 1M required pairs planned in under
20 s, checked on the DB plan and on the whole dry run (measured, else estimated); peak RSS
under 1 GB in every child; growth no worse than linear: DB plan time ratio over size ratio
between consecutive sizes <= 1.2 (20% for noise on a shared machine). For scale, a site's
notebook planned 21,922 pairs in 0.14 + 0.02 s, 7.3 us a pair, with everything loaded
into memory; "x nb" is our us a pair over that. A size that misses a target has what
missed (its DB plan; its whole dry run, or without files its files phase) run again under
cProfile (`--profile`: every size's DB plan), and the top of it printed at the end.

Run: `python benchmarks/reconcile.py [--sizes 10000,100000,1000000] [--files-size 100000]`
from the project root; needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support import (
    PG_ADMIN,
    create_postgres_database,
    current_rss_mb,
    drop_postgres_database,
    peak_rss_mb,
)

if TYPE_CHECKING:
    from rendition_worker.core.specs import Spec

ROOT = Path(__file__).resolve().parent.parent
FIELD_KEY = "testapp.Photo.image"
WIDTHS = (320, 640, 960, 1280, 1920)
FORMATS = ("avif", "jpeg")
SPECS_PER_SOURCE = len(WIDTHS) * len(FORMATS)
REMOVED_SPEC = "width-2560|format-avif"
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_FILES_SIZE = 100_000
# The dataset's shape, per 1,000 sources (source index modulo 1,000); see the docstring.
ONE_MISSING = range(0, 50)
REPLACED = range(50, 55)
REMOVED = range(55, 85)
BROKEN = range(100, 150)
DELETED_PER_1000 = 2
ORPHANS_PER_PAIR = 0.01
# Targets (the issue).
TARGET_PAIRS = 1_000_000
TARGET_SECONDS = 20.0
TARGET_RSS_MB = 1024.0
TARGET_GROWTH = 1.2
NOTEBOOK_US_PER_PAIR = (0.14 + 0.02) / 21_922 * 1e6
STAMP = "2026-01-01 00:00:00+00"
COPY_CHUNK = 1 << 20


# Setup ------------------------------------------------------------------------------------


def configure_django(db_name: str, media: Path, *, migrate: bool) -> None:
    """Set Django up on tests.settings with a database and media of this run, one 10-spec set."""
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    from django import setup as setup_django
    from django.conf import settings
    from django.core.management import call_command
    from tests import settings as test_settings

    # tests.settings makes a temp folder on import; this run keeps its files elsewhere.
    shutil.rmtree(test_settings._RUN_DIR, ignore_errors=True)
    values = {name: getattr(test_settings, name) for name in dir(test_settings) if name.isupper()}
    values.update(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": db_name,
                "USER": PG_ADMIN["user"],
                "HOST": PG_ADMIN["host"],
                "PORT": str(PG_ADMIN["port"]),
            }
        },
        # A dry run touches no cache; a local one keeps the benchmark off the shared Redis.
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        MEDIA_ROOT=str(media),
        RENDITION_WORKER={
            "SETS": {"bench": {"widths": list(WIDTHS), "formats": list(FORMATS)}},
            "FIELDS": {FIELD_KEY: ["bench"]},
            "ORPHAN_GRACE": 0,
            "QUEUE": f"rw-bench-reconcile-{os.getpid()}",
            "BULK_QUEUE": f"rw-bench-reconcile-{os.getpid()}.bulk",
        },
    )
    settings.configure(**values)
    setup_django()
    if migrate:
        call_command("migrate", run_syncdb=True, verbosity=0)


# The dataset ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecInfo:
    """One spec as rendition rows store it."""

    spec: Spec
    text: str
    format: str


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One Source row to load, and its Photo row's image (None: the Photo row was deleted)."""

    pk: int
    object_id: int
    photo_image: str | None
    name: str
    digest: str
    kind: int  # source index modulo 1,000; -1 for the Source rows of deleted photos


@dataclass
class Expected:
    """What was loaded, counted while loading: what the reconciler must find."""

    sources: int = 0
    required: int = 0
    missing: int = 0
    obsolete: int = 0
    broken: int = 0
    orphans: int = 0
    rows: int = 0
    current_rows: int = 0  # ready rows of a required spec, made from their Source's file
    files: int = 0

    @property
    def present(self) -> int:
        """Required pairs with a ready row of the expected name (broken ones included)."""
        return self.required - self.missing


class Dataset:
    """The synthetic rows of one size: deterministic, so generated in passes, never held."""

    def __init__(self, pairs: int) -> None:
        from django.contrib.contenttypes.models import ContentType
        from tests.testapp.models import Photo

        from rendition_worker.conf import get_settings
        from rendition_worker.core.specs import parse_spec

        settings = get_settings().require_valid()
        specs = settings.specs_for(FIELD_KEY)
        if len(specs) != SPECS_PER_SOURCE or pairs % (SPECS_PER_SOURCE * 1000):
            raise SystemExit(f"sizes must be multiples of {SPECS_PER_SOURCE * 1000:,} pairs")
        self.specs = [SpecInfo(spec, str(spec), str(spec.format)) for spec in specs]
        removed = parse_spec(REMOVED_SPEC)
        self.removed = SpecInfo(removed, str(removed), str(removed.format))
        self.n_sources = pairs // SPECS_PER_SOURCE
        self.path = settings.path
        self.fingerprint = settings.encoder.fingerprint
        self.model_label = Photo._meta.label_lower
        self.content_type_id = ContentType.objects.get_for_model(Photo).pk
        self.expected = Expected()
        self.table_mb = 0.0

    def sources(self) -> Iterator[SourceRow]:
        """Every Source row: one per photo, then those of deleted photos."""
        for index in range(self.n_sources):
            kind = index % 1000
            current = f"photos/p{index:07d}.jpg"
            made_from = f"photos/p{index:07d}-old.jpg" if kind in REPLACED else current
            yield SourceRow(index + 1, index + 1, current, made_from, _digest(made_from), kind)
        for offset in range(self.n_sources // 1000 * DELETED_PER_1000):
            pk = self.n_sources + offset + 1
            made_from = f"photos/gone{offset:07d}.jpg"
            yield SourceRow(pk, pk, None, made_from, _digest(made_from), -1)

    def renditions(self, source: SourceRow) -> Iterator[tuple[SpecInfo, str, bool]]:
        """(spec, name, whether its file exists) of each rendition row of `source`."""
        from rendition_worker.core.naming import source_key
        from rendition_worker.core.planner import SourceRef

        ref = SourceRef(self.model_label, str(source.object_id), "image")
        key = source_key(ref.identity, source.digest)
        specs = list(self.specs)
        if source.kind in ONE_MISSING:
            del specs[source.kind % SPECS_PER_SOURCE]
        broken = self.specs[source.kind % SPECS_PER_SOURCE] if source.kind in BROKEN else None
        if source.kind in REMOVED:
            specs.append(self.removed)
        for info in specs:
            yield info, self._name(key, source.name, info), info is not broken

    def _name(self, key: str, source_name: str, info: SpecInfo) -> str:
        from rendition_worker.core.naming import rendition_name

        return rendition_name(
            path=self.path,
            key=key,
            source_name=source_name,
            spec=info.spec,
            output_format=info.format,
            fingerprint=self.fingerprint,
        )

    def orphan_names(self) -> Iterator[str]:
        """Names of our scheme for sources that have no row at all."""
        from rendition_worker.core.naming import source_key

        for index in range(round(self.n_sources * SPECS_PER_SOURCE * ORPHANS_PER_PAIR)):
            key = source_key(f"{self.model_label}:orphan{index}:image", _digest(str(index)))
            info = self.specs[index % SPECS_PER_SOURCE]
            yield self._name(key, f"photos/orphan{index}.jpg", info)

    def load(self, dsn: dict[str, Any], *, keep_names: bool) -> list[str]:
        """COPY the rows in, counting what is expected; return the names that have files."""
        import psycopg

        expected = self.expected = Expected()
        file_names: list[str] = []
        photos, sources = io.StringIO(), io.StringIO()
        for source in self.sources():
            if source.photo_image is not None:
                photos.write(f"{source.object_id}\tphoto {source.object_id}\t")
                photos.write(f"{source.photo_image}\t\n")
                expected.sources += 1
                expected.required += SPECS_PER_SOURCE
            sources.write(
                f"{source.pk}\t{self.content_type_id}\t{source.object_id}\timage\t"
                f"{source.name}\t{source.digest}\tready\t\t\t{STAMP}\t\t\n"
            )
        with psycopg.connect(**dsn) as connection, connection.cursor() as cursor:
            _copy(cursor, "testapp_photo (id, title, image, cover)", [photos.getvalue()])
            _copy(
                cursor,
                "rendition_worker_source (id, content_type_id, object_id, field, name, digest,"
                " state, error, claim, updated_at, placeholder_color, placeholder_uri)",
                [sources.getvalue()],
            )
            _copy(
                cursor,
                "rendition_worker_rendition (id, source_id, spec, source_name, state, name,"
                " format, width, size, created_at)",
                self._rendition_lines(file_names if keep_names else None),
            )
            for table in ("testapp_photo", "rendition_worker_source", "rendition_worker_rendition"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
        with psycopg.connect(**dsn, autocommit=True) as connection:
            connection.execute(
                "VACUUM ANALYZE testapp_photo, rendition_worker_source, rendition_worker_rendition"
            )
            # Without it the first reads evict the pages VACUUM dirtied, writing them out:
            # a cost of having just loaded, which a site's settled tables do not pay.
            connection.execute("CHECKPOINT")
            row = connection.execute(
                "SELECT sum(pg_total_relation_size(relid)) FROM pg_stat_user_tables"
                " WHERE relname IN ('testapp_photo', 'rendition_worker_source',"
                " 'rendition_worker_rendition')"
            ).fetchone()
            self.table_mb = float(row[0] if row else 0) / 2**20
        return file_names

    def _rendition_lines(self, file_names: list[str] | None) -> Iterator[str]:
        """COPY lines of every rendition row; counts them into `expected` as they go."""
        expected = self.expected
        required_specs = {info.text for info in self.specs}
        pk = 0
        for source in self.sources():
            present = 0
            for info, name, has_file in self.renditions(source):
                pk += 1
                expected.rows += 1
                is_required = info.text in required_specs
                expected.current_rows += is_required
                if source.kind < 0 or source.kind in REPLACED or not is_required:
                    expected.obsolete += 1
                else:
                    present += 1
                if not has_file:
                    expected.broken += 1
                elif file_names is not None:
                    file_names.append(name)
                yield (
                    f"{pk}\t{source.pk}\t{info.text}\t{source.name}\tready\t{name}\t"
                    f"{info.format}\t640\t1000\t{STAMP}\n"
                )
            if source.kind >= 0:
                expected.missing += SPECS_PER_SOURCE - present

    def write_files(self, root: Path, file_names: list[str]) -> None:
        """Write the (empty) files of the rows that have one, and the orphans, under `root`."""
        orphans = list(self.orphan_names())
        made: set[Path] = set()
        for name in [*file_names, *orphans]:
            target = root / name
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            target.touch()
        self.expected.orphans = len(orphans)
        self.expected.files = len(file_names) + len(orphans)


def _digest(text: str) -> str:
    return sha256(text.encode()).hexdigest()


def _copy(cursor: Any, target: str, lines: Iterable[str]) -> None:
    """COPY text-format `lines` into `target`, written in chunks of about 1 MB."""
    with cursor.copy(f"COPY {target} FROM STDIN") as copy:
        buffer: list[str] = []
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            if size >= COPY_CHUNK:
                copy.write("".join(buffer))
                buffer, size = [], 0
        if buffer:
            copy.write("".join(buffer))


# The child: one measurement in a fresh process ----------------------------------------------


def _counts(counter: Counter[str]) -> dict[str, int]:
    return {key: value for key, value in counter.items() if key != "items"}


def child_db(*, extras: bool) -> dict[str, Any]:
    """Phases required + gone of a dry run, step by step as `Reconciler.run()` does them."""
    from rendition_worker.services.reconcile import Cursor, Reconciler

    reconciler = Reconciler(dry_run=True)
    totals: Counter[str] = Counter()
    phases: dict[str, float] = {"required": 0.0, "gone": 0.0}
    step_s: dict[str, list[float]] = {"required": [], "gone": []}
    steps = 0
    cursor: Cursor | None = {"phase": "required"}
    started = time.perf_counter()
    while cursor is not None and cursor["phase"] in phases:
        phase = cursor["phase"]
        step_started = time.perf_counter()
        counts, cursor = reconciler.step(cursor)
        phases[phase] += time.perf_counter() - step_started
        if counts.get("items") == reconciler.batch_size:  # a full batch: the same work
            step_s[phase].append(time.perf_counter() - step_started)
        totals.update(counts)
        steps += 1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "phases": phases,
        "steps": steps,
        "step_s": step_s,
        "counts": _counts(totals),
    }


def child_files(*, extras: bool) -> dict[str, Any]:
    """The files phase (256 shard steps); then its row reading alone; then a bare listing."""
    from rendition_worker import registry
    from rendition_worker.conf import get_settings
    from rendition_worker.listing import list_files
    from rendition_worker.models import Rendition
    from rendition_worker.services.reconcile import SHARDS, Cursor, Reconciler

    reconciler = Reconciler(dry_run=True)
    totals: Counter[str] = Counter()
    steps = 0
    cursor: Cursor | None = {"phase": "files", "storage": 0, "shard": 0}
    started = time.perf_counter()
    while cursor is not None and cursor["phase"] == "files":
        counts, cursor = reconciler.step(cursor)
        totals.update(counts)
        steps += 1
    seconds = time.perf_counter() - started
    found = {"seconds": seconds, "steps": steps, "counts": _counts(totals)}
    if not extras:  # under a profiler: the phase alone
        return {**found, "rows_s": 0.0, "listing_s": 0.0, "listed": 0}
    path = get_settings().path
    # The rows side alone, as the step reads it (the names of one shard folder): it scales
    # with the rows, the rest of the step with the files, and only the rows exist at every size.
    ((storage_ref, _),) = reconciler._storages()
    started = time.perf_counter()
    for shard in SHARDS:
        prefix = f"{path}/{shard}/"
        set(Rendition.objects.filter(name__startswith=prefix).values_list("name", flat=True))
    rows = time.perf_counter() - started
    storage = registry.storage_for(storage_ref)
    started = time.perf_counter()
    listed = sum(1 for shard in SHARDS for _ in list_files(storage, f"{path}/{shard}/"))
    listing = time.perf_counter() - started
    return {**found, "rows_s": rows, "listing_s": listing, "listed": listed}


def child_full(*, extras: bool) -> dict[str, Any]:
    """`Reconciler(dry_run=True).run()`: what `renditions reconcile --dry-run --json` prints."""
    from rendition_worker.services.reconcile import Reconciler

    started = time.perf_counter()
    report = Reconciler(dry_run=True).run()
    return {"seconds": time.perf_counter() - started, "report": report.as_dict()}


# Messages a second the stand-in workers of `child_enqueue` take off the bulk queue: slower
# than the reconciler enqueues, so the queue fills up to its bound.
DRAIN_PER_SECOND = 500


def child_enqueue(*, extras: bool) -> dict[str, Any]:
    """Phase required for real, enqueueing onto a Redis bulk queue that drains slowly.

    Twice: as `renditions reconcile` enqueues (`tasks.PacedBackfill`), then with the beat
    chain's rule (a step only while fewer than BULK_MAX_QUEUED wait); the queue's length is
    sampled meanwhile. Not a dry run: it deletes the obsolete rows, so it runs last.
    """
    import threading

    import redis
    import tests.celery_app  # noqa: F401  # the app the shared tasks publish through
    from django.conf import settings as django_settings

    from rendition_worker import tasks
    from rendition_worker.conf import get_settings
    from rendition_worker.services.reconcile import Cursor, Reconciler

    queue = get_settings().bulk_queue
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete(queue)
    longest = [0]
    stop = threading.Event()

    def drain() -> None:
        # Stand-in workers: take messages off the queue at a fixed rate, and sample.
        tick = 0.01
        while not stop.wait(tick):
            client.rpop(queue, max(1, int(DRAIN_PER_SECOND * tick)))
            longest[0] = max(longest[0], int(client.llen(queue)))

    def required_phase(enqueue: Any, before_step: Any = None) -> dict[str, Any]:
        longest[0] = 0
        reconciler = Reconciler(enqueue=enqueue)
        enqueued = 0
        cursor: Cursor | None = {"phase": "required"}
        started = time.perf_counter()
        while cursor is not None and cursor["phase"] == "required":
            if before_step is not None:
                before_step()
            counts, cursor = reconciler.step(cursor)
            enqueued += counts["enqueued"]
        # Until the queue is empty, so that the next run starts from nothing.
        while client.llen(queue):
            time.sleep(0.05)
        return {
            "enqueued": enqueued,
            "longest": longest[0],
            "seconds": time.perf_counter() - started,
        }

    def chain_rule() -> None:
        while (
            waiting := tasks.bulk_waiting()
        ) is None or waiting >= get_settings().bulk_max_queued:
            time.sleep(0.2)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        command = required_phase(tasks.PacedBackfill())
        chain = required_phase(tasks.enqueue_backfill, chain_rule)
    finally:
        stop.set()
        drainer.join()
        client.delete(queue)
    return {
        "command": command,
        "chain": chain,
        "bulk_max_queued": get_settings().bulk_max_queued,
        "check_every": tasks.PacedBackfill.CHECK_EVERY,
    }


# Each takes `extras`: whether to run its extra measurements after the timed part (off
# under a profiler, so that a profile shows the timed part alone).
CHILDREN = {"db": child_db, "files": child_files, "full": child_full, "enqueue": child_enqueue}


def run_child_here(mode: str, db_name: str, media: Path, profile: Path | None) -> None:
    """In the child: set up, warm the connection, measure one mode, print one JSON line."""
    configure_django(db_name, media, migrate=False)
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection
    from tests.testapp.models import Photo

    from rendition_worker.models import Rendition, Source
    from rendition_worker.services import reconcile

    connection.ensure_connection()
    ContentType.objects.get_for_model(Photo)
    for model in (Photo, Source, Rendition):
        model._default_manager.exists()
    before = current_rss_mb()
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    result = CHILDREN[mode](extras=profiler is None)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    result.update(rss_before_mb=before, peak_mb=peak_rss_mb(), batch=reconcile.BATCH_SIZE)
    print(json.dumps(result))


def run_child(mode: str, size: Loaded, profile: Path | None = None) -> Any:
    """Run one measurement on a loaded size in a fresh interpreter; return its JSON."""
    command = [sys.executable, __file__, "--child", mode, "--db", size.db_name]
    command += ["--media", str(size.media)]
    if profile is not None:
        command += ["--profile-to", str(profile)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"child {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_profile(path: Path, title: str, limit: int = 25) -> str:
    """The top of a child's profile, by internal time and by cumulative time."""
    parts = [f"--- cProfile of {title}; times inflated by profiling ---"]
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).strip_dirs().sort_stats(order).print_stats(limit)
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        total = next((line.strip() for line in lines if "function calls" in line), "")
        parts.append(f"by {order} ({total}):")
        parts += [line for line in lines[start:] if line.strip()]
    return "\n".join(parts)


# The parent --------------------------------------------------------------------------------


@dataclass
class Loaded:
    """One size, loaded into its own database (and media folder)."""

    pairs: int
    db_name: str
    media: Path
    with_files: bool
    expected: Expected = field(default_factory=Expected)
    sources: int = 0
    load_s: float = 0.0
    files_s: float = 0.0
    table_mb: float = 0.0

    def load(self) -> None:
        """COPY the rows in (and write the files); time both; count what is expected."""
        dataset = Dataset(self.pairs)
        self.media.mkdir(parents=True)
        started = time.perf_counter()
        file_names = dataset.load({**PG_ADMIN, "dbname": self.db_name}, keep_names=self.with_files)
        self.load_s = time.perf_counter() - started
        if self.with_files:
            started = time.perf_counter()
            dataset.write_files(self.media, file_names)
            self.files_s = time.perf_counter() - started
        self.expected, self.sources = dataset.expected, dataset.n_sources
        self.table_mb = dataset.table_mb
        print(
            f"... {self.pairs:,} pairs: loaded {self.expected.rows:,} rendition rows in "
            f"{self.load_s:.1f} s"
            + (
                f", wrote {self.expected.files:,} files in {self.files_s:.1f} s"
                if self.files_s
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )


@dataclass
class SizeResult:
    """Everything measured and counted for one size."""

    size: Loaded
    db: dict[str, Any]
    files: dict[str, Any]
    full: dict[str, Any] | None = None
    misses: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    estimate: float | None = None  # whole dry run, when not measured (see `estimate_full`)

    @property
    def pairs(self) -> int:
        """Required pairs of this size."""
        return self.size.pairs

    @property
    def expected(self) -> Expected:
        """What was loaded."""
        return self.size.expected

    @property
    def with_files(self) -> bool:
        """Whether its rendition files are on disk."""
        return self.size.with_files

    @property
    def us_per_pair(self) -> float:
        """DB plan microseconds per required pair."""
        return float(self.db["seconds"]) / self.pairs * 1e6


def measure(sizes: list[Loaded], repeat: int) -> list[SizeResult]:
    """The DB plan `repeat` times per size, round-robin; then the files phase, the full run."""
    # Round-robin: drift on a shared machine (other tenants, the disk's own work) then
    # lands on every size alike instead of on whichever ran last.
    runs: dict[int, list[dict[str, Any]]] = {size.pairs: [] for size in sizes}
    for _ in range(repeat):
        for size in sizes:
            runs[size.pairs].append(run_child("db", size))
    results = []
    for size in sizes:
        best: dict[str, Any] = min(runs[size.pairs], key=lambda run: float(run["seconds"]))
        best["peak_mb"] = max(float(run["peak_mb"]) for run in runs[size.pairs])
        best["runs_s"] = [float(run["seconds"]) for run in runs[size.pairs]]
        result = SizeResult(size, db=best, files=run_child("files", size))
        if size.with_files:
            result.full = run_child("full", size)
        results.append(result)
    return results


def profile_misses(result: SizeResult, workdir: Path, *, always: bool) -> None:
    """Run what missed a target again under cProfile; keep the top of it for the report."""
    why = "--profile" if always else "missed: " + ", ".join(result.misses)
    modes = []
    if always or any("DB plan" in miss or "growth" in miss for miss in result.misses):
        modes.append("db")
    if any("whole dry run" in miss for miss in result.misses):
        # Without files on disk, the files phase is the unmeasured part of the whole run.
        modes.append("full" if result.full is not None else "files")
    titles = {"db": "the DB plan", "files": "the files phase", "full": "the whole dry run"}
    for mode in modes:
        target = workdir / f"{mode}-{result.pairs}.prof"
        run_child(mode, result.size, profile=target)
        title = f"{titles[mode]} at {result.pairs:,} pairs ({why})"
        result.profiles.append(format_profile(target, title))


def growth(previous: SizeResult, result: SizeResult, part: str = "db") -> float:
    """Time ratio over size ratio between two consecutive sizes (1.0 = linear)."""
    before: dict[str, Any] = getattr(previous, part)
    now: dict[str, Any] = getattr(result, part)
    return float(now["seconds"]) / float(before["seconds"]) / (result.pairs / previous.pairs)


COUNT_KEYS = (
    "sources",
    "required",
    "present",
    "missing",
    "obsolete",
    "failed",
    "orphans",
    "broken",
    "listed",
)


def expected_counts(result: SizeResult) -> list[tuple[str, dict[str, int], dict[str, int]]]:
    """(measurement, expected, found) for each child; a mismatch is a bug in src."""
    exp = result.expected
    db = dict.fromkeys(("orphans", "broken", "failed"), 0)
    db.update(
        sources=exp.sources,
        required=exp.required,
        present=exp.present,
        missing=exp.missing,
        obsolete=exp.obsolete,
    )
    files = dict.fromkeys(("sources", "required", "present", "missing", "obsolete", "failed"), 0)
    if result.with_files:
        files.update(orphans=exp.orphans, broken=exp.broken, listed=exp.files)
    else:  # an empty storage: every current ready row is broken
        files.update(orphans=0, broken=exp.current_rows, listed=0)
    files_found = {**result.files["counts"], "listed": result.files["listed"]}
    rows = [
        ("DB plan", db, {key: result.db["counts"].get(key, 0) for key in db}),
        ("files phase", files, {key: files_found.get(key, 0) for key in files}),
    ]
    if result.full is not None:
        full = {
            **db,
            "present": exp.present - exp.broken,
            "orphans": exp.orphans,
            "broken": exp.broken,
            "enqueued": 0,
            "generated": 0,
            "deleted_rows": 0,
            "deleted_files": 0,
        }
        report = result.full["report"]
        rows.append(("full run()", full, {key: report[key] for key in full}))
    return rows


def estimate_full(largest: SizeResult, measured: SizeResult) -> float:
    """A whole dry run of `largest` from its measured parts and `measured`'s files side.

    DB plan + files-phase rows side, both measured at `largest`, + the rest of the files
    phase (listing, planning, per-shard queries of tombstones) measured on `measured`'s
    files, scaled by the number of files `largest` would have. Scaling the per-shard fixed
    costs too makes it a slight overestimate.
    """
    files = largest.expected.rows - largest.expected.broken
    files += round(largest.pairs * ORPHANS_PER_PAIR)
    per_file = (measured.files["seconds"] - measured.files["rows_s"]) / measured.expected.files
    return float(largest.db["seconds"] + largest.files["rows_s"] + per_file * files)


def evaluate(results: list[SizeResult]) -> list[str]:
    """Set each size's missed targets afresh; return every failure (targets and counts)."""
    failures: list[str] = []
    previous: SizeResult | None = None
    measured = next((result for result in results if result.with_files), None)
    for result in results:
        result.misses.clear()
        if result.pairs == TARGET_PAIRS:
            if result.db["seconds"] >= TARGET_SECONDS:
                result.misses.append(f"DB plan >= {TARGET_SECONDS:.0f} s")
            if result.full is not None and result.full["seconds"] >= TARGET_SECONDS:
                result.misses.append(f"whole dry run >= {TARGET_SECONDS:.0f} s")
            if result.full is None and measured is not None:
                result.estimate = estimate_full(result, measured)
                if result.estimate >= TARGET_SECONDS:
                    result.misses.append(f"whole dry run >= {TARGET_SECONDS:.0f} s (estimated)")
        children = [result.db, result.files, *([result.full] if result.full else [])]
        if max(child["peak_mb"] for child in children) >= TARGET_RSS_MB:
            result.misses.append(f"peak RSS >= {TARGET_RSS_MB:.0f} MB")
        if previous is not None and growth(previous, result) > TARGET_GROWTH:
            result.misses.append(f"growth > {TARGET_GROWTH}")
        label = f"{result.pairs:,} pairs"
        failures += [f"{label}: {miss}" for miss in result.misses]
        for where, expected, found in expected_counts(result):
            failures += [
                f"{label}: {where} {key} = {found[key]:,}, expected {value:,}"
                for key, value in expected.items()
                if found[key] != value
            ]
        previous = result
    return failures


def print_report(results: list[SizeResult]) -> None:
    """The tables: DB plan and files phase per size, whole dry runs, counts, profiles."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        row = cursor.fetchone()
    print(
        f"PostgreSQL {row[0] if row else '?'}; {SPECS_PER_SOURCE} specs per source "
        f"({len(WIDTHS)} widths x {'/'.join(FORMATS)}); BATCH_SIZE "
        f"{results[0].db['batch']:,} sources; dry run; warm caches.\n"
    )
    print("DB plan (phases required + gone), one fresh process per size:")
    header = (
        f"{'pairs':>9} {'sources':>7} {'rows':>9} {'DB MB':>5} {'load s':>6} {'plan s':>6}"
        f" {'worst':>5} {'required':>8} {'gone':>5} {'steps':>5} {'step ms':>7} {'us/pair':>7}"
        f" {'x nb':>4} {'RSS0 MB':>7} {'peak MB':>7} {'+MB':>4} {'growth':>6}  verdict"
    )
    print(header)
    print("-" * len(header))
    previous: SizeResult | None = None
    for result in results:
        db = result.db
        factor = f"{growth(previous, result):5.2f}x" if previous else f"{'-':>6}"
        print(
            f"{result.pairs:>9,} {result.size.sources:>7,} {result.expected.rows:>9,} "
            f"{result.size.table_mb:5.0f} {result.size.load_s:6.1f} {db['seconds']:6.2f} "
            f"{max(db['runs_s']):5.2f} {db['phases']['required']:8.2f} "
            f"{db['phases']['gone']:5.2f} {db['steps']:5d} "
            f"{_median_ms(db['step_s']['required'])} {result.us_per_pair:7.1f} "
            f"{result.us_per_pair / NOTEBOOK_US_PER_PAIR:4.1f} {db['rss_before_mb']:7.0f} "
            f"{db['peak_mb']:7.0f} {db['peak_mb'] - db['rss_before_mb']:4.0f} {factor}  "
            f"{'FAIL: ' + ', '.join(result.misses) if result.misses else 'PASS'}"
        )
        previous = result
    print("\nFiles phase (256 shard steps), one fresh process per size:")
    header = (
        f"{'pairs':>9} {'storage':>13} {'listed':>9} {'phase s':>7} {'rows s':>6} {'listing s':>9}"
        f" {'us/row':>6} {'RSS0 MB':>7} {'peak MB':>7} {'+MB':>4} {'growth':>6}"
    )
    print(header)
    print("-" * len(header))
    previous = None
    for result in results:
        files = result.files
        factor = f"{growth(previous, result, 'files'):5.2f}x" if previous else f"{'-':>6}"
        print(
            f"{result.pairs:>9,} {'files on disk' if result.with_files else 'empty':>13} "
            f"{files['listed']:>9,} {files['seconds']:7.2f} {files['rows_s']:6.2f} "
            f"{files['listing_s']:9.2f} {files['seconds'] / result.expected.rows * 1e6:6.1f} "
            f"{files['rss_before_mb']:7.0f} {files['peak_mb']:7.0f} "
            f"{files['peak_mb'] - files['rss_before_mb']:4.0f} {factor}"
        )
        previous = result
    print("\nWhole dry run, `Reconciler(dry_run=True).run()` (`renditions reconcile --dry-run`):")
    for result in results:
        if result.full is not None:
            full = result.full
            print(
                f"  {result.pairs:>9,} pairs, {result.expected.files:,} files on disk (written "
                f"in {result.size.files_s:.1f} s): measured {full['seconds']:.2f} s, peak RSS "
                f"{full['peak_mb']:.0f} MB (+{full['peak_mb'] - full['rss_before_mb']:.0f} MB); "
                f"its report:\n    {json.dumps(full['report'])}"
            )
        if result.estimate is not None:
            print(
                f"  {result.pairs:>9,} pairs: estimated {result.estimate:.1f} s = DB plan "
                f"{result.db['seconds']:.2f} s + files-phase rows side "
                f"{result.files['rows_s']:.2f} s + the rest of the files phase per file on disk"
                " (measured above) x the files it would have"
            )
    print_counts(results)
    legend = (
        f"DB MB = the three tables with their indexes (shared_buffers {_shared_buffers()}); "
        "load s = COPY of them + VACUUM ANALYZE + CHECKPOINT;",
        "plan s = phases required + gone of a dry run, the fastest run; worst = the slowest; "
        "required, gone = each phase of the fastest;",
        "step ms = median time of a full batch of the required phase; us/pair = plan s / "
        f"required pairs; x nb = us/pair / the notebook's {NOTEBOOK_US_PER_PAIR:.1f};",
        "RSS0 = the child's RSS before the plan; peak = its VmHWM; +MB = peak - RSS0; growth = "
        "time ratio / size ratio to the previous size.",
        "Files phase: empty = no file on disk, so every current row reads as broken; rows s = "
        "the phase's row reading alone;",
        "listing s = a bare walk of the 256 shards; us/row = phase s / rendition rows.",
        f"Targets: {TARGET_PAIRS:,} pairs planned in < {TARGET_SECONDS:.0f} s (the DB plan, and "
        "the whole dry run: measured, or else estimated);",
        f"peak RSS < {TARGET_RSS_MB:.0f} MB in every child; DB plan growth <= {TARGET_GROWTH} "
        "between sizes.",
    )
    print("\n" + "\n".join(legend))
    for result in results:
        for profile in result.profiles:
            print("\n" + profile)


def _shared_buffers() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_buffers")
        row = cursor.fetchone()
    return str(row[0]) if row else "?"


def _median_ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1e3:7.0f}" if seconds else f"{'-':>7}"


def print_counts(results: list[SizeResult]) -> None:
    """What was loaded, and what each child found; every mismatch spelled out."""
    print("\nCounts: loaded, and what each measurement found ('-': not its to report):")
    header = f"{'pairs':>9} {'':11}" + "".join(f" {key:>9}" for key in COUNT_KEYS) + "  check"
    print(header)
    print("-" * len(header))
    for result in results:
        exp = result.expected
        loaded = {
            "sources": exp.sources,
            "required": exp.required,
            "present": exp.present,
            "missing": exp.missing,
            "obsolete": exp.obsolete,
            "failed": 0,
            "orphans": exp.orphans,
            # With no file on disk, every current ready row is broken.
            "broken": exp.broken if result.with_files else exp.current_rows,
            "listed": exp.files,
        }
        print(f"{result.pairs:>9,} {'loaded':11}" + _cells(loaded))
        for where, expected, found in expected_counts(result):
            wrong = [
                f"{key} expected {value:,}"
                for key, value in expected.items()
                if found[key] != value
            ]
            check = "MISMATCH: " + ", ".join(wrong) if wrong else "ok"
            print(f"{result.pairs:>9,} {where:11}" + _cells(found) + f"  {check}")


def _cells(values: dict[str, int]) -> str:
    return "".join(f" {values[key]:>9,}" if key in values else f" {'-':>9}" for key in COUNT_KEYS)


def report_backpressure(result: dict[str, Any], pairs: int) -> list[str]:
    """Print the bulk queue's longest length per enqueueing path against its bound."""
    limit, batch = result["bulk_max_queued"], result["batch"]
    print(
        f"\nBackpressure at {pairs:,} pairs (phase required for real; the bulk queue on Redis "
        f"drained at {DRAIN_PER_SECOND}/s by stand-in workers; BULK_MAX_QUEUED {limit}):"
    )
    failures = []
    paths = (
        (
            "renditions reconcile",
            result["command"],
            limit + result["check_every"],
            "enqueues between checks",
        ),
        ("beat chain's rule", result["chain"], limit + batch, "step's batch"),
    )
    for label, figures, bound, per in paths:
        passed = figures["longest"] <= bound
        if not passed:
            failures.append(f"{label}: bulk queue reached {figures['longest']} > {bound}")
        print(
            f"  {label:22s} enqueued {figures['enqueued']:,} in {figures['seconds']:.1f} s, "
            f"longest bulk queue {figures['longest']:,} (bound {limit} + {per} = {bound}) "
            f"{'PASS' if passed else 'FAIL'}"
        )
    return failures


def main() -> None:
    """Parse arguments; create and load a database per size; measure; report; clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in DEFAULT_SIZES),
        help="required pairs of each size, comma-separated (multiples of 10,000)",
    )
    parser.add_argument(
        "--files-size",
        type=int,
        default=DEFAULT_FILES_SIZE,
        help="the size whose rendition files are written to disk (0: none)",
    )
    parser.add_argument(
        "--media-dir",
        type=Path,
        help="where to make the media folders (default: the system's temp folder)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="DB plan runs per size (the fastest counts)"
    )
    parser.add_argument("--profile", action="store_true", help="profile every size's DB plan")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--media", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child_here(args.child, args.db, args.media, args.profile_to)
        return
    pairs_list = sorted(int(size) for size in args.sizes.split(","))
    token = f"{os.getpid()}_{time.time_ns()}"
    workdir = Path(tempfile.mkdtemp(prefix="rw-bench-reconcile-", dir=args.media_dir))
    sizes = [
        Loaded(
            pairs,
            f"rw_bench_reconcile_{token}_{pairs}",
            workdir / f"media-{pairs}",
            with_files=pairs == args.files_size,
        )
        for pairs in pairs_list
    ]
    created: list[str] = []
    configured = False
    try:
        create_postgres_database(sizes[0].db_name)
        created.append(sizes[0].db_name)
        configure_django(sizes[0].db_name, sizes[0].media, migrate=True)
        configured = True
        from django.db import connections

        connections.close_all()  # a template must have no one connected
        for size in sizes[1:]:
            create_postgres_database(size.db_name, template=sizes[0].db_name)
            created.append(size.db_name)
        for size in sizes:
            size.load()
        results = measure(sizes, args.repeat)
        evaluate(results)
        for result in results:
            if args.profile or result.misses:
                profile_misses(result, workdir, always=args.profile)
        failures = evaluate(results)
        print_report(results)
        failures += report_backpressure(run_child("enqueue", sizes[-1]), sizes[-1].pairs)
    finally:
        if configured:
            from django.db import connections

            connections.close_all()
        for name in created:
            drop_postgres_database(name)
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        sys.exit(1)
    print("\nPASS")


if __name__ == "__main__":
    main()
