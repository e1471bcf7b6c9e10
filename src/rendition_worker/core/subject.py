"""Estimate where a picture's subject is, from a small copy: detail, contrast, colour, skin.

A saliency map adds four cues, each scaled to its own strong values: detail (edges, the
subject is usually the sharp part), contrast against the picture's typical brightness,
saturation, and skin tones (people). The picture's usual level of each is taken as
background and subtracted, so a flat sky or wall counts for nothing. The subject box holds
the central SUBJECT_MASS of what is left along each axis. Pure Pillow, on a ~256 px copy:
a few milliseconds.
"""

from __future__ import annotations

from PIL import Image, ImageChops, ImageFilter, ImageOps

from rendition_worker.core.focal import FocalBox

# Bumped whenever the estimate changes, so that crops placed by it get new names.
SUBJECT_VERSION = 1
# Weights of the cues (detail, contrast, saturation, skin), out of 1.
WEIGHTS = (0.45, 0.2, 0.2, 0.15)
# The box holds this share of the saliency along each axis (the tails are noise).
SUBJECT_MASS = 0.8
# Skin tones in YCbCr (Chai and Ngan's classic ranges), which hold across complexions.
SKIN_CB = (77, 127)
SKIN_CR = (133, 173)
# A cue's strong value: this percentile is scaled to full intensity.
STRONG_PERCENTILE = 0.998
# What counts as background: this percentile of a cue is subtracted from it.
BACKGROUND_PERCENTILE = 0.5


def estimate_subject(small: Image.Image) -> FocalBox:
    """The box around the subject of `small` (upright sRGB), in fractions of its size."""
    rgb = small.convert("RGB")
    saliency = saliency_map(rgb)
    columns = _profile(saliency, horizontal=True)
    rows = _profile(saliency, horizontal=False)
    left, right = _central_span(columns)
    top, bottom = _central_span(rows)
    width, height = rgb.size
    return FocalBox(
        round(left / width, 4),
        round(top / height, 4),
        round(max(right - left, 1) / width, 4),
        round(max(bottom - top, 1) / height, 4),
    )


def saliency_map(rgb: Image.Image) -> Image.Image:
    """How much each pixel looks like subject, 0..255 (an L image of `rgb`'s size)."""
    luma = rgb.convert("L")
    # Pillow's kernel filters leave the outermost pixels as they were (brightness, not
    # edges): blank that frame, or every picture would have "detail" all around it.
    edges = luma.filter(ImageFilter.FIND_EDGES)
    if min(luma.size) > 2:  # a picture of one or two pixels across is all frame
        edges = ImageOps.expand(ImageOps.crop(edges, 1), 1, fill=0)
    else:
        edges = Image.new("L", luma.size, 0)
    detail = edges.filter(ImageFilter.GaussianBlur(2))
    typical = _percentile(luma, 0.5)
    contrast = ImageChops.difference(luma, Image.new("L", luma.size, typical))
    _, saturation, value = rgb.convert("HSV").split()
    colourful = ImageChops.multiply(saturation, value)
    _, cb, cr = rgb.convert("YCbCr").split()
    skin = ImageChops.multiply(
        cb.point(lambda v: 255 if SKIN_CB[0] <= v <= SKIN_CB[1] else 0),
        cr.point(lambda v: 255 if SKIN_CR[0] <= v <= SKIN_CR[1] else 0),
    )
    total = Image.new("L", luma.size, 0)
    for cue, weight in zip((detail, contrast, colourful, skin), WEIGHTS, strict=True):
        total = ImageChops.add(total, _foreground(cue).point(lambda v, w=weight: round(v * w)))
    return total.filter(ImageFilter.GaussianBlur(3))


def _foreground(cue: Image.Image) -> Image.Image:
    """The cue above its background level, stretched so that strong values reach 255."""
    background = _percentile(cue, BACKGROUND_PERCENTILE)
    strong = max(_percentile(cue, STRONG_PERCENTILE), background + 1)
    scale = 255 / (strong - background)
    return cue.point(lambda v: min(255, round(max(0, v - background) * scale)))


def _percentile(image: Image.Image, fraction: float) -> int:
    histogram = image.histogram()[:256]
    limit = fraction * sum(histogram)
    running = 0
    for level, count in enumerate(histogram):
        running += count
        if running >= limit:
            return level
    return 255


def _profile(saliency: Image.Image, *, horizontal: bool) -> list[float]:
    # A box resize to one row (or column) gives each column's (row's) mean exactly.
    width, height = saliency.size
    size = (width, 1) if horizontal else (1, height)
    line = saliency.resize(size, Image.Resampling.BOX)
    # An L image's histogram-free read: tobytes() is one byte per pixel, in order.
    return [float(value) for value in line.tobytes()]


def _central_span(profile: list[float]) -> tuple[int, int]:
    """The span holding the central SUBJECT_MASS of `profile`; the whole when it is flat."""
    total = sum(profile)
    if total <= 0:
        return 0, len(profile)
    tail = total * (1 - SUBJECT_MASS) / 2
    running, start = 0.0, 0
    for index, value in enumerate(profile):
        running += value
        if running > tail:
            start = index
            break
    running, end = 0.0, len(profile)
    for index in range(len(profile) - 1, -1, -1):
        running += profile[index]
        if running > tail:
            end = index + 1
            break
    return start, max(end, start + 1)
