"""The SIMD Lanczos resizer: Pillow's picture, in every working mode, in bands, or without it."""

from __future__ import annotations

import io
import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rendition_worker.core import heap, resampling
from rendition_worker.core.pipeline import band_boxes

PHOTO = "photos/photo-olympus-ep3-4032x3024.jpg"
# Platforms with a cykooz.resizer wheel, as the dependency's marker in pyproject.toml says.
SIMD_PLATFORM = platform.machine() in {"x86_64", "AMD64"} or sys.platform == "darwin"

needs_simd = pytest.mark.skipif(
    not resampling.simd_available(), reason="cykooz.resizer has no wheel for this platform"
)


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """Peak signal-to-noise ratio over every band of two same-mode images, in dB."""
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    error = float(np.mean((a - b) ** 2))
    return math.inf if error == 0 else 10 * math.log10(255**2 / error)


@pytest.fixture(scope="module")
def photo(corpus: Path) -> Image.Image:
    """A 1600x1200 region of a real camera photo, fine detail and all."""
    with Image.open(corpus / PHOTO) as image:
        return image.convert("RGB").crop((1200, 900, 2800, 2100))


def test_the_simd_resizer_is_installed_where_it_has_a_wheel() -> None:
    # Losing it silently (a wrong marker, a failed import) would cost a quarter of each render.
    assert resampling.simd_available() is SIMD_PLATFORM


@needs_simd
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "CMYK"])
@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((1200, 900), None),  # a mild reduction, as from a 6/8 decode to 2560 px
        ((300, 225), None),  # a strong one, as for the 480 px rendition
        ((500, 500), (250.5, 0.0, 1450.25, 1200.0)),  # a fill crop with fractional edges
    ],
)
def test_simd_gives_pillows_picture(
    photo: Image.Image, mode: str, size: tuple[int, int], box: resampling.Box | None
) -> None:
    image = photo.convert(mode)
    if mode == "RGBA":  # real transparency, so that premultiplying matters
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    got = resampling.lanczos(image, size, box)
    expected = image.resize(size, Image.Resampling.LANCZOS, box=box)
    assert (got.mode, got.size) == (mode, size)
    if mode == "RGBA":
        # What is shown: the colour of a pixel at alpha 2 is invisible, and rounding it
        # differently after premultiplying changes it by up to 255 levels.
        got, expected = got.convert("RGBa"), expected.convert("RGBa")
    assert psnr(got, expected) > 45


@needs_simd
def test_transparent_pixels_do_not_bleed_their_colour() -> None:
    # Red at alpha 0 beside opaque blue: a resize that does not premultiply turns the edge
    # purple; Pillow premultiplies, and so must the SIMD path.
    image = Image.new("RGBA", (400, 100), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (200, 0, 400, 100))
    got = np.asarray(resampling.lanczos(image, (150, 40)))
    visible = got[got[..., 3] > 0]
    assert visible.size and visible[..., 0].max() <= 2


@needs_simd
def test_bands_meet_without_seams(photo: Image.Image) -> None:
    size, box = (1500, 1125), (0.0, 0.0, 1600.0, 1200.0)
    whole = resampling.lanczos(photo, size, box)
    pasted = Image.new("RGB", size)
    for row, band_size, band_box in band_boxes(size, box):
        pasted.paste(resampling.lanczos(photo, band_size, band_box), (0, row))
    assert len(band_boxes(size, box)) > 1
    assert np.array_equal(np.asarray(pasted), np.asarray(whole))


def test_a_box_past_the_edge_by_a_rounding_error_is_the_whole_image(photo: Image.Image) -> None:
    # band_boxes((390, 292), (0, 0, 400, 300)) ends at 300.00000000000006.
    source = photo.resize((400, 300))
    last = band_boxes((390, 292), (0, 0, 400, 300))[-1][2]
    assert last[3] > 300
    got = resampling.lanczos(source, (390, 292), last)
    assert psnr(got, resampling.lanczos(source, (390, 292))) > 60


def test_a_box_of_no_area_samples_the_pixel_there() -> None:
    # fast_image_resize returns black for it; Pillow, and so the pipeline, the pixel's colour.
    image = Image.new("RGB", (100, 100), (200, 10, 30))
    assert resampling.lanczos(image, (10, 10), (50, 50, 50, 50)).getpixel((5, 5)) == (200, 10, 30)


def test_modes_the_simd_resizer_lacks_resize_with_pillow(photo: Image.Image) -> None:
    image = photo.convert("LA")
    got = resampling.lanczos(image, (400, 300))
    expected = image.resize((400, 300), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_an_rgbx_decode_is_made_rgb_only_for_the_simd_resizer(photo: Image.Image) -> None:
    padded = photo.convert("RGBX")
    made = resampling.resizable(padded)
    assert made.mode == ("RGB" if resampling.simd_available() else "RGBX")
    assert np.array_equal(np.asarray(made.convert("RGB")), np.asarray(photo))
    assert resampling.resizable(photo) is photo


@needs_simd
def test_without_the_simd_resizer_pillow_gives_the_same_picture(photo: Image.Image) -> None:
    # As on ARM Linux, where cykooz.resizer has no wheel: a process that cannot import it.
    source = io.BytesIO()
    photo.save(source, "PNG")
    script = (
        "import sys, io\n"
        "sys.modules['cykooz_resizer'] = None\n"  # makes `import cykooz_resizer` fail
        "from PIL import Image\n"
        "from rendition_worker.core import resampling\n"
        "assert not resampling.simd_available()\n"
        "image = Image.open(io.BytesIO(sys.stdin.buffer.read())).convert('RGB')\n"
        "out = io.BytesIO()\n"
        "resampling.lanczos(image, (1200, 900), (0.0, 0.5, 1600.0, 1199.5)).save(out, 'PNG')\n"
        "sys.stdout.buffer.write(out.getvalue())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], input=source.getvalue(), capture_output=True, check=False
    )
    assert run.returncode == 0, run.stderr.decode()
    by_pillow = Image.open(io.BytesIO(run.stdout))
    by_simd = resampling.lanczos(photo, (1200, 900), (0.0, 0.5, 1600.0, 1199.5))
    assert by_pillow.size == (1200, 900)
    assert 45 < psnr(by_simd, by_pillow) < math.inf  # close, and really made by another path


@needs_simd
def test_a_resize_holds_no_memory_once_it_returns() -> None:
    # A fast_image_resize Resizer keeps its largest working buffer for reuse: 28 MB here,
    # held by a worker process between renders if the engine kept one resizer.
    heap.map_large_buffers()
    source = Image.new("RGB", (3000, 2500), (90, 120, 150))
    heap.release_free_memory()
    before = anonymous_rss()
    resampling.lanczos(source, (2800, 2300))
    heap.release_free_memory()
    assert anonymous_rss() - before < 8_000_000


def anonymous_rss() -> int:
    """This process's anonymous resident memory in bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    return next(
        int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("RssAnon")
    )
