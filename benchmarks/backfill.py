"""Benchmark: fresh uploads while a backfill runs, against the same uploads on an idle worker.

A real worker of 2 prefork processes on both lanes (`-Q <QUEUE>,<BULK_QUEUE>`, Redis with
`queue_order_strategy: priority`, as the README runs it) on a throwaway PostgreSQL database,
the demo site's settings with the sets of each phase (benchmarks/backfill_settings.py):

1. setup: `--sources` rows stored without signals (bulk_create of small JPEGs) are
   rendered with the first set (`card`: one 320 px JPEG) through the bulk lane.
2. bulk only: the set gains a spec (a 640 px AVIF; the worker restarts with it, as a site
   deploys), one reconciliation runs: sources backfilled per second, nothing else running.
3. idle: the set gains another spec (a 640 px AVIF at another quality); a corpus photo is
   saved every `--every` seconds with nothing else to do: time from the save to every
   rendition of the photo ready.
4. backfill: a reconciliation starts backfilling that spec for every source, and a photo is
   saved every `--every` seconds meanwhile, timed the same way. Bulk throughput as in 2.

The broker's bulk queue is sampled every 20 ms through phases 2 and 4. Targets (issue 11):
fresh uploads' p95 during the backfill <= 2x idle; bulk throughput during the backfill
>= 90% of bulk only; the bulk queue never longer than BULK_MAX_QUEUED + one batch.

Run: `python benchmarks/backfill.py [--sources 2000] [--every 3]` from the project root;
needs Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 and ../shared/corpus/photos.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import REDIS, service_environment, worker_process

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "corpus" / "photos"
CARD = {"card": {"specs": ["width-320|format-jpeg"]}}
ADDED = "width-640|format-avif"
ADDED_AGAIN = "width-640|format-avif|avifquality-60"
PHASE_SETS = {
    "setup": CARD,
    "bulk-only": {**CARD, "extra": {"specs": [ADDED]}},
    "backfill": {**CARD, "extra": {"specs": [ADDED, ADDED_AGAIN]}},
}
P95_RATIO = 2.0
BULK_RATIO = 0.90
SOURCE_SIZE = (1024, 768)
POLL = 0.02


def main() -> None:
    """Run the four phases and print the figures and the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=2000, help="rows to backfill")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between fresh uploads")
    parser.add_argument("--idle-uploads", type=int, default=10, help="fresh uploads when idle")
    args = parser.parse_args()
    photos = sorted(PHOTOS.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no corpus at {PHOTOS}: the benchmark needs ../shared/corpus/photos")
    work = Path(tempfile.mkdtemp(prefix="rw-bench-backfill-"))
    try:
        with service_environment(work, "backfill") as env:
            env["DJANGO_SETTINGS_MODULE"] = "backfill_settings"
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(ROOT / "benchmarks"), env.get("PYTHONPATH")])
            )
            # The benchmark process itself reads the last phase's sets: it saves the fresh
            # uploads of phases 3 and 4 and counts their renditions.
            os.environ.update(env, BACKFILL_SETS=json.dumps(PHASE_SETS["backfill"]))
            import django

            django.setup()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            run(args, env, work, photos)
            from django.db import connections

            connections.close_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, env: dict[str, str], work: Path, photos: list[Path]) -> None:
    """The phases, in order, and the report."""
    from rendition_worker.conf import get_settings
    from rendition_worker.services.reconcile import BATCH_SIZE

    settings = get_settings()
    queues = [settings.queue, settings.bulk_queue]
    sampler = QueueSampler(settings.bulk_queue)
    sampler.start()
    try:
        rows = create_sources(args.sources, work)
        with phase_worker(env, work, "setup", queues):
            generate_all()
            wait_for(lambda: count_ready("width-320|format-jpeg", rows) == len(rows), "setup")
        with phase_worker(env, work, "bulk-only", queues):
            bulk_only = backfill(rows, ADDED, sampler)
        print(f"bulk only: {len(rows)} sources in {bulk_only:.1f} s", flush=True)
        with phase_worker(env, work, "backfill", queues):
            idle = [fresh_upload(photos[n % len(photos)]) for n in range(args.idle_uploads)]
            print(f"idle: {len(idle)} uploads, p95 {p95(idle):.2f} s", flush=True)
            during: list[float] = []
            stop = threading.Event()

            def uploads() -> None:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    during.append(fresh_upload(photos[n % len(photos)]))
                    n += 1
                    stop.wait(max(0.0, args.every - (time.monotonic() - started)))

            uploader = threading.Thread(target=uploads)
            try:
                busy = backfill(rows, ADDED_AGAIN, sampler, alongside=uploader)
            finally:
                stop.set()
                uploader.join()
    finally:
        sampler.stop()
    report(len(rows), idle, during, bulk_only, busy, sampler, settings.bulk_max_queued, BATCH_SIZE)


