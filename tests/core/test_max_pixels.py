"""MAX_PIXELS, not Pillow's process-wide `Image.MAX_IMAGE_PIXELS`, decides what the engine decodes.

Real sources past Pillow's own limit (a warning above 89 MP, an error above 179 MP by
default): mostly flat greyscale PNGs, cheap to make (a few hundred KB) and to decode.
Pillow's global limit must be what it was before, after and during a render, for the
site's other code keeps relying on it.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator

import pytest
from PIL import Image

from rendition_worker.core.errors import BadSource, SourceProblem
from rendition_worker.core.pipeline import RenderOptions, render
from rendition_worker.core.sources import Limits
from rendition_worker.core.specs import parse_spec

# 192 MP: past twice Pillow's default MAX_IMAGE_PIXELS (178,956,970), where Image.open raises.
BIG = (16_000, 12_000)
# 95 MP: past Pillow's warning (89,478,485) but under the default MAX_PIXELS (100 MP).
WARNED = (10_000, 9_500)
SPECS = ["width-320|format-jpeg", "fill-100x100|format-png"]


def flat_png(width: int, height: int, level: int = 128) -> bytes:
    """A valid greyscale PNG of one grey level, compressed row by row (never in memory whole)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes([level]) * width  # filter type 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    idat = chunk(b"IDAT", data)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """The 192 MP PNG, made once (about a second)."""
    return flat_png(*BIG)


@pytest.fixture
def pillow_limit() -> Iterator[int | None]:
    """Pillow's limit at the start; the test fails if it differs at the end."""
    before = Image.MAX_IMAGE_PIXELS
    yield before
    assert before == Image.MAX_IMAGE_PIXELS, "Pillow's global limit was changed"


def render_strictly(data: bytes, max_pixels: int) -> list[tuple[int, int, str]]:
    """Render SPECS, a DecompressionBombWarning raised as an error; sorted sizes and formats."""
    options = RenderOptions(limits=Limits(max_pixels=max_pixels))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        rendering = render(io.BytesIO(data), [parse_spec(spec) for spec in SPECS], options)
        return sorted((item.width, item.height, item.format) for item in rendering)


KEEP = "Pillow's default"
# What a site may have done with Pillow's limit: nothing, lowered it, lifted it.
SITE_LIMITS = [
    pytest.param(KEEP, id="pillow-default"),
    pytest.param(1_000_000, id="site-lowered"),
    pytest.param(None, id="site-lifted"),
]


@contextlib.contextmanager
def site_sets(site_limit: object) -> Iterator[None]:
    """Pillow's global limit as a site set it, within the block only."""
    with pytest.MonkeyPatch.context() as patch:
        if site_limit != KEEP:
            patch.setattr(Image, "MAX_IMAGE_PIXELS", site_limit)
        yield


@pytest.mark.parametrize("site_limit", SITE_LIMITS)
def test_a_source_past_pillows_limit_renders_when_max_pixels_allows(
    big_png: bytes, pillow_limit: int | None, site_limit: object
) -> None:
    with site_sets(site_limit):
        refused_by_pillow = contextlib.nullcontext() if site_limit is None else None
        with refused_by_pillow or pytest.raises(Image.DecompressionBombError):
            Image.open(io.BytesIO(big_png))  # what Pillow alone does with it

        made = render_strictly(big_png, max_pixels=BIG[0] * BIG[1])

        assert made == [(100, 100, "png"), (320, 240, "jpeg")]
        assert (pillow_limit if site_limit == KEEP else site_limit) == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("site_limit", SITE_LIMITS)
def test_a_source_over_max_pixels_is_refused_whatever_pillows_limit(
    big_png: bytes, pillow_limit: int | None, site_limit: object
) -> None:
    with site_sets(site_limit), pytest.raises(BadSource) as caught:
        render_strictly(big_png, max_pixels=BIG[0] * BIG[1] - 1)
    assert caught.value.problem is SourceProblem.TOO_LARGE
    assert "16000x12000 = 192,000,000 pixels" in str(caught.value)
    assert "the limit (MAX_PIXELS) is 191,999,999" in str(caught.value)


def test_a_png_between_pillows_warning_and_max_pixels_renders_without_a_warning(
    pillow_limit: int | None,
) -> None:
    # The PNG is opened twice (decoded, and verified chunk by chunk): neither may warn.
    made = render_strictly(flat_png(*WARNED), max_pixels=Limits().max_pixels)
    assert made == [(100, 100, "png"), (320, 304, "jpeg")]


def test_pillows_limit_holds_for_other_threads_while_the_engine_decodes(
    big_png: bytes, pillow_limit: int | None
) -> None:
    done = threading.Event()
    opened: list[str] = []

    def site_code() -> None:
        # The rest of the site opening the same file meanwhile: Pillow still refuses it.
        while not done.is_set():
            try:
                Image.open(io.BytesIO(big_png))
            except Image.DecompressionBombError:
                opened.append("refused")
            else:
                opened.append("opened")

    others = [threading.Thread(target=site_code) for _ in range(2)]
    for thread in others:
        thread.start()
    try:
        renders = [render_strictly(big_png, max_pixels=200_000_000) for _ in range(2)]
    finally:
        done.set()
        for thread in others:
            thread.join()

    assert all(made == [(100, 100, "png"), (320, 240, "jpeg")] for made in renders)
    assert opened and set(opened) == {"refused"}, f"{opened.count('opened')} opened"


def test_a_decoder_that_applies_pillows_limit_itself_is_reported_as_too_large(
    pillow_limit: int | None,
) -> None:
    # Pillow's TIFF decoder checks MAX_IMAGE_PIXELS when it loads: with a site that set it
    # to 100 pixels, a 40x40 TIFF is refused there, saying whose limit it was.
    picture = Image.new("RGB", (40, 40), (10, 120, 200))
    tiff, png = io.BytesIO(), io.BytesIO()
    picture.save(tiff, "TIFF")
    picture.save(png, "PNG")
    with site_sets(100):
        with pytest.raises(BadSource) as caught:
            render_strictly(tiff.getvalue(), max_pixels=Limits().max_pixels)
        assert caught.value.problem is SourceProblem.TOO_LARGE
        assert "Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS = 100)" in str(caught.value)
        # The same picture as a PNG is MAX_PIXELS' alone.
        assert render_strictly(png.getvalue(), max_pixels=Limits().max_pixels)
