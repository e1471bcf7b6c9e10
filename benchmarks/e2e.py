"""Benchmark: the whole service against the pipeline run directly, on the same photos.

Two sides, in one run, on the photos of ../shared/corpus/photos (each used `--copies` times,
so that two processes stay busy to the end):

- direct: the pure engine (`rendition_worker.core.pipeline.render`) in a pool of 2
  processes, one task per photo, every rendition the demo's Photo.image requires (its sets,
  its encoder settings), each file written to a folder; timed from the first task
  submitted to the last photo done. The pool is started and warmed (imports done, one tiny
  render each) before the clock starts.
- service: the demo site's settings (`rendition_worker.demo.settings`) on a throwaway
  PostgreSQL database and a private Redis queue; a real Celery worker of 2 processes
  (`celery -A rendition_worker.demo.celery worker -c 2 --prefetch-multiplier 1`, prefork,
  as docker-compose.yml runs it), started and answering pings before the clock starts.
  This process saves one `Photo` per photo through the ORM (each in its own transaction, so
  the signal handlers enqueue after commit), and the clock stops when every required
  rendition of every photo is ready (polled in the database every 50 ms).

The throughput ratio is direct wall time / service wall time (both render the same bytes;
the service also uploads the originals, hashes them, records rows and writes through the
storage). Target (issue 5): the service reaches at least 90% of the direct throughput.
The sides run `--repeat` times, alternating which goes first; best of each is reported.

Run: `python benchmarks/e2e.py [--copies 2] [--repeat 2]` from the project root; needs
Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from support import PROCESSES, service_environment, worker_process

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "corpus" / "photos"
TARGET = 0.90


def _direct_init() -> None:
    # Imports and the encoders' first use are paid before the clock starts, as the
    # service's worker pays them before it answers a ping.
    import rendition_worker.core.pipeline  # noqa: F401  (registers the AVIF/HEIF plugins)


def _direct_render(photo: str, specs: list[str], out: str, max_pixels: int, codec: str) -> int:
    """Render one photo with the core engine; returns the number of files written."""
    from rendition_worker.core.encoding import EncoderSettings
    from rendition_worker.core.pipeline import RenderOptions, render
    from rendition_worker.core.sources import Limits
    from rendition_worker.core.specs import parse_spec

    options = RenderOptions(
        limits=Limits(max_pixels=max_pixels), encoder=EncoderSettings(avif_codec=codec)
    )
    written = 0
    stem = Path(photo).stem + "-" + uuid.uuid4().hex[:6]
    with Path(photo).open("rb") as fp:
        for rendered in render(fp, [parse_spec(spec) for spec in specs], options):
            target = Path(out) / f"{stem}.{rendered.spec}.{rendered.format}"
            target.write_bytes(rendered.data)
            written += 1
    return written


def run_direct(
    photos: list[Path], specs: list[str], max_pixels: int, codec: str, work: Path
) -> float:
    """Wall seconds for the engine alone, 2 processes, to render every photo."""
    out = work / "direct"
    out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=_direct_init) as pool:
        # Warm both processes up: a tiny render each, not timed.
        tiny = work / "tiny.jpg"
        _write_tiny_jpeg(tiny)
        warm = [
            pool.submit(_direct_render, str(tiny), specs, str(out), max_pixels, codec)
            for _ in range(PROCESSES)
        ]
        for future in warm:
            future.result()
        started = time.perf_counter()
        futures = [
            pool.submit(_direct_render, str(photo), specs, str(out), max_pixels, codec)
            for photo in photos
        ]
        files = sum(future.result() for future in futures)
        elapsed = time.perf_counter() - started
    if files != len(photos) * len(specs):
        raise SystemExit(f"direct side wrote {files} files, expected {len(photos) * len(specs)}")
    shutil.rmtree(out)
    return elapsed


def _write_tiny_jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (120, 30, 200)).save(path, "JPEG")


def run_service(photos: list[Path], expected: int) -> float:
    """Wall seconds from the first ORM save to every rendition of every photo ready."""
    from django.core.files import File
    from django.db import transaction

    from rendition_worker.demo.models import Photo
    from rendition_worker.models import Rendition, State

    # Earlier rounds' photos stay: deleting them would queue deletions into this round.
    started = time.perf_counter()
    ids: list[str] = []
    for photo in photos:
        with photo.open("rb") as fp, transaction.atomic():
            created = Photo.objects.create(title=photo.stem, image=File(fp, name=photo.name))
        ids.append(str(created.pk))
    target = len(photos) * expected
    ours = Rendition.objects.filter(source__object_id__in=ids)
    while ours.filter(state=State.READY).count() < target:
        failed = ours.filter(state=State.FAILED).count()
        if failed:
            raise SystemExit(f"{failed} renditions failed on the service side")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    """Run both sides, alternating, and print the table and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="times each photo is saved")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side (best is kept)")
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"no corpus at {PHOTOS}: the benchmark needs ../shared/corpus/photos")
    photos = sorted(PHOTOS.glob("*.jpg")) * args.copies

    work = Path(tempfile.mkdtemp(prefix="rw-bench-e2e-"))
    try:
        with service_environment(work) as env:
            os.environ.update(env)
            import django

            django.setup()
            from django.core.management import call_command

            from rendition_worker.conf import get_settings

            call_command("migrate", verbosity=0)
            settings = get_settings()
            specs = [str(spec) for spec in settings.specs_for("demo.Photo.image")]
            direct_times: list[float] = []
            service_times: list[float] = []
            with worker_process(env, work / "worker.log", [env["RENDITION_WORKER_QUEUE"]]):
                for round_ in range(args.repeat):
                    sides = ["direct", "service"] if round_ % 2 == 0 else ["service", "direct"]
                    for side in sides:
                        if side == "direct":
                            seconds = run_direct(
                                photos, specs, settings.max_pixels, settings.avif_codec, work
                            )
                            direct_times.append(seconds)
                        else:
                            seconds = run_service(photos, len(specs))
                            service_times.append(seconds)
                        print(f"  round {round_ + 1} {side:8s} {seconds:7.2f} s", flush=True)
            from django.db import connections

            connections.close_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(photos, specs, min(direct_times), min(service_times))


def _report(photos: list[Path], specs: list[str], direct: float, service: float) -> None:
    megapixels = sum(_megapixels(photo) for photo in photos)
    ratio = direct / service
    print()
    print(f"photos saved: {len(photos)} ({megapixels:.0f} MP), renditions each: {len(specs)}")
    print(f"{'side':10s} {'wall s':>8s} {'photos/min':>11s} {'MP/s':>7s}")
    for side, seconds in (("direct", direct), ("service", service)):
        rate = len(photos) / seconds * 60
        print(f"{side:10s} {seconds:8.2f} {rate:11.1f} {megapixels / seconds:7.2f}")
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"service throughput / direct throughput: {ratio:.3f} (target >= {TARGET}) {verdict}")


def _megapixels(photo: Path) -> float:
    from PIL import Image

    with Image.open(photo) as image:
        return image.width * image.height / 1e6


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