def create_sources(count: int, work: Path) -> list[str]:
    """`count` demo photos stored without signals, each a distinct small JPEG; their pks."""
    import numpy as np
    from PIL import Image

    from rendition_worker.demo.models import Photo

    media = Path(os.environ["MEDIA_ROOT"]) / "backfill"
    media.mkdir(parents=True)
    rng = np.random.default_rng(11)
    base = rng.integers(0, 255, (SOURCE_SIZE[1] // 8, SOURCE_SIZE[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(SOURCE_SIZE)
    rows = []
    for n in range(count):
        # One template, a different corner pixel each: distinct content, cheap to make.
        image.putpixel((0, 0), (n % 256, n // 256 % 256, 7))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        (media / f"s{n}.jpg").write_bytes(buffer.getvalue())
        rows.append(Photo(title=f"s{n}", image=f"backfill/s{n}.jpg"))
    created = Photo.objects.bulk_create(rows, batch_size=1000)
    return [str(photo.pk) for photo in created]


class phase_worker:  # a context manager, reads like one
    """The worker of one phase: started with that phase's sets, stopped after it."""

    def __init__(self, env: dict[str, str], work: Path, phase: str, queues: list[str]) -> None:
        self.env = {**env, "BACKFILL_SETS": json.dumps(PHASE_SETS[phase])}
        self.log = work / f"worker-{phase}.log"
        self.queues = queues
        self.context: Any = None

    def __enter__(self) -> None:
        self.context = worker_process(self.env, self.log, self.queues)
        self.context.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self.context.__exit__(*exc_info)


def generate_all() -> None:
    """`renditions generate`: every source on the bulk lane."""
    from django.core.management import call_command

    call_command("renditions", "generate", stdout=io.StringIO())


def count_ready(spec: str, rows: list[str]) -> int:
    """How many of the backfill's sources have `spec` ready."""
    from rendition_worker.models import Rendition, State

    return Rendition.objects.filter(
        spec=spec, state=State.READY, source__object_id__in=rows
    ).count()


def backfill(
    rows: list[str],
    spec: str,
    sampler: QueueSampler,
    alongside: threading.Thread | None = None,
) -> float:
    """Start a reconciliation chain (as beat does) and time it until `spec` is everywhere."""
    from rendition_worker import tasks
    from rendition_worker.cache import lookup_cache
    from rendition_worker.conf import get_settings

    # The demo's cache (CACHE_URL) outlives an interrupted run, and with it a chain's lock.
    lookup_cache().delete(tasks.RECONCILE_LOCK)
    sampler.recording = True
    started = time.monotonic()
    tasks.reconcile.apply_async(queue=get_settings().bulk_queue)
    if alongside is not None:
        alongside.start()
    wait_for(lambda: count_ready(spec, rows) == len(rows), f"the backfill of {spec}", poll=0.5)
    elapsed = time.monotonic() - started
    sampler.recording = False
    # The chain's later phases (gone rows, files, tombstones) finish before the next phase
    # starts one of its own: until then the chain's lock would turn the new one away.
    wait_for(lambda: lookup_cache().get(tasks.RECONCILE_LOCK) is None, "the chain to end", 0.5)
    return elapsed


def fresh_upload(photo: Path) -> float:
    """Save a corpus photo as an editor would; seconds until every rendition is ready."""
    from django.core.files import File
    from django.db import transaction

    from rendition_worker.conf import get_settings
    from rendition_worker.demo.models import Photo
    from rendition_worker.models import Rendition, State

    expected = len(get_settings().specs_for("demo.Photo.image"))
    with photo.open("rb") as fp:
        content = File(fp, name=f"fresh-{photo.name}")
        started = time.monotonic()
        with transaction.atomic():
            created = Photo.objects.create(title=photo.stem, image=content)
    ready = Rendition.objects.filter(source__object_id=str(created.pk), state=State.READY)
    wait_for(lambda: ready.count() == expected, f"the fresh upload {photo.name}")
    return time.monotonic() - started


class QueueSampler:
    """Samples the length of the bulk queue on the broker while `recording`."""

    def __init__(self, queue: str) -> None:
        import redis

        self.queue = queue
        self.client = redis.Redis.from_url(f"{REDIS}/4")
        self.recording = False
        self.longest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Start sampling in a thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            if self.recording:
                self.longest = max(self.longest, int(self.client.llen(self.queue)))


def wait_for(condition: Callable[[], bool], what: str, poll: float = POLL) -> None:
    """Poll `condition`; give up after 30 minutes."""
    deadline = time.monotonic() + 1800
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(poll)


def p95(values: list[float]) -> float:
    """The 95th percentile (inclusive method; the maximum for fewer than 20 values)."""
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def report(
    sources: int,
    idle: list[float],
    during: list[float],
    bulk_only: float,
    busy: float,
    sampler: QueueSampler,
    bulk_max_queued: int,
    batch: int,
) -> None:
    """Print the figures and a verdict per target."""
    print()
    print(f"sources backfilled per phase: {sources}; fresh uploads: {len(idle)} idle, "
          f"{len(during)} during the backfill")  # fmt: skip
    print(f"{'fresh upload to ready':24s} {'p50 s':>7s} {'p95 s':>7s}")
    print(f"{'idle':24s} {statistics.median(idle):7.2f} {p95(idle):7.2f}")
    print(f"{'during the backfill':24s} {statistics.median(during):7.2f} {p95(during):7.2f}")
    ratio = p95(during) / p95(idle)
    bulk_ratio = bulk_only / busy
    bound = bulk_max_queued + batch
    print(f"bulk throughput: bulk only {sources / bulk_only:.1f} sources/s, during uploads "
          f"{sources / busy:.1f} sources/s")  # fmt: skip
    verdicts = [
        (f"fresh p95 during / idle: {ratio:.2f} (target <= {P95_RATIO})", ratio <= P95_RATIO),
        (
            f"bulk throughput during uploads / bulk only: {bulk_ratio:.3f} "
            f"(target >= {BULK_RATIO})",
            bulk_ratio >= BULK_RATIO,
        ),
        (
            f"longest bulk queue: {sampler.longest} (bound BULK_MAX_QUEUED {bulk_max_queued} "
            f"+ batch {batch} = {bound})",
            sampler.longest <= bound,
        ),
    ]
    for text, passed in verdicts:
        print(f"{text} {'PASS' if passed else 'FAIL'}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
