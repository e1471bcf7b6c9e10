"""A source's placeholder: its dominant colour and a tiny blurred preview, as a data URI.

Both come from the small upright sRGB copy the pipeline makes once per source version, so
they cost milliseconds beside the encodes. The preview is a WebP a few dozen pixels wide
that a browser stretches (smoothly) under the real image while it loads.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image, ImageFilter

# The data URI must stay under this (the contract's promise): it is inlined in every page.
MAX_DATA_URI_BYTES = 1_500
# Long side of the preview, tried in order until the URI fits; at 24 px a photo's preview is
# 250-600 bytes as WebP, enough for its shapes and colours, too small to show detail.
PREVIEW_SIDES = (24, 16, 12, 8, 4)
PREVIEW_QUALITY = 50
# Colours the copy is reduced to before the most common one is chosen: few enough that a
# sky's shades count as one colour, enough that a small bright subject does not win.
PALETTE_COLOURS = 6
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
    rgba = _fit(image.convert("RGBA"), COLOUR_SIDE)
    # Transparent pixels are not part of the picture's colour.
    opaque = rgba.getchannel("A").point(lambda alpha: 255 if alpha >= 128 else 0)
    rgb = rgba.convert("RGB")
    if opaque.getextrema()[1] == 0:
        return "#ffffff"
    palette = rgb.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    counts = [0] * 256
    # One byte per pixel in both (P and L modes), in the same order.
    for index, alpha in zip(palette.tobytes(), opaque.tobytes(), strict=True):
        if alpha:
            counts[index] += 1
    best = max(range(256), key=counts.__getitem__)
    colours = palette.getpalette() or []
    red, green, blue = colours[3 * best : 3 * best + 3]
    return f"#{red:02x}{green:02x}{blue:02x}"


def preview_data_uri(image: Image.Image) -> str:
    """A blurred WebP of `image` a few pixels wide, as a data URI under MAX_DATA_URI_BYTES."""
    mode = "RGBA" if image.mode in {"RGBA", "LA"} else "RGB"
    converted = image.convert(mode)
    for side in PREVIEW_SIDES:
        # Blurred before shrinking, so that the few pixels left are averages, not samples.
        radius = max(converted.size) / side / 2
        tiny = _fit(converted.filter(ImageFilter.GaussianBlur(radius)), side)
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
