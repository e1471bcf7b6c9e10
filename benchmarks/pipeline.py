"""Benchmark: rendition-worker's pipeline against the way existing Django tools render.

For each photo of the corpus, 5 widths x AVIF/WebP/JPEG (15 renditions), side by side:
- baseline (Wagtail, imagekit, easy-thumbnails): for every rendition open and decode the
  source again, exif_transpose, convert, LANCZOS resize, save with Pillow's built-in AVIF
  encoder at its defaults, WebP and JPEG at Pillow defaults;
- pyvips (libvips from the pyvips-binary wheel), its best way: one `thumbnail` per width
  (shrink-on-load, EXIF rotation, ICC to sRGB), rendered to memory once, saved by its own
  AVIF (libheif with aom, the only AV1 encoder in the wheel, at its fastest effort), WebP and
  JPEG savers at the qualities that give our SSIM (PYVIPS_QUALITY), with our WebP method
  and JPEG options;
- ours: `rendition_worker.core.pipeline.render`, decoding once.
Each side runs in a fresh subprocess (the baseline must not load pillow_avif, which replaces
Pillow's AVIF plugin, and peak RSS must be its own). Quality is mean luma SSIM of every
rendition against a reference: full decode, upright, ICC to sRGB, LANCZOS to the same size.
Memory is a side's peak RSS (VmHWM) minus its RSS after imports, so it includes the codec
libraries' code paged in by the first encode.

`--huge` also renders a generated 100 MP JPEG and PNG (ours and pyvips; the baseline would take
minutes); `--breakdown` measures, each in a fresh process, what one step of our render needs;
`--steady` renders the large photos in turn in one long-lived process, as a worker does, with
glibc's heap defaults and with ours (rendition_worker.core.heap), and prints each render's peak;
`--resizers` renders the large photos again with Pillow's resizer instead of the SIMD one (as
on ARM Linux, which cykooz.resizer has no wheel for).

Run: `python benchmarks/pipeline.py` (from the project root; ../shared/corpus beside it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from support import RssSampler, anonymous_rss_mb, current_rss_mb, peak_rss_mb

WIDTHS = (480, 960, 1440, 1920, 2560)
FORMATS = ("avif", "webp", "jpeg")
SIDES = ("baseline", "pyvips", "ours")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
# Targets of issue 13, checked on every photo of at least this many pixels.
TARGET_MIN_PIXELS = 8_000_000
TARGET_SPEEDUP = 10.0
TARGET_SSIM_SLACK = 0.005
TARGET_MEMORY = 2.5  # peak memory over one decoded RGB copy (3 bytes a pixel)
# Against pyvips: faster, no more bytes, SSIM equal (to this rounding) or better, and peak
# memory growth within this factor of pyvips'.
PYVIPS_SSIM_SLACK = 0.001
PYVIPS_MEMORY = 2.0
# libvips' savers at equal SSIM to ours, measured on photo-iphone7-4032x3024 (mean luma
# SSIM of the 5 widths): its AVIF needs Q 70 for our 0.976 (Q 64 gives 0.965), its WebP and
# JPEG at our qualities come within 0.0007 of ours (0.975, 0.969).
PYVIPS_QUALITY = {"avif": 70, "webp": 80, "jpeg": 80}
# The generated 100 MP sources and the stated bounds of our peak RSS growth rendering them.
HUGE_SIZE = (11_544, 8_658)  # 99.95 MP, 4:3, under the default MAX_PIXELS
# A JPEG decodes at 2/8 scale (2886x2165, 25 MB), so its peak is any 2560 px set's: the
# 2560x1920 AVIF encode (122 MB, see --breakdown) beside the 2560 and 1920 px copies
# (31 MB) and a 1920 px WebP (16 MB), plus the codecs' code paged in (VmHWM counts it).
# A PNG cannot decode smaller: Pillow holds 4 bytes a pixel (381 MiB), plus two bands'
# copies (8 MB), the 2560 px output (20 MB) and the code; its encodes come after the
# source is freed (the pool holds no finished job's reference to it).
HUGE_PEAK_MB = {"jpeg": 210.0, "png": 480.0}
# Renders per side of --steady: each large photo twice, in turn.
STEADY_ROUNDS = 2


def run_baseline(photo: Path, out: Path) -> dict[str, float]:
    """Render the 15 renditions the naive way; return wall time and memory."""
    from PIL import Image, ImageOps

    before = current_rss_mb()
    started = time.perf_counter()
    for width in WIDTHS:
        for fmt in FORMATS:
            with Image.open(photo) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
                height = max(1, round(image.height * width / image.width))
                image = image.resize((width, height), Image.Resampling.LANCZOS)
                image.save(out / f"{width}.{fmt}", fmt.upper())
    return {
        "wall_s": time.perf_counter() - started,
        "rss_before_mb": before,
        "peak_mb": peak_rss_mb(),
    }


def run_ours(photo: Path, out: Path) -> dict[str, float]:
    """Render the 15 renditions with rendition-worker's pipeline; return time and memory."""
    from rendition_worker.core.analysis import Focus
    from rendition_worker.core.focal import FocalMode
    from rendition_worker.core.pipeline import render
    from rendition_worker.core.specs import expand_set

    specs = expand_set("bench", {"widths": list(WIDTHS), "formats": list(FORMATS)})
    before = current_rss_mb()
    started = time.perf_counter()
    with photo.open("rb") as fp:
        # As the worker renders by default (FOCAL_POINT "auto"): subject and placeholder too.
        rendering = render(fp, specs, focus=Focus(mode=FocalMode.AUTO))
        for rendered in rendering:
            (out / f"{rendered.spec.operation.width}.{rendered.format}").write_bytes(rendered.data)
    return {
        "analysis_ms": rendering.analysis.ms,
        "wall_s": time.perf_counter() - started,
        "rss_before_mb": before,
        "peak_mb": peak_rss_mb(),
    }


