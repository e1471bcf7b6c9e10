"""Placeholders: the dominant colour and the blurred preview of a source, pure, no Django."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import pytest
from PIL import Image

from rendition_worker.core.analysis import Focus
from rendition_worker.core.pipeline import render
from rendition_worker.core.placeholder import (
    MAX_DATA_URI_BYTES,
    Placeholder,
    dominant_color,
    preview_data_uri,
)
from rendition_worker.core.specs import parse_spec


def rgb(color: str) -> tuple[int, ...]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def close(color: str, expected: tuple[int, int, int], slack: int = 12) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(rgb(color), expected, strict=True))


def sky_over_a_dark_field() -> Image.Image:
    """60% sky in many shades of blue over a dark field: the sky is the dominant colour."""
    image = Image.new("RGB", (200, 100))
    for y in range(60):
        image.paste((60 + y // 3, 120 + y // 2, 220 - y // 4), (0, y, 200, y + 1))
    image.paste((30, 25, 20), (0, 60, 200, 100))
    return image


def decoded_preview(uri: str) -> Image.Image:
    prefix = "data:image/webp;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix(prefix))))
    image.load()
    return image


def test_the_dominant_colour_is_the_largest_area_not_the_darkest_or_the_mean() -> None:
    color = dominant_color(sky_over_a_dark_field())
    red, green, blue = rgb(color)
    assert blue > 180 and green > 110 and red < 100, color
    assert color == color.lower() and len(color) == 7


def test_transparent_pixels_are_not_part_of_the_colour() -> None:
    image = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # invisible red
    image.paste((20, 160, 40, 255), (0, 0, 30, 100))  # a third of it opaque green
    assert close(dominant_color(image), (20, 160, 40))
    assert dominant_color(Image.new("RGBA", (10, 10), (0, 0, 0, 0))) == "#ffffff"
    assert close(dominant_color(Image.new("L", (10, 10), 128)), (128, 128, 128), 2)


def test_the_preview_is_tiny_keeps_the_ratio_and_alpha() -> None:
    preview = decoded_preview(preview_data_uri(sky_over_a_dark_field()))
    assert preview.size == (24, 12)
    assert preview.mode == "RGB"
    transparent = Image.new("RGBA", (50, 100), (0, 0, 0, 0))
    kept = decoded_preview(preview_data_uri(transparent))
    assert kept.size == (12, 24)
    assert kept.mode == "RGBA"


def test_even_pure_noise_stays_under_the_limit() -> None:
    noise = random.Random(3)
    image = Image.frombytes(
        "RGB", (256, 256), bytes(noise.randrange(256) for _ in range(256**2 * 3))
    )
    uri = preview_data_uri(image)
    assert len(uri) < MAX_DATA_URI_BYTES == 1_500
    assert max(decoded_preview(uri).size) >= 8  # it still shows something


def test_the_placeholder_is_made_from_the_upright_source_in_render() -> None:
    stored = Image.new("RGB", (300, 200), (20, 160, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated a quarter turn: 200x300 upright
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes())
    buffer.seek(0)
    rendering = render(buffer, [parse_spec("width-100")])
    placeholder = rendering.analysis.placeholder
    assert placeholder is not None
    assert (placeholder.width, placeholder.height) == (200, 300)
    assert close(placeholder.color, (20, 160, 40))
    assert decoded_preview(placeholder.data_uri).size == (16, 24)

    # Computed once per source version: one the caller knows is kept, not made again.
    known = Placeholder("#000000", "data:image/webp;base64,AAAA", 200, 300)
    buffer.seek(0)
    again = render(buffer, [parse_spec("width-100")], focus=Focus(placeholder=known))
    assert again.analysis.placeholder is known


@pytest.mark.corpus
def test_every_corpus_photo_has_a_placeholder_under_the_limit(corpus: Path) -> None:
    for path in sorted((corpus / "photos").iterdir()):
        with path.open("rb") as fp:
            rendering = render(fp, [parse_spec("width-160|format-jpeg")])
        placeholder = rendering.analysis.placeholder
        assert placeholder is not None
        assert len(placeholder.data_uri) < MAX_DATA_URI_BYTES, path.name
        assert (placeholder.width, placeholder.height) == (
            rendering.source.width,
            rendering.source.height,
        )
        assert max(decoded_preview(placeholder.data_uri).size) == 24
