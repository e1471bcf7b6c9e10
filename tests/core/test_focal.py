"""Focal boxes and `fill` crop placement, as spec tables: pure, no Django.

The crop table follows Wagtail's documented `fill` rules ("Focal points", image filter
docs): the crop has the output's ratio, stays inside the image, never crops into the focal
point, is never smaller than the output, `-c100` crops as closely as possible to the focal
point and `-c0` (the default) as far from it as possible, with numbers in between
interpolating; without a focal point the crop is centred and `-cN` does nothing.
Wagtail rounds its crop to whole pixels; ours stays in float pixels (the pipeline resizes
from sub-pixel boxes), so the table's boxes are exact arithmetic.
"""

from __future__ import annotations

import math

import pytest

from rendition_worker.core.focal import (
    FocalBox,
    FocalMode,
    InvalidFocalPoint,
    fill_box,
    parse_focal_box,
    placement_key,
    stored_focal_box,
)
from rendition_worker.core.geometry import plan_geometry
from rendition_worker.core.naming import spec_fingerprint
from rendition_worker.core.specs import parse_spec

# A 1000x500 picture whose subject is the 100x100 px square at (700, 200).
SUBJECT = (0.7, 0.4, 0.1, 0.2)

# (case, source size, spec, focal box fractions, expected crop box in px, Wagtail's rule)
CROPS: list[tuple[str, tuple[int, int], str, tuple[float, ...] | None, tuple[float, ...], str]] = [
    (
        "c0-largest-crop-placed-on-the-subject",
        (1000, 500),
        "fill-100x100",
        SUBJECT,
        (375, 0, 875, 500),
        "-c0 crops as far from the focal point as possible (the largest crop), yet around it",
    ),
    (
        "c50-halfway",
        (1000, 500),
        "fill-100x100-c50",
        SUBJECT,
        (525, 100, 825, 400),
        "numbers in between interpolate between the two extremes (500 px -> 300 px -> 100 px)",
    ),
    (
        "c100-the-focal-point-itself",
        (1000, 500),
        "fill-100x100-c100",
        SUBJECT,
        (700, 200, 800, 300),
        "-c100 crops as closely as possible to the focal point",
    ),
    (
        "c100-never-smaller-than-the-output",
        (1000, 500),
        "fill-200x200-c100",
        SUBJECT,
        (600, 150, 800, 350),
        "the crop must not be smaller than the final image (200 px, not the 100 px subject)",
    ),
    (
        "c50-capped-by-the-output-size",
        (1000, 500),
        "fill-400x400-c50",
        SUBJECT,
        (450, 50, 850, 450),
        "closeness stops where the crop reaches the output size (400 px, not 300 px)",
    ),
    (
        "c0-never-outside-the-image",
        (1000, 500),
        "fill-100x100",
        (0.95, 0.4, 0.05, 0.2),
        (500, 0, 1000, 500),
        "the crop must not escape the bounds of the original image",
    ),
    (
        "c50-subject-at-the-edge-clamped",
        (1000, 500),
        "fill-100x100-c50",
        (0.95, 0.4, 0.05, 0.2),
        (700, 100, 1000, 400),
        "inside the image, around the focal point, at the interpolated size",
    ),
    (
        "c0-crop-into-the-subject-never",
        (1000, 500),
        "fill-50x100",
        (0.55, 0.1, 0.2, 0.8),
        (500, 0, 750, 500),
        "the crop must not crop into the focal point (a 250 px crop holds the 200 px subject)",
    ),
    (
        "c100-aspect-of-the-output-not-of-the-subject",
        (1000, 500),
        "fill-200x100-c100",
        SUBJECT,
        (600, 200, 800, 300),
        "the crop must match the aspect ratio of the final image (2:1 around a square)",
    ),
    (
        "no-focal-point-c0-centred",
        (1000, 500),
        "fill-100x100",
        None,
        (250, 0, 750, 500),
        "without a focal point the crop is centred",
    ),
    (
        "no-focal-point-c100-still-centred-and-largest",
        (1000, 500),
        "fill-100x100-c100",
        None,
        (250, 0, 750, 500),
        "crop closeness zooms towards a focal point only",
    ),
    (
        "subject-larger-than-any-crop-centred-on-it",
        (1000, 500),
        "fill-100x200",
        (0.1, 0.0, 0.8, 1.0),
        (375, 0, 625, 500),
        "a focal point larger than the crop: centred on it (Wagtail moves to cover what it can)",
    ),
]


@pytest.mark.parametrize(
    ("size", "spec", "focal", "expected", "rule"),
    [case[1:] for case in CROPS],
    ids=[case[0] for case in CROPS],
)
def test_fill_crops_follow_wagtails_closeness_rules(
    size: tuple[int, int],
    spec: str,
    focal: tuple[float, ...] | None,
    expected: tuple[float, ...],
    rule: str,
) -> None:
    operation = parse_spec(spec).operation
    assert operation.width and operation.height
    focus = parse_focal_box(focal).pixels(size) if focal is not None else None
    box = fill_box(size, (operation.width, operation.height), operation.closeness, focus)
    assert box == pytest.approx(expected), rule
    # The invariants of every row: the output's ratio, inside the image, never upscaled.
    left, top, right, bottom = box
    assert (right - left) / (bottom - top) == pytest.approx(operation.width / operation.height)
    assert left >= 0 and top >= 0 and right <= size[0] and bottom <= size[1]
    assert right - left >= min(operation.width, size[0]) - 1e-9
    if focus is not None and focus[2] - focus[0] <= right - left:
        assert left <= focus[0] + 1e-9 and focus[2] <= right + 1e-9