def run_pyvips(photo: Path, out: Path) -> dict[str, float]:
    """Render the 15 renditions with libvips its best way; return wall time and memory."""
    import pyvips

    before = current_rss_mb()
    started = time.perf_counter()
    for width in WIDTHS:
        # thumbnail() streams from the file; the three savers need it in memory once.
        image = pyvips.Image.thumbnail(str(photo), width, height=10_000_000, size="down")
        image = image.copy_memory()
        image.heifsave(
            str(out / f"{width}.avif"),
            Q=PYVIPS_QUALITY["avif"],
            compression="av1",
            effort=0,
            keep="none",
        )
        image.webpsave(str(out / f"{width}.webp"), Q=PYVIPS_QUALITY["webp"], effort=2, keep="none")
        image.jpegsave(
            str(out / f"{width}.jpeg"),
            Q=PYVIPS_QUALITY["jpeg"],
            optimize_coding=True,
            interlace=True,
            keep="none",
        )
    return {
        "wall_s": time.perf_counter() - started,
        "rss_before_mb": before,
        "peak_mb": peak_rss_mb(),
    }


def run_steady(photos: list[Path], *, heap: bool) -> dict[str, Any]:
    """Render `photos` in turn in this one process; each render's peak anonymous RSS over idle."""
    import resource

    from rendition_worker.core import heap as core_heap
    from rendition_worker.core import pipeline
    from rendition_worker.core.analysis import Focus
    from rendition_worker.core.focal import FocalMode
    from rendition_worker.core.specs import expand_set

    if not heap:  # glibc's defaults: no mmap threshold of ours, no trim after each render
        core_heap.map_large_buffers = lambda: False  # type: ignore[assignment]
        core_heap.release_free_memory = lambda: None
    specs = expand_set("bench", {"widths": list(WIDTHS), "formats": list(FORMATS)})
    idle = anonymous_rss_mb()
    peaks = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    for photo in photos:
        with RssSampler(trim=False) as sampler, photo.open("rb") as fp:
            for _ in pipeline.render(fp, specs, focus=Focus(mode=FocalMode.AUTO)):
                pass
        peaks.append(sampler.peak_mb - idle)
    return {
        "peaks_mb": peaks,
        "idle_after_mb": anonymous_rss_mb() - idle,
        "wall_s": time.perf_counter() - started,
        "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
    }


