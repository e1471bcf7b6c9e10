"""Plan the pixels of a rendition: which part of the source, at which size, never upscaled.

Planning is pure arithmetic on sizes and boxes; the pipeline applies a plan in one resize.
Boxes are in float source pixels so that crops keep sub-pixel accuracy through a resize.
"""

from __future__ import annotations

from dataclasses import dataclass

from rendition_worker.core.focal import fill_box
from rendition_worker.core.specs import Op, Operation

Box = tuple[float, float, float, float]
Size = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Geometry:
    """The part of the (upright) source to use and the size to resize it to."""

    box: Box
    size: Size

    @property
    def scale(self) -> float:
        """Output pixels per source pixel: at most 1, unless a side was clamped to 1 px."""
        return max(
            self.size[0] / (self.box[2] - self.box[0]), self.size[1] / (self.box[3] - self.box[1])
        )


def _scaled(width: int, height: int, factor: float) -> Size:
    # Clamped to one pixel: a 940x2 strip at 320 wide is 0.68 px high otherwise.
    factor = min(factor, 1.0)
    return max(1, round(width * factor)), max(1, round(height * factor))


def plan_geometry(
    source_size: Size, operation: Operation, focus: Box | None = None, *, zoom: bool = True
) -> Geometry:
    """Return the crop box and output size of `operation` on an upright source of `source_size`.

    `focus`: the subject in upright pixels, which a `fill` crop keeps inside; `zoom=False`
    ignores `-cN` (an estimated subject places the crop but is not trusted to zoom in on).
    """
    width, height = source_size
    whole: Box = (0.0, 0.0, float(width), float(height))
    kind = operation.kind
    if kind is Op.ORIGINAL:
        return Geometry(whole, (width, height))
    if kind is Op.WIDTH:
        return Geometry(whole, _scaled(width, height, _require(operation.width) / width))
    if kind is Op.HEIGHT:
        return Geometry(whole, _scaled(width, height, _require(operation.height) / height))
    if kind is Op.SCALE:
        return Geometry(whole, _scaled(width, height, _require(operation.percent) / 100))
    target_w, target_h = _require(operation.width), _require(operation.height)
    if kind is Op.MAX:
        return Geometry(whole, _scaled(width, height, min(target_w / width, target_h / height)))
    if kind is Op.MIN:
        return Geometry(whole, _scaled(width, height, max(target_w / width, target_h / height)))
    if kind is Op.FILL:
        closeness = operation.closeness if zoom else 0
        return _plan_fill(width, height, target_w, target_h, closeness, focus)
    raise AssertionError(f"unhandled operation {kind!r}")  # pragma: no cover


def _plan_fill(
    width: int, height: int, target_w: int, target_h: int, closeness: int, focus: Box | None
) -> Geometry:
    box = fill_box((width, height), (target_w, target_h), closeness, focus)
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    if crop_w <= target_w:
        # Smaller than the target: keep the ratio, never upscale.
        return Geometry(box, (max(1, round(crop_w)), max(1, round(crop_h))))
    return Geometry(box, (target_w, target_h))


def _require(value: int | None) -> int:
    if value is None:  # pragma: no cover - the parser guarantees it
        raise AssertionError("operation without its dimension")
    return value


# EXIF orientations 5-8 swap width and height of the stored pixels.
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def upright_size(stored_size: Size, orientation: int) -> Size:
    """The displayed size of stored pixels carrying EXIF `orientation`."""
    width, height = stored_size
    return (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)


def stored_box(box: Box, orientation: int, stored_size: Size) -> Box:
    """Map a box on the upright picture to the same pixels in the stored (unrotated) image.

    Resizing in stored orientation and rotating the small output is much cheaper than
    rotating the whole decoded source first.
    """
    sw, sh = stored_size
    corners = [(box[0], box[1]), (box[2], box[3])]
    mapped = [_to_stored(x, y, orientation, sw, sh) for x, y in corners]
    xs, ys = [p[0] for p in mapped], [p[1] for p in mapped]
    return (min(xs), min(ys), max(xs), max(ys))


def _to_stored(x: float, y: float, orientation: int, sw: int, sh: int) -> tuple[float, float]:
    # Inverse of the transpose that ImageOps.exif_transpose applies for each orientation.
    mapping = {
        2: (sw - x, y),
        3: (sw - x, sh - y),
        4: (x, sh - y),
        5: (y, x),
        6: (y, sh - x),
        7: (sw - y, sh - x),
        8: (sw - y, x),
    }
    return mapping.get(orientation, (x, y))