def test_the_planned_fill_uses_the_crop_and_an_estimate_does_not_zoom() -> None:
    operation = parse_spec("fill-100x100-c100").operation
    focus = parse_focal_box(SUBJECT).pixels((1000, 500))
    placed = plan_geometry((1000, 500), operation, focus)
    assert placed.box == pytest.approx((700, 200, 800, 300))
    assert placed.size == (100, 100)
    # An estimated subject moves the crop but is not trusted to zoom in on.
    estimated = plan_geometry((1000, 500), operation, focus, zoom=False)
    assert estimated.box == pytest.approx((375, 0, 875, 500))
    assert estimated.size == (100, 100)
    # Other operations ignore the focus: they do not crop.
    whole = plan_geometry((1000, 500), parse_spec("min-100x100").operation, focus)
    assert whole.box == (0, 0, 1000, 500)


# (value, error, text of the message)
BAD_BOXES: list[tuple[object, type[Exception], str]] = [
    ((0.5, 0.5, 0.6, 0.2), InvalidFocalPoint, "reaches outside the image"),
    ((0.0, 0.9, 0.5, 0.2), InvalidFocalPoint, "reaches outside the image"),
    ((-0.01, 0.0, 0.5, 0.5), InvalidFocalPoint, "reaches outside the image"),
    ((0.1, 0.1, 0.0, 0.5), InvalidFocalPoint, "zero size"),
    ((0.1, 0.1, 0.5, -0.5), InvalidFocalPoint, "zero size"),
    ((0.1, 0.1, math.inf, 0.5), InvalidFocalPoint, "not a finite number"),
    ((0.99999, 0.1, 0.000001, 0.5), InvalidFocalPoint, "too thin"),
    ((0.1, 0.1, 0.5), TypeError, "(x, y, width, height)"),
    ("0.1,0.1,0.5,0.5", TypeError, "(x, y, width, height)"),
    ({"x": 0.1}, TypeError, "(x, y, width, height)"),
    ((0.1, "0.1", 0.5, 0.5), TypeError, "'0.1' is not a number"),
    ((0.1, 0.1, False, 0.5), TypeError, "False is not a number"),
]


@pytest.mark.parametrize(("value", "error", "message"), BAD_BOXES, ids=repr)
def test_bad_focal_boxes_are_refused_saying_why(
    value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        parse_focal_box(value)
    assert message in str(raised.value)
    assert "fractions 0..1 of the upright image" in str(raised.value)


def test_focal_boxes_are_canonical() -> None:
    assert parse_focal_box([0, 0, 1, 1]) == FocalBox(0.0, 0.0, 1.0, 1.0)
    # 1e-9 of slack for sums such as 0.1 + 0.9; rounded to 4 decimals, one spelling each.
    assert parse_focal_box((0.1, 0.2, 0.9, 0.8 + 1e-10)).key == "0.1000,0.2000,0.9000,0.8000"
    assert parse_focal_box((1 / 3, 0, 2 / 3, 1)).as_list() == [0.3333, 0.0, 0.6667, 1.0]
    assert stored_focal_box([0.1, 0.1, 0.5, 0.5]) == FocalBox(0.1, 0.1, 0.5, 0.5)
    # Junk in the database (raw SQL) places crops as if there were no box.
    assert stored_focal_box("junk") is None
    assert stored_focal_box([2, 2, 2, 2]) is None
    assert stored_focal_box(None) is None


def test_only_cropping_specs_carry_the_placement_in_their_names() -> None:
    base = "1a2b3c4d"
    box = parse_focal_box(SUBJECT)
    placements = {
        placement_key(box, FocalMode.AUTO, 1),
        placement_key(None, FocalMode.AUTO, 1),
        placement_key(None, FocalMode.AUTO, 2),
        placement_key(None, FocalMode.CENTRE, 1),
    }
    assert placement_key(None, FocalMode.CENTRE, 1) == ""  # centred: the names of before
    for text in ("width-640|format-avif", "original", "max-100x100", "scale-50"):
        spec = parse_spec(text)
        assert {spec_fingerprint(base, spec, placement) for placement in placements} == {base}
    for text in ("fill-64x64|format-webp", "fill-64x64-c50", "min-100x100"):
        spec = parse_spec(text)
        fingerprints = {spec_fingerprint(base, spec, placement) for placement in placements}
        assert len(fingerprints) == 4, text
        assert spec_fingerprint(base, spec, "") == base
        assert all(len(value) == 8 for value in fingerprints)


def test_float_rounding_never_puts_a_crop_outside_the_picture() -> None:
    # Found by test_geometry's property test: 15 * (65/15) / (65/15) is 15.000000000000002.
    for focus in (None, (0.0, 0.0, 65.0, 15.0), (60.0, 10.0, 65.0, 15.0)):
        left, top, right, bottom = fill_box((65, 15), (65, 15), 50, focus)
        assert 0 <= left < right <= 65 and 0 <= top < bottom <= 15
