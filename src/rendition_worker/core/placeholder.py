"""A source's placeholder: its dominant colour and a tiny blurred preview, as a data URI.

Both come from the small upright sRGB copy the pipeline makes once per source version, so
they cost milliseconds beside the encodes. The preview is a WebP a few dozen pixels wide
that a browser stretches (smoothly, so it looks blurred) under the real image while it
loads.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

# The data URI must stay under this (the contract's promise): it is inlined in every page.
MAX_DATA_URI_BYTES = 1_500
# Long side of the preview, tried in order until the URI fits; at 24 px a photo's preview is
# 250-600 bytes as WebP, enough for its shapes and colours, too small to show detail.
PREVIEW_SIDES = (24, 16, 12, 8, 4)
PREVIEW_QUALITY = 50
# Colours the copy is reduced to, then grouped: palette colours closer than
# SAME_COLOUR_DISTANCE (RGB, Euclidean) are shades of one colour. Taking the most common
# palette entry alone let a dark minority win whenever the larger area came in several
# shades (a sky's gradient, a white appliance in shadow came out #272321); grouped, the
# largest area wins and its colour is its shades' mean.
PALETTE_COLOURS = 8
KMEANS_PASSES = 3
SAME_COLOUR_DISTANCE = 48
# Long side the colour is counted at: 64 px (4,096 pixels) is plenty for a histogram.
COLOUR_SIDE = 64


@dataclass(frozen=True, slots=True)
class Placeholder:
    """What a page shows before a rendition loads; `width`/`height` of the upright source."""

    color: str
    data_uri: str
    width: int
    height: int


def make_placeholder(small: Image.Image, size: tuple[int, int]) -> Placeholder:
    """The placeholder of a source of upright `size`, from its small sRGB copy `small`."""
    width, height = size
    return Placeholder(dominant_color(small), preview_data_uri(small), width, height)


def dominant_color(image: Image.Image) -> str:
    """The most common colour of `image` after reducing it to a few, as `#rrggbb`."""
    rgba = _fit(image, COLOUR_SIDE).convert("RGBA")
    # Transparent pixels are not part of the picture's colour.
    opaque = rgba.getchannel("A").point(lambda alpha: 255 if alpha >= 128 else 0)
    rgb = rgba.convert("RGB")
    if opaque.getextrema()[1] == 0:
        return "#ffffff"
    palette = rgb.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT, kmeans=KMEANS_PASSES)
    counts = [0] * 256
    # One byte per pixel in both (P and L modes), in the same order.
    for index, alpha in zip(palette.tobytes(), opaque.tobytes(), strict=True):
        if alpha:
            counts[index] += 1
    entries = palette.getpalette() or []
    colours = [
        (counts[index], tuple(entries[3 * index : 3 * index + 3]))
        for index in range(len(entries) // 3)
        if counts[index]
    ]
    group = max(_shades(colours), key=lambda members: sum(count for count, _ in members))
    total = sum(count for count, _ in group)
    red, green, blue = (
        round(sum(count * colour[channel] for count, colour in group) / total)
        for channel in range(3)
    )
    return f"#{red:02x}{green:02x}{blue:02x}"


def _shades(colours: list[tuple[int, tuple[int, ...]]]) -> list[list[tuple[int, tuple[int, ...]]]]:
    """Group (count, colour) pairs into chains of colours each close to another of the group."""
    groups: list[list[tuple[int, tuple[int, ...]]]] = []
    for entry in colours:
        joined = [group for group in groups if any(_near(entry[1], c) for _, c in group)]
        merged = [entry] + [member for group in joined for member in group]
        groups = [group for group in groups if group not in joined] + [merged]
    return groups


def _near(first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    return sum((a - b) ** 2 for a, b in zip(first, second, strict=True)) <= SAME_COLOUR_DISTANCE**2


def preview_data_uri(image: Image.Image) -> str:
    """A blurred WebP of `image` a few pixels wide, as a data URI under MAX_DATA_URI_BYTES."""
    mode = "RGBA" if image.mode in {"RGBA", "LA"} else "RGB"
    for side in PREVIEW_SIDES:
        # A box filter averages every source pixel into the few left (no sampling noise);
        # the browser's smooth upscaling of those few is the blur.
        tiny = _fit(image, side).convert(mode)
        buffer = io.BytesIO()
        tiny.save(buffer, "WEBP", quality=PREVIEW_QUALITY, method=6)
        uri = "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(uri) < MAX_DATA_URI_BYTES:
            return uri
    raise AssertionError("a 4 px WebP is always far under the limit")  # pragma: no cover


def _fit(image: Image.Image, side: int) -> Image.Image:
    width, height = image.size
    scale = side / max(width, height)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BOX)
