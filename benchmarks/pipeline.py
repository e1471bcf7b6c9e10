"""Benchmark: rendition-worker's pipeline against the way existing Django tools render.

For each photo of the corpus, 5 widths x AVIF/WebP/JPEG (15 renditions), side by side:
- baseline (Wagtail, imagekit, easy-thumbnails): for every rendition open and decode the
  source again, exif_transpose, convert, LANCZOS resize, save with Pillow's built-in AVIF
  encoder at its defaults, WebP and JPEG at Pillow defaults;
- ours: `rendition_worker.core.pipeline.render`, decoding once.
Each side runs in a fresh subprocess (the baseline must not load pillow_avif, which replaces
Pillow's AVIF plugin, and peak RSS must be its own). Quality is mean luma SSIM of every
rendition against a reference: full decode, upright, ICC to sRGB, LANCZOS to the same size.

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
from pathlib import Path
from typing import Any

from support import current_rss_mb, peak_rss_mb

WIDTHS = (480, 960, 1440, 1920, 2560)
FORMATS = ("avif", "webp", "jpeg")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
# Targets of issue 2, checked on every photo of at least this many pixels.
TARGET_MIN_PIXELS = 8_000_000
TARGET_SPEEDUP = 6.0
TARGET_SSIM_SLACK = 0.005
TARGET_MEMORY = 2.5  # peak memory over one decoded RGB copy (3 bytes a pixel)


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


def _side(kind: str, photo: Path, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--side", kind, str(photo), str(out)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SVT_LOG": "1"},
    )
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


def bench_photo(photo: Path, repeat: int) -> dict[str, Any]:
    """Run both sides on one photo and score every rendition; return the figures."""
    from PIL import Image

    with Image.open(photo) as opened:
        pixels = opened.width * opened.height
    reference = _reference(photo)
    row: dict[str, Any] = {"photo": photo.name, "megapixels": pixels / 1e6}
    for kind in ("baseline", "ours"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            runs = [_side(kind, photo, out) for _ in range(repeat)]
            best = min(runs, key=lambda run: run["wall_s"])
            scores = [_ssim(reference, path) for path in sorted(out.iterdir())]
        if len(scores) != len(WIDTHS) * len(FORMATS):
            raise RuntimeError(f"{kind} wrote {len(scores)} renditions for {photo.name}")
        peak_delta = max(run["peak_mb"] - run["rss_before_mb"] for run in runs)
        row[kind] = {
            "wall_s": best["wall_s"],
            "bytes": sum(score[1] for score in scores),
            "ssim": sum(score[0] for score in scores) / len(scores),
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


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one line per photo: ratios first, then the raw figures of both sides."""
    header = (
        f"{'photo':44} {'MP':>5} {'base s':>7} {'ours s':>7} {'speedup':>8} "
        f"{'base KB':>8} {'ours KB':>8} {'bytes':>6} {'SSIM base':>9} {'SSIM ours':>9} "
        f"{'base MB':>8} {'ours MB':>8} {'mem x':>6} {'subj+ph ms':>10} {'of ours':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        base, ours = row["baseline"], row["ours"]
        print(
            f"{row['photo']:44} {row['megapixels']:5.1f} {base['wall_s']:7.2f} "
            f"{ours['wall_s']:7.2f} {base['wall_s'] / ours['wall_s']:7.2f}x "
            f"{base['bytes'] / 1024:8.0f} {ours['bytes'] / 1024:8.0f} "
            f"{ours['bytes'] / base['bytes']:6.3f} {base['ssim']:9.4f} {ours['ssim']:9.4f} "
            f"{base['peak_mb']:8.0f} {ours['peak_mb']:8.0f} {ours['memory_x']:6.2f} "
            f"{ours['analysis_ms']:10.1f} {ours['analysis_ms'] / 10 / ours['wall_s']:6.2f}%  "
            f"{_verdict(row)}"
        )
    print(
        "\nspeedup = baseline wall / ours; bytes = ours / baseline (total of 15 renditions); "
        "SSIM = mean luma SSIM against a reference resize;\nbase/ours MB = peak RSS of each "
        "process; mem x = ours' peak RSS growth during the render / (width x height x 3 bytes);\n"
        "subj+ph ms = ours' automatic subject and placeholder (small copy included), of ours = "
        "its share of ours' wall time.\n"
        f"Targets on photos >= 8 MP: speedup >= {TARGET_SPEEDUP}x, bytes <= 1, SSIM >= "
        f"baseline - {TARGET_SSIM_SLACK}, mem x <= {TARGET_MEMORY}."
    )


def main() -> None:
    """Parse arguments and run the benchmark (or one side of it, in a subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", default="", help="substring of the photo names to run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--side", nargs=3, metavar=("KIND", "PHOTO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        kind, photo, out = args.side
        runner = run_baseline if kind == "baseline" else run_ours
        print(json.dumps(runner(Path(photo), Path(out))))
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
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if any(_verdict(row).startswith("FAIL") for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
