"""The automatic subject (FOCAL_POINT "auto"), on real photos and on a synthetic control set.

Real photos: the box estimated for each photo of the corpus is written in a table here
and checked (within a small tolerance: the small copy depends a little on the decode
scale, which depends on the largest rendition asked for). The boxes were looked at drawn
on the photos: they hold the saw and the hands, the tree's face, the painting, the
appliance; on a photo without a clear subject (the palms) they take most of the frame.

Control set: a detailed subject on a flat background at the left, right, top and bottom
edges. A `fill` crop of a very different ratio keeps at least 90% of the subject when
placed by the estimate, where a centred crop keeps less than half.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from rendition_worker.core.analysis import Focus
from rendition_worker.core.focal import FocalBox, FocalMode
from rendition_worker.core.geometry import plan_geometry
from rendition_worker.core.pipeline import render
from rendition_worker.core.specs import parse_spec

# photo -> auto box (x, y, width, height), rendered with AUTO_SPECS.
CORPUS_SUBJECTS = {
    "photo-flickr-2725x2225.jpg": (0.1406, 0.2105, 0.6328, 0.6938),
    "photo-iphone7-4032x3024-orient6.jpg": (0.0573, 0.1016, 0.7917, 0.8203),
    "photo-iphone7-4032x3024.jpg": (0.0703, 0.1042, 0.7656, 0.8021),
    "photo-olympus-ep3-4032x3024.jpg": (0.1797, 0.1615, 0.6797, 0.6667),
    "photo-olympus-u1020-3648x2736.jpg": (0.0625, 0.1302, 0.875, 0.7656),
    "photo-xiaomi-mi9t-4000x3000-orient6.jpg": (0.0417, 0.0781, 0.75, 0.8633),
}
AUTO_SPECS = [parse_spec("fill-160x160|format-jpeg")]
# The same source decoded for a 2560 px rendition gives a slightly different small copy.
LARGE_SPECS = [parse_spec("width-2560|format-jpeg"), *AUTO_SPECS]
TOLERANCE = 0.03


def subject_of(path: Path, specs: list[object]) -> FocalBox:
    with path.open("rb") as fp:
        rendering = render(fp, specs, focus=Focus(mode=FocalMode.AUTO))  # type: ignore[arg-type]
    subject = rendering.analysis.subject
    assert subject is not None
    return subject


@pytest.mark.corpus
def test_the_corpus_photos_have_the_subjects_of_the_table(corpus: Path) -> None:
    photos = sorted((corpus / "photos").iterdir())
    assert sorted(path.name for path in photos) == sorted(CORPUS_SUBJECTS)
    for path in photos:
        expected = CORPUS_SUBJECTS[path.name]
        for specs in (AUTO_SPECS, LARGE_SPECS):
            found = subject_of(path, specs).as_list()  # type: ignore[arg-type]
            assert found == pytest.approx(expected, abs=TOLERANCE), (path.name, found)


def detailed_scene(size: tuple[int, int], subject: tuple[int, int, int, int]) -> bytes:
    """A flat beige JPEG with a detailed, colourful subject (random 6 px tiles) at `subject`."""
    image = Image.new("RGB", size, (205, 196, 178))
    tiles = random.Random(12)
    left, top, right, bottom = subject
    for y in range(top, bottom, 6):
        for x in range(left, right, 6):
            colour = tuple(tiles.randrange(256) for _ in range(3))
            image.paste(colour, (x, y, min(x + 6, right), min(y + 6, bottom)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# (edge, picture size, the subject's box in px, specs of a very different ratio)
CONTROLS = [
    ("left", (1200, 400), (20, 50, 320, 350), ("fill-400x400", "fill-300x400")),
    ("right", (1200, 400), (880, 50, 1180, 350), ("fill-400x400", "fill-300x400")),
    ("top", (400, 1200), (50, 20, 350, 320), ("fill-400x400", "fill-400x300")),
    ("bottom", (400, 1200), (50, 880, 350, 1180), ("fill-400x400", "fill-400x300")),
]


@pytest.mark.parametrize(
    ("size", "subject", "specs"), [case[1:] for case in CONTROLS], ids=[c[0] for c in CONTROLS]
)
def test_crops_keep_a_subject_at_an_edge_that_a_centred_crop_cuts_off(
    size: tuple[int, int], subject: tuple[int, int, int, int], specs: tuple[str, ...]
) -> None:
    data = detailed_scene(size, subject)
    width, height = size
    truth = FocalBox(
        subject[0] / width,
        subject[1] / height,
        (subject[2] - subject[0]) / width,
        (subject[3] - subject[1]) / height,
    )
    parsed = [parse_spec(f"{spec}|format-png") for spec in specs]
    with io.BytesIO(data) as fp:
        auto = render(fp, parsed, focus=Focus(mode=FocalMode.AUTO))
        auto_outputs = {rendered.spec: rendered for rendered in auto}
    with io.BytesIO(data) as fp:
        centred = render(fp, parsed, focus=Focus(mode=FocalMode.CENTRE))
        centred_outputs = {rendered.spec: rendered for rendered in centred}
    focus = auto.analysis.focus_pixels(size)
    assert focus is not None and not auto.analysis.zoom
    for spec in parsed:
        placed = plan_geometry(size, spec.operation, focus, zoom=False).box
        middle = plan_geometry(size, spec.operation).box
        assert truth.area_inside(placed, size) >= 0.9, spec
        assert truth.area_inside(middle, size) < 0.5, spec
        # And the pixels say so: the placed crop shows the detailed subject, the centred
        # one mostly the flat background.
        assert _detail(auto_outputs[spec].data) > 3 * _detail(centred_outputs[spec].data)


def _detail(data: bytes) -> float:
    with Image.open(io.BytesIO(data)) as image:
        return float(sum(ImageStat.Stat(image.convert("RGB")).stddev))


def test_a_flat_picture_has_the_whole_picture_as_its_subject() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (90, 120, 200)).save(buffer, "PNG")
    buffer.seek(0)
    rendering = render(buffer, AUTO_SPECS, focus=Focus(mode=FocalMode.AUTO))
    assert rendering.analysis.subject == FocalBox(0.0, 0.0, 1.0, 1.0)


def test_the_estimate_is_made_once_per_version_in_auto_mode_only() -> None:
    data = detailed_scene((1200, 400), (20, 50, 320, 350))
    known = FocalBox(0.5, 0.5, 0.1, 0.1)
    with io.BytesIO(data) as fp:
        again = render(fp, AUTO_SPECS, focus=Focus(mode=FocalMode.AUTO, subject=known))
    assert again.analysis.subject == known  # stored before: not estimated again
    # Estimated without crops too: a crop set added later, or a box cleared, finds it.
    with io.BytesIO(data) as fp:
        uncropped = render(fp, [parse_spec("width-100")], focus=Focus(mode=FocalMode.AUTO))
    assert uncropped.analysis.subject is not None
    assert uncropped.analysis.subject.x < 0.1
    with io.BytesIO(data) as fp:
        centred = render(fp, AUTO_SPECS, focus=Focus(mode=FocalMode.CENTRE))
    assert centred.analysis.subject is None and centred.analysis.focus is None
    box = FocalBox(0.0, 0.0, 0.2, 0.2)
    with io.BytesIO(data) as fp:
        chosen = render(fp, AUTO_SPECS, focus=Focus(box=box, mode=FocalMode.AUTO))
    assert chosen.analysis.focus == box and chosen.analysis.zoom
    assert chosen.analysis.subject is not None  # kept for when the box is cleared


@pytest.mark.parametrize("size", [(1, 1), (2, 1), (1, 3), (3, 3), (4000, 1)], ids=str)
def test_tiny_and_thin_pictures_get_a_subject_and_a_placeholder(size: tuple[int, int]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    buffer.seek(0)
    rendering = render(buffer, AUTO_SPECS, focus=Focus(mode=FocalMode.AUTO))
    assert rendering.analysis.subject is not None
    assert rendering.analysis.placeholder is not None
    assert [rendered.spec for rendered in rendering] == AUTO_SPECS


@pytest.mark.corpus
def test_every_hostile_file_that_decodes_gets_a_subject_and_a_placeholder(corpus: Path) -> None:
    from rendition_worker.core.errors import BadSource

    analysed = 0
    for path in sorted((corpus / "hostile").iterdir()):
        with path.open("rb") as fp:
            try:
                rendering = render(fp, AUTO_SPECS, focus=Focus(mode=FocalMode.AUTO))
            except BadSource:
                continue  # refused before any analysis, as the corpus tests expect
        assert rendering.analysis.subject is not None, path.name
        assert rendering.analysis.placeholder is not None, path.name
        analysed += 1
    assert analysed >= 10
