"""Focal boxes and crop placement: where a `fill` crop goes so that the subject stays in it.

A focal box is `(x, y, width, height)` in fractions of the upright picture, so it survives
any decode scale. `fill_box` follows Wagtail's `fill` rules (its documented behaviour):
the crop has the output's aspect ratio, stays inside the picture, never cuts into the focal
box when it can hold it, is never smaller than the output (no upscaling), and `-cN` moves
its size from the largest such crop (N = 0) to the closest one around the focal box
(N = 100). Its centre sits where the focal box's centre sits in the picture, relatively.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from rendition_worker.core.errors import RenditionError

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels
# Stored fractions are rounded to this many decimals: 1/10,000 of a side is under half a
# pixel of a 4000 px photo, and a canonical value gives one spelling to one box (names hash it).
DECIMALS = 4
# Sub-pixel slack for sums of fractions such as 0.1 + 0.9.
_EPSILON = 1e-9


class InvalidFocalPoint(RenditionError, ValueError):
    """A focal box outside the picture, of no size, or not four numbers."""


class FocalMode(StrEnum):
    """Where crops go when no focal box is set (the FOCAL_POINT setting)."""

    AUTO = "auto"
    CENTRE = "centre"


@dataclass(frozen=True, slots=True)
class FocalBox:
    """A box in fractions (0..1) of the upright picture: left, top, width, height."""

    x: float
    y: float
    width: float
    height: float

    def pixels(self, size: tuple[int, int]) -> Box:
        """The box in pixels of a picture of `size`: (left, top, right, bottom)."""
        width, height = size
        return (
            self.x * width,
            self.y * height,
            (self.x + self.width) * width,
            (self.y + self.height) * height,
        )

    def as_list(self) -> list[float]:
        """The JSON form the database stores: [x, y, width, height]."""
        return [self.x, self.y, self.width, self.height]

    @property
    def key(self) -> str:
        """A canonical spelling, for rendition names: `x,y,w,h` with fixed decimals."""
        return ",".join(f"{value:.{DECIMALS}f}" for value in self.as_list())

    def area_inside(self, box: Box, size: tuple[int, int]) -> float:
        """The fraction of this box's area that lies inside `box` (pixels of `size`)."""
        left, top, right, bottom = self.pixels(size)
        overlap_w = max(0.0, min(right, box[2]) - max(left, box[0]))
        overlap_h = max(0.0, min(bottom, box[3]) - max(top, box[1]))
        area = (right - left) * (bottom - top)
        return overlap_w * overlap_h / area if area else 0.0


def parse_focal_box(value: object) -> FocalBox:
    """Validate `(x, y, width, height)` fractions of the upright picture into a FocalBox.

    `TypeError` unless four real numbers; `InvalidFocalPoint` (a ValueError) if the box is
    of zero size or reaches outside 0..1.
    """
    accepted = "a focal point is (x, y, width, height) in fractions 0..1 of the upright image"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 4:
        raise TypeError(f"{accepted}, not {value!r}")
    numbers: list[float] = []
    for item in value:
        # bool is an int subclass; True is not meant as 1.0.
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise TypeError(f"{accepted}; {item!r} is not a number")
        if not math.isfinite(item):
            raise InvalidFocalPoint(f"{accepted}; {item!r} is not a finite number")
        numbers.append(float(item))
    x, y, width, height = numbers
    if width <= 0 or height <= 0:
        raise InvalidFocalPoint(f"{accepted}; {tuple(value)!r} has zero size")
    if x < 0 or y < 0 or x + width > 1 + _EPSILON or y + height > 1 + _EPSILON:
        raise InvalidFocalPoint(f"{accepted}; {tuple(value)!r} reaches outside the image")
    x, y = round(x, DECIMALS), round(y, DECIMALS)
    # Rounded sizes stay positive and inside: at least one step, at most what is left.
    width = min(max(round(width, DECIMALS), 10**-DECIMALS), round(1 - x, DECIMALS))
    height = min(max(round(height, DECIMALS), 10**-DECIMALS), round(1 - y, DECIMALS))
    if width <= 0 or height <= 0:
        raise InvalidFocalPoint(f"{accepted}; {tuple(value)!r} is too thin to place")
    return FocalBox(x, y, width, height)


def stored_focal_box(value: object) -> FocalBox | None:
    """The FocalBox of a stored `[x, y, w, h]`; None for none, or for junk (raw SQL)."""
    if value is None:
        return None
    try:
        return parse_focal_box(value)
    except (TypeError, ValueError):
        return None


def placement_key(box: FocalBox | None, mode: FocalMode | str, subject_version: int) -> str:
    """What the pixels of a crop depend on besides source and spec; '' for a centred crop.

    It goes into the names of cropping renditions only, so that a new focal point, or
    another FOCAL_POINT mode or subject estimator, gives those (and only those) new names.
    """
    if box is not None:
        return f"box:{box.key}"
    if mode == FocalMode.AUTO:
        return f"auto:{subject_version}"
    return ""


def fill_box(
    size: tuple[int, int],
    target: tuple[int, int],
    closeness: int = 0,
    focus: Box | None = None,
) -> Box:
    """The crop of a `fill-WxH-cN` on an upright picture of `size`, in float pixels.

    `focus` is the focal box in pixels, or None for a centred crop. `closeness` (0..100)
    only zooms when there is a focus; the crop is never smaller than `target`.
    """
    width, height = size
    target_w, target_h = target
    ratio = target_w / target_h
    max_w = min(float(width), height * ratio)
    crop_w = max_w
    if focus is not None and closeness > 0:
        left, top, right, bottom = focus
        min_w = max(right - left, (bottom - top) * ratio)
        if min_w < max_w:
            # The closeness at which the crop is exactly as large as the output: any
            # closer and the output would be upscaled (Wagtail's cap).
            cap = 1 - (target_w - min_w) / (max_w - min_w)
            amount = min(closeness / 100, cap)
            if amount > 0:
                crop_w = max_w + (min_w - max_w) * amount
    # min(): H * ratio / ratio can come out a hair over H in floating point.
    crop_h = min(crop_w / ratio, float(height))
    if focus is None:
        centre_x, centre_y = width / 2, height / 2
    else:
        centre_x, centre_y = (focus[0] + focus[2]) / 2, (focus[1] + focus[3]) / 2
    # The focus centre keeps its relative position: at u of the picture, at u of the crop.
    crop_left = centre_x - centre_x / width * crop_w
    crop_top = centre_y - centre_y / height * crop_h
    if focus is not None:
        crop_left = _cover(crop_left, crop_w, focus[0], focus[2])
        crop_top = _cover(crop_top, crop_h, focus[1], focus[3])
    crop_left = max(0.0, min(crop_left, width - crop_w))
    crop_top = max(0.0, min(crop_top, height - crop_h))
    # min(): (W - w) + w can also come out a hair over W.
    return (crop_left, crop_top, min(crop_left + crop_w, width), min(crop_top + crop_h, height))


def _cover(start: float, length: float, low: float, high: float) -> float:
    # Move a span so that it holds [low, high]; a span too short keeps the focus centred.
    if high - low > length:
        return (low + high) / 2 - length / 2
    if start > low:
        return low
    if start + length < high:
        return high - length
    return start
