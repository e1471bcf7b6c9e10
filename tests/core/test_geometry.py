"""Geometry planning: sizes and crop boxes per operation, and boxes mapped to stored pixels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

from rendition_worker.core.geometry import (
    Box,
    Geometry,
    Size,
    plan_geometry,
    stored_box,
    upright_size,
)
from rendition_worker.core.specs import Op, Operation, parse_spec

WHOLE_300x200: Box = (0.0, 0.0, 300.0, 200.0)

# (source size, operation, expected box, expected size)
PLANS: list[tuple[Size, str, Box, Size]] = [
    # original: the whole picture as it is.
    ((300, 200), "original", WHOLE_300x200, (300, 200)),
    ((1, 1), "original", (0.0, 0.0, 1.0, 1.0), (1, 1)),
    # width / height: the other side follows the ratio, rounded to the nearest pixel.
    ((300, 200), "width-150", WHOLE_300x200, (150, 100)),
    ((300, 200), "width-100", WHOLE_300x200, (100, 67)),  # 66.67 rounds up
    ((300, 203), "width-100", (0.0, 0.0, 300.0, 203.0), (100, 68)),  # 67.67: not truncated
    ((300, 200), "height-100", WHOLE_300x200, (150, 100)),
    ((300, 200), "height-50", WHOLE_300x200, (75, 50)),
    # ...never upscaled.
    ((300, 200), "width-600", WHOLE_300x200, (300, 200)),
    ((300, 200), "width-300", WHOLE_300x200, (300, 200)),
    ((300, 200), "height-201", WHOLE_300x200, (300, 200)),
    # ...and never below one pixel (a 940x2 strip at 320 wide is 0.68 px high).
    ((940, 2), "width-320", (0.0, 0.0, 940.0, 2.0), (320, 1)),
    ((2, 940), "height-320", (0.0, 0.0, 2.0, 940.0), (1, 320)),
    ((300, 1), "width-100", (0.0, 0.0, 300.0, 1.0), (100, 1)),
    # scale: a percentage, capped at 100.
    ((300, 200), "scale-50", WHOLE_300x200, (150, 100)),
    ((300, 200), "scale-10", WHOLE_300x200, (30, 20)),
    ((300, 200), "scale-150", WHOLE_300x200, (300, 200)),
    ((300, 200), "scale-1000", WHOLE_300x200, (300, 200)),
    ((50, 40), "scale-1", (0.0, 0.0, 50.0, 40.0), (1, 1)),
    # max: fits inside the box; min: covers it. Both keep the ratio.
    ((300, 200), "max-100x100", WHOLE_300x200, (100, 67)),
    ((300, 200), "max-150x50", WHOLE_300x200, (75, 50)),
    ((300, 200), "max-1000x1000", WHOLE_300x200, (300, 200)),
    ((300, 200), "min-100x100", WHOLE_300x200, (150, 100)),
    ((300, 200), "min-30x150", WHOLE_300x200, (225, 150)),
    ((300, 200), "min-600x10", WHOLE_300x200, (300, 200)),
    # fill: the largest centred box of the target's ratio, resized to the target.
    ((300, 200), "fill-100x100", (50.0, 0.0, 250.0, 200.0), (100, 100)),
    ((300, 200), "fill-300x100", (0.0, 50.0, 300.0, 150.0), (300, 100)),
    ((300, 200), "fill-60x20", (0.0, 50.0, 300.0, 150.0), (60, 20)),
    ((300, 200), "fill-20x60", (116.66666666666667, 0.0, 183.33333333333334, 200.0), (20, 60)),
    ((300, 200), "fill-150x100", WHOLE_300x200, (150, 100)),
    ((300, 200), "fill-100x100-c50", (50.0, 0.0, 250.0, 200.0), (100, 100)),
    # ...smaller than the target: the crop as it is, target ratio kept, no upscaling.
    ((300, 200), "fill-600x600", (50.0, 0.0, 250.0, 200.0), (200, 200)),
    ((50, 40), "fill-1000x500", (0.0, 7.5, 50.0, 32.5), (50, 25)),
    ((50, 40), "fill-30x60", (15.0, 0.0, 35.0, 40.0), (20, 40)),
    # ...and clamped to one pixel.
    ((400, 2), "fill-100x1", (100.0, 0.0, 300.0, 2.0), (100, 1)),
    ((400, 2), "fill-1x100", (199.99, 0.0, 200.01, 2.0), (1, 2)),
]


@pytest.mark.parametrize(
    ("source", "spec", "box", "size"),
    PLANS,
    ids=[f"{w}x{h}-{spec}" for (w, h), spec, _, _ in PLANS],
)
def test_plan_geometry(source: Size, spec: str, box: Box, size: Size) -> None:
    geometry = plan_geometry(source, parse_spec(spec).operation)
    assert geometry.size == size
    assert geometry.box == pytest.approx(box)


def test_every_operation_is_in_the_table() -> None:
    planned = {parse_spec(spec).operation.kind for _, spec, _, _ in PLANS}
    assert planned == set(Op)


OPERATIONS = st.one_of(
    st.builds(Operation, st.just(Op.ORIGINAL)),
    st.builds(Operation, st.just(Op.WIDTH), width=st.integers(1, 5000)),
    st.builds(Operation, st.just(Op.HEIGHT), height=st.integers(1, 5000)),
    st.builds(Operation, st.just(Op.SCALE), percent=st.integers(1, 1000)),
    *(
        st.builds(Operation, st.just(kind), width=st.integers(1, 5000), height=st.integers(1, 5000))
        for kind in (Op.MAX, Op.MIN, Op.FILL)
    ),
)
SIZES = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@given(source=SIZES, operation=OPERATIONS)
def test_plans_stay_inside_the_source_and_never_upscale(source: Size, operation: Operation) -> None:
    geometry = plan_geometry(source, operation)
    left, top, right, bottom = geometry.box
    assert 0 <= left < right <= source[0]
    assert 0 <= top < bottom <= source[1]
    width, height = geometry.size
    assert 1 <= width <= max(1, round(right - left))
    assert 1 <= height <= max(1, round(bottom - top))
    if operation.kind is Op.FILL:
        assert_centred_fill(geometry, source, operation)


def assert_centred_fill(geometry: Geometry, source: Size, operation: Operation) -> None:
    """A fill crop is centred, spans the source in one direction and has the target ratio."""
    assert operation.width is not None
    assert operation.height is not None
    left, top, right, bottom = geometry.box
    assert left == pytest.approx(source[0] - right)
    assert top == pytest.approx(source[1] - bottom)
    assert right - left == pytest.approx(source[0]) or bottom - top == pytest.approx(source[1])
    ratio = operation.width / operation.height
    assert (right - left) / (bottom - top) == pytest.approx(ratio)


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        *((orientation, (6, 4)) for orientation in (1, 2, 3, 4)),
        *((orientation, (4, 6)) for orientation in (5, 6, 7, 8)),
        *((orientation, (6, 4)) for orientation in (0, 9)),  # out of range: no rotation
    ],
)
def test_upright_size(orientation: int, upright: Size) -> None:
    assert upright_size((6, 4), orientation) == upright


def numbered(size: Size) -> Image.Image:
    """A picture whose every pixel has its own value, so any misplaced pixel shows."""
    image = Image.new("L", size)
    image.putdata(range(size[0] * size[1]))
    return image


def with_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """`image` carrying EXIF `orientation`, for ImageOps.exif_transpose to display."""
    image.getexif()[0x0112] = orientation
    return image


def integer_boxes(size: Size) -> list[tuple[int, int, int, int]]:
    """Every box with whole-pixel edges inside a picture of `size`."""
    width, height = size
    return [
        (left, top, right, bottom)
        for left in range(width)
        for right in range(left + 1, width + 1)
        for top in range(height)
        for bottom in range(top + 1, height + 1)
    ]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_crops_the_same_pixels_as_cropping_upright(orientation: int) -> None:
    # Pillow's exif_transpose is the oracle for both the upright picture and the crop's turn.
    stored = numbered((6, 4))
    upright = ImageOps.exif_transpose(with_orientation(stored.copy(), orientation))
    assert upright.size == upright_size(stored.size, orientation)
    for box in integer_boxes(upright.size):
        mapped = stored_box(box, orientation, stored.size)
        assert all(edge == int(edge) for edge in mapped), (box, mapped)
        crop = stored.crop(tuple(int(edge) for edge in mapped))
        shown = ImageOps.exif_transpose(with_orientation(crop, orientation))
        assert shown.tobytes() == upright.crop(box).tobytes(), (box, mapped)