# The sides of --steady: (label, heap of ours?, extra environment). glibc's
# `malloc.hugetlb=1` tunable has malloc ask for transparent huge pages (madvise) on what it
# maps: fewer, larger page faults for the same buffers; it is read only at process start.
STEADY_SIDES = {
    "glibc": ("glibc heap defaults", False, {}),
    "ours": ("ours (core.heap)", True, {}),
    "ours-thp": ("ours + hugetlb=1", True, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
}


def bench_steady(photos: list[Path]) -> None:
    """Print the per-render peaks of a long-lived process with glibc's heap and with ours."""
    order = [photo for _ in range(STEADY_ROUNDS) for photo in photos]
    listing = os.pathsep.join(str(photo) for photo in order)
    sides = {
        name: _side(f"steady:{name}", Path(listing), Path(), env=env)
        for name, (_, _, env) in STEADY_SIDES.items()
    }
    print(
        f"\nSteady state: one process renders {len(photos)} photos >= 8 MP in turn, "
        f"{STEADY_ROUNDS} rounds ({', '.join(photo.name for photo in photos)});\n"
        "peak anonymous RSS of each render over the process's idle RSS, MB; then the MB held "
        "after the last render, the wall time of all renders and their minor page faults:"
    )
    for name, (label, _, _) in STEADY_SIDES.items():
        side = sides[name]
        peaks = " ".join(f"{value:4.0f}" for value in side["peaks_mb"])
        print(
            f"  {label:20} {peaks}   idle after: {side['idle_after_mb']:4.0f}  "
            f"{side['wall_s']:6.2f} s  {side['page_faults'] / 1e6:5.2f}M faults"
        )
    worst = {name: max(side["peaks_mb"]) for name, side in sides.items()}
    print(
        f"  worst render: ours {worst['ours']:.0f} MB / glibc {worst['glibc']:.0f} MB = "
        f"{worst['ours'] / worst['glibc']:.2f}x; held after the last render: ours "
        f"{sides['ours']['idle_after_mb']:.0f} MB, glibc {sides['glibc']['idle_after_mb']:.0f} MB"
    )
    wall = {name: side["wall_s"] for name, side in sides.items()}
    print(
        f"  wall time: ours / glibc = {wall['ours'] / wall['glibc']:.2f}x, ours + hugetlb=1 / "
        f"glibc = {wall['ours-thp'] / wall['glibc']:.2f}x; worst render with hugetlb=1: "
        f"{worst['ours-thp']:.0f} MB"
    )


def run_ours_pillow_resize(photo: Path, out: Path) -> dict[str, float]:
    """Render as `run_ours` does, with Pillow's resizer, as on ARM Linux (no SIMD wheel)."""
    sys.modules["cykooz_resizer"] = None  # type: ignore[assignment]  # its import now fails
    return run_ours(photo, out)


def bench_resizers(photos: list[Path], repeat: int) -> None:
    """Print our render with the SIMD resizer against the same with Pillow's."""
    print("\nResizers: ours (SIMD Lanczos, core.resampling) against ours with Pillow's resize:")
    for photo in photos:
        row = bench_photo(photo, repeat, sides=("ours", "ours-pillow-resize"))
        simd, pillow = row["ours"], row["ours-pillow-resize"]
        print(
            f"  {photo.name:40} SIMD {simd['wall_s']:5.2f} s, Pillow {pillow['wall_s']:5.2f} s "
            f"= {pillow['wall_s'] / simd['wall_s']:.2f}x; SSIM {simd['ssim']:.4f} / "
            f"{pillow['ssim']:.4f}; KB {simd['bytes'] / 1024:.0f} / {pillow['bytes'] / 1024:.0f}; "
            f"+MB {simd['peak_delta_mb']:.0f} / {pillow['peak_delta_mb']:.0f}"
        )


RUNNERS = {
    "baseline": run_baseline,
    "ours": run_ours,
    "pyvips": run_pyvips,
    "ours-pillow-resize": run_ours_pillow_resize,
}


class SideFailed(Exception):
    """A side could not render a photo (libvips refuses some damaged JPEGs Pillow reads)."""


def _side(kind: str, photo: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--side", kind, str(photo), str(out)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "SVT_LOG": "1", **(env or {})},
    )
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise SideFailed(f"{kind} failed: {lines[-1] if lines else result.returncode}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _reference(photo: Path) -> Any:
    from PIL import Image, ImageCms, ImageOps

    with Image.open(photo) as opened:
        image = ImageOps.exif_transpose(opened)
        icc = image.info.get("icc_profile")
        image = image.convert("RGB")
        if icc:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            image = converted if converted is not None else image
        return image


def _ssim(reference: Any, path: Path) -> tuple[float, int, tuple[int, int]]:
    import numpy as np
    from PIL import Image
    from skimage.metrics import structural_similarity

    import rendition_worker.core.plugins  # noqa: F401  # decodes both sides' AVIF alike

    with Image.open(path) as rendition:
        size = rendition.size
        luma = np.asarray(rendition.convert("L"), dtype=np.float64)
    expected = reference.resize(size, Image.Resampling.LANCZOS).convert("L")
    score = structural_similarity(  # type: ignore[no-untyped-call]
        np.asarray(expected, dtype=np.float64), luma, data_range=255
    )
    return float(score), path.stat().st_size, size


def bench_photo(photo: Path, repeat: int, sides: tuple[str, ...] = SIDES) -> dict[str, Any]:
    """Run each side on one photo and score every rendition; return the figures."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the 100 MP sources
        with Image.open(photo) as opened:
            pixels = opened.width * opened.height
    reference = _reference(photo) if pixels < HUGE_SIZE[0] * HUGE_SIZE[1] else None
    row: dict[str, Any] = {"photo": photo.name, "megapixels": pixels / 1e6}
    for kind in sides:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            try:
                runs = [_side(kind, photo, out) for _ in range(repeat)]
            except SideFailed as exc:
                if kind == "ours":
                    raise
                row[kind] = {"error": str(exc)}
                continue
            best = min(runs, key=lambda run: run["wall_s"])
            paths = sorted(out.iterdir())
            sizes = [path.stat().st_size for path in paths]
            scores = [_ssim(reference, path)[0] for path in paths] if reference else [0.0]
        if len(paths) != len(WIDTHS) * len(FORMATS):
            raise RuntimeError(f"{kind} wrote {len(paths)} renditions for {photo.name}")
        peak_delta = max(run["peak_mb"] - run["rss_before_mb"] for run in runs)
        row[kind] = {
            "wall_s": best["wall_s"],
            "bytes": sum(sizes),
            "ssim": sum(scores) / len(scores),
            "peak_mb": max(run["peak_mb"] for run in runs),
            "peak_delta_mb": peak_delta,
            "memory_x": peak_delta * 2**20 / (pixels * 3),
        }
    row["ours"]["analysis_ms"] = min(run["analysis_ms"] for run in runs if "analysis_ms" in run)
    return row


def _verdict(row: dict[str, Any]) -> str:
    if row["megapixels"] * 1e6 < TARGET_MIN_PIXELS:
        return "n/a (<8MP)"
    base, ours = row["baseline"], row["ours"]
    failures = []
    if base["wall_s"] / ours["wall_s"] < TARGET_SPEEDUP:
        failures.append("speed")
    if ours["bytes"] > base["bytes"]:
        failures.append("bytes")
    if ours["ssim"] < base["ssim"] - TARGET_SSIM_SLACK:
        failures.append("ssim")
    if ours["memory_x"] > TARGET_MEMORY:
        failures.append("memory")
    return "PASS" if not failures else "FAIL " + ",".join(failures)


def _pyvips_verdict(row: dict[str, Any], *, scored: bool = True) -> str:
    vips, ours = row["pyvips"], row["ours"]
    failures = []
    if ours["wall_s"] >= vips["wall_s"]:
        failures.append("speed")
    if ours["bytes"] > vips["bytes"]:
        failures.append("bytes")
    if scored and ours["ssim"] < vips["ssim"] - PYVIPS_SSIM_SLACK:
        failures.append("ssim")
    if ours["peak_delta_mb"] > PYVIPS_MEMORY * vips["peak_delta_mb"]:
        failures.append("memory")
    return "PASS" if not failures else "FAIL " + ",".join(failures)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one line per photo and peer: ratios first, then the raw figures of both sides."""
    header = (
        f"{'photo':40} {'MP':>5} {'peer':8} {'peer s':>7} {'ours s':>7} {'speedup':>8} "
        f"{'peer KB':>8} {'ours KB':>8} {'bytes':>6} {'SSIM peer':>9} {'SSIM ours':>9} "
        f"{'peer MB':>8} {'ours MB':>8} {'+peer':>6} {'+ours':>6} {'mem x':>6} "
        f"{'subj+ph ms':>10} {'of ours':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ours = row["ours"]
        for peer in ("baseline", "pyvips"):
            if peer not in row:
                continue
            other = row[peer]
            if "error" in other:
                print(f"{row['photo']:40} {row['megapixels']:5.1f} {peer:8} {other['error']}")
                continue
            verdict = _verdict(row) if peer == "baseline" else _pyvips_verdict(row)
            print(
                f"{row['photo']:40} {row['megapixels']:5.1f} {peer:8} {other['wall_s']:7.2f} "
                f"{ours['wall_s']:7.2f} {other['wall_s'] / ours['wall_s']:7.2f}x "
                f"{other['bytes'] / 1024:8.0f} {ours['bytes'] / 1024:8.0f} "
                f"{ours['bytes'] / other['bytes']:6.3f} {other['ssim']:9.4f} {ours['ssim']:9.4f} "
                f"{other['peak_mb']:8.0f} {ours['peak_mb']:8.0f} {other['peak_delta_mb']:6.0f} "
                f"{ours['peak_delta_mb']:6.0f} {ours['memory_x']:6.2f} "
                f"{ours['analysis_ms']:10.1f} {ours['analysis_ms'] / 10 / ours['wall_s']:6.2f}%  "
                f"{verdict}"
            )
    print(
        "\nspeedup = peer wall / ours; bytes = ours / peer (total of 15 renditions); "
        "SSIM = mean luma SSIM against a reference resize;\npeer/ours MB = peak RSS of each "
        "process; +peer/+ours = its growth during the render (MB);\nmem x = ours' growth / "
        "(width x height x 3 bytes);\nsubj+ph ms = ours' automatic subject and placeholder "
        "(small copy included), of ours = its share of ours' wall time.\n"
        f"Targets on photos >= 8 MP against the baseline: speedup >= {TARGET_SPEEDUP}x, "
        f"bytes <= 1, SSIM >= baseline - {TARGET_SSIM_SLACK}, mem x <= {TARGET_MEMORY};\n"
        f"against pyvips: speedup > 1, bytes <= 1, SSIM >= pyvips - {PYVIPS_SSIM_SLACK}, "
        f"+ours <= {PYVIPS_MEMORY} x +pyvips."
    )


def make_huge(path: Path, corpus: Path) -> Path:
    """Write a 100 MP JPEG or PNG: a corpus photo upscaled, so that it has a photo's texture."""
    from PIL import Image

    photo = corpus / "photos" / "photo-olympus-ep3-4032x3024.jpg"
    with Image.open(photo) as opened:
        image = opened.convert("RGB").resize(HUGE_SIZE, Image.Resampling.BICUBIC)
    if path.suffix == ".png":
        image.save(path, "PNG", compress_level=1)
    else:
        image.save(path, "JPEG", quality=90)
    return path


def bench_huge(corpus: Path, repeat: int) -> bool:
    """Render the generated 100 MP sources (ours and pyvips), print the figures; True if met."""
    met = True
    for fmt, suffix in (("jpeg", "jpg"), ("png", "png")):
        with tempfile.TemporaryDirectory() as tmp:
            huge = make_huge(Path(tmp) / f"generated-100mp.{suffix}", corpus)
            row = bench_photo(huge, repeat, sides=("pyvips", "ours"))
        vips, ours = row["pyvips"], row["ours"]
        bound = HUGE_PEAK_MB[fmt]
        within = bool(ours["peak_delta_mb"] <= bound)
        met = met and within
        print(
            f"\n100 MP source {HUGE_SIZE[0]}x{HUGE_SIZE[1]} (generated {fmt.upper()}), "
            "15 renditions:\n"
            f"  ours   {ours['wall_s']:6.2f} s  {ours['bytes'] / 1024:7.0f} KB  peak RSS "
            f"{ours['peak_mb']:5.0f} MB, growth {ours['peak_delta_mb']:5.0f} MB "
            f"({ours['memory_x']:.2f}x the decoded RGB copy)\n"
            f"  pyvips {vips['wall_s']:6.2f} s  {vips['bytes'] / 1024:7.0f} KB  peak RSS "
            f"{vips['peak_mb']:5.0f} MB, growth {vips['peak_delta_mb']:5.0f} MB\n"
            f"  ours' growth <= {bound:.0f} MB: {'PASS' if within else 'FAIL'}; against pyvips "
            f"(no SSIM on this one): {_pyvips_verdict(row, scored=False)}"
        )
    return met


def run_part(part: str, photo: Path) -> dict[str, float]:
    """Measure one step of our render alone: 'decode', 'resize' or '<format>-<width>'."""

    from PIL import Image

    from rendition_worker.core.encoding import EncoderSettings, encode
    from rendition_worker.core.sources import Limits, decode_source, open_source
    from rendition_worker.core.specs import DEFAULT_QUALITY

    # The source as the engine decodes it for a 2560 px widest output (stored orientation).
    with photo.open("rb") as fp:
        opened = open_source(fp, Limits())
        scale = max(WIDTHS) / opened.size[0]
        needed = (round(opened.stored_size[0] * scale), round(opened.stored_size[1] * scale))
        with RssSampler() as sampler:
            source = decode_source(opened, fp, needed)
    if part == "decode":
        return {"growth_mb": sampler.growth_mb}
    if part == "resize":
        with RssSampler() as sampler:
            source.resize(needed, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return {"growth_mb": sampler.growth_mb}
    fmt, wide = part.split("-")
    if opened.size != opened.stored_size:  # encode the upright size the pipeline encodes
        source = source.transpose(Image.Transpose.ROTATE_90)
    size = (int(wide), round(opened.size[1] * int(wide) / opened.size[0]))
    image = source.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0).convert("RGB")
    del source
    settings = EncoderSettings()
    # A tiny encode first: the figure is the encoder's working memory, not its code.
    encode(image.resize((64, 48)), fmt, DEFAULT_QUALITY[fmt], settings)
    with RssSampler() as sampler:
        encode(image, fmt, DEFAULT_QUALITY[fmt], settings)
    return {"growth_mb": sampler.growth_mb}


def print_breakdown(photo: Path) -> None:
    """Print what each step of our render needs by itself, each measured in a fresh process."""
    from PIL import Image

    with Image.open(photo) as opened:
        pixels = opened.width * opened.height
    parts = ["decode", "resize"] + [f"{fmt}-{width}" for width in WIDTHS for fmt in FORMATS]
    print(f"\nMemory breakdown, {photo.name} (anonymous RSS growth of one step, MB):")
    for part in parts:
        result = _side(f"part:{part}", photo, photo.parent)
        print(f"  {part:12} {result['growth_mb']:7.1f}")
    print(f"  (one decoded RGB copy at 3 bytes a pixel: {pixels * 3 / 2**20:.1f} MB)")


def main() -> None:
    """Parse arguments and run the benchmark (or one side of it, in a subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", default="", help="substring of the photo names to run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--huge", action="store_true", help="also render a 100 MP source")
    parser.add_argument("--breakdown", action="store_true", help="also measure each step")
    parser.add_argument("--steady", action="store_true", help="also render in one process")
    parser.add_argument("--resizers", action="store_true", help="also render with Pillow's resizer")
    parser.add_argument("--side", nargs=3, metavar=("KIND", "PHOTO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        kind, photo, out = args.side
        if kind.startswith("steady:"):
            paths = [Path(path) for path in photo.split(os.pathsep)]
            print(json.dumps(run_steady(paths, heap=STEADY_SIDES[kind.split(":")[1]][1])))
        elif kind.startswith("part:"):
            print(json.dumps(run_part(kind.removeprefix("part:"), Path(photo))))
        else:
            print(json.dumps(RUNNERS[kind](Path(photo), Path(out))))
        return
    photos = sorted((args.corpus / "photos").glob("*.jpg"))
    photos = [photo for photo in photos if args.only in photo.name]
    if not photos:
        sys.exit(f"no photos under {args.corpus / 'photos'}: is ../shared/corpus there?")
    rows = []
    for photo in photos:
        print(f"... {photo.name}", file=sys.stderr, flush=True)
        rows.append(bench_photo(photo, args.repeat))
    print_table(rows)
    huge_met = bench_huge(args.corpus, args.repeat) if args.huge else True
    large = [row["photo"] for row in rows if row["megapixels"] * 1e6 >= TARGET_MIN_PIXELS]
    if args.breakdown:
        print_breakdown(args.corpus / "photos" / (large or [photos[0].name])[0])
    if args.resizers:
        bench_resizers([args.corpus / "photos" / name for name in large], args.repeat)
    if args.steady:
        bench_steady([args.corpus / "photos" / name for name in large or [photos[0].name]])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    # A peer that cannot read a photo is reported, not held against us; ours must read all.
    failed = [_verdict(row) for row in rows if "error" not in row["baseline"]] + [
        _pyvips_verdict(row)
        for row in rows
        if row["megapixels"] * 1e6 >= TARGET_MIN_PIXELS and "error" not in row["pyvips"]
    ]
    if not huge_met or any(verdict.startswith("FAIL") for verdict in failed):
        sys.exit(1)


if __name__ == "__main__":
    main()
