"""Table-driven tests of the spec language and set expansion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rendition_worker.core.errors import InvalidSpec
from rendition_worker.core.specs import (
    ACCEPTED_FORMS,
    DEFAULT_BGCOLOR,
    DEFAULT_QUALITY,
    FORMATS,
    MAX_DIMENSION,
    Op,
    Operation,
    Spec,
    canonical_spec,
    expand_set,
    parse_spec,
)

AVIF_Q, WEBP_Q, JPEG_Q = DEFAULT_QUALITY["avif"], DEFAULT_QUALITY["webp"], DEFAULT_QUALITY["jpeg"]


def other(quality: int) -> int:
    """A legal quality that is not the given default."""
    return quality - 1 if quality > 1 else 2


OPERATIONS: list[tuple[str, Operation]] = [
    ("original", Operation(Op.ORIGINAL)),
    ("width-640", Operation(Op.WIDTH, width=640)),
    ("height-300", Operation(Op.HEIGHT, height=300)),
    ("max-800x600", Operation(Op.MAX, width=800, height=600)),
    ("min-1x16383", Operation(Op.MIN, width=1, height=16383)),
    ("fill-200x200", Operation(Op.FILL, width=200, height=200)),
    ("fill-200x200-c50", Operation(Op.FILL, width=200, height=200, closeness=50)),
    ("fill-16383x1-c100", Operation(Op.FILL, width=16383, height=1, closeness=100)),
    ("scale-50", Operation(Op.SCALE, percent=50)),
    ("scale-1000", Operation(Op.SCALE, percent=1000)),
]

CANONICAL: list[tuple[str, str]] = [
    # Reordering and whitespace.
    ("format-avif|width-640", "width-640|format-avif"),
    (
        "bgcolor-000000|jpegquality-5|format-jpeg|max-10x10",
        "max-10x10|format-jpeg|jpegquality-5|bgcolor-000000",
    ),
    ("  width-640 |  format-webp  ", "width-640|format-webp"),
    # Strings real Wagtail sites store.
    ("width-1110|format-avif", "width-1110|format-avif"),
    ("max-800x600", "max-800x600"),
    ("fill-200x200-c50", "fill-200x200-c50"),
    ("width-987|format-jpeg", "width-987|format-jpeg"),
    ("fill-160x160|format-webp", "fill-160x160|format-webp"),
    ("original", "original"),
    ("max-165x165", "max-165x165"),
    ("fill-300x186-c0", "fill-300x186"),
    ("width-400|jpegquality-60", "width-400" + ("" if JPEG_Q == 60 else "|jpegquality-60")),
    ("height-300|format-png", "height-300|format-png"),
    # Default qualities are dropped, other ones kept.
    (f"width-640|format-avif|avifquality-{AVIF_Q}", "width-640|format-avif"),
    (f"width-640|format-webp|webpquality-{WEBP_Q}", "width-640|format-webp"),
    (f"width-640|format-jpeg|jpegquality-{JPEG_Q}", "width-640|format-jpeg"),
    (f"width-640|jpegquality-{JPEG_Q}", "width-640"),
    (
        f"width-640|format-avif|avifquality-{other(AVIF_Q)}",
        f"width-640|format-avif|avifquality-{other(AVIF_Q)}",
    ),
    (
        "width-640|format-jpeg|jpegquality-100",
        "width-640|format-jpeg" + ("" if JPEG_Q == 100 else "|jpegquality-100"),
    ),
    # A quality for another format than the one given is inert.
    (f"width-640|format-webp|jpegquality-{other(JPEG_Q)}", "width-640|format-webp"),
    (
        f"width-640|format-png|avifquality-{other(AVIF_Q)}|webpquality-{other(WEBP_Q)}",
        "width-640|format-png",
    ),
    (
        f"jpegquality-{other(JPEG_Q)}|webpquality-{other(WEBP_Q)}|format-webp|width-640",
        f"width-640|format-webp|webpquality-{other(WEBP_Q)}",
    ),
    # Without a format, every non-default quality is kept, in the order avif, webp, jpeg.
    (
        f"jpegquality-{other(JPEG_Q)}|webpquality-{other(WEBP_Q)}|avifquality-{other(AVIF_Q)}|scale-50",
        f"scale-50|avifquality-{other(AVIF_Q)}|webpquality-{other(WEBP_Q)}|jpegquality-{other(JPEG_Q)}",
    ),
    (
        f"jpegquality-{other(JPEG_Q)}|avifquality-{AVIF_Q}|original",
        f"original|jpegquality-{other(JPEG_Q)}",
    ),
    # bgcolor: 3 or 6 digits, any case; canonical is 6 lowercase; the default is dropped.
    ("width-640|bgcolor-ABCDEF", "width-640|bgcolor-abcdef"),
    ("width-640|bgcolor-a1B2c3", "width-640|bgcolor-a1b2c3"),
    ("width-640|bgcolor-0f8", "width-640|bgcolor-00ff88"),
    ("width-640|bgcolor-F0A", "width-640|bgcolor-ff00aa"),
    ("width-640|bgcolor-ffffff", "width-640"),
    ("width-640|bgcolor-FFF", "width-640"),
    ("bgcolor-000|format-png|width-640", "width-640|format-png|bgcolor-000000"),
]

SPEC_ERRORS: list[tuple[str, str]] = [
    # (spec, the quoted bad part the message must contain)
    ("", "''"),
    ("   ", "'   '"),
    ("width-640||format-avif", "''"),
    ("width-640|", "''"),
    ("|width-640", "''"),
    ("width-640| |format-avif", "''"),
    ("foo", "'foo'"),
    ("width-640|sharpen", "'sharpen'"),
    ("Width-640", "'Width-640'"),
    ("crop-10x10", "'crop-10x10'"),
    ("format-avif", "'format-avif'"),
    ("format-avif|jpegquality-50", "'format-avif|jpegquality-50'"),
    ("width-640|height-480", "'height-480'"),
    ("original|original", "'original'"),
    ("width-640|format-avif|format-webp", "'format-webp'"),
    ("width-640|jpegquality-50|jpegquality-60", "'jpegquality-60'"),
    ("width-640|bgcolor-000|bgcolor-fff", "'bgcolor-fff'"),
    ("width-0", "'width-0'"),
    (f"width-{MAX_DIMENSION + 1}", f"'width-{MAX_DIMENSION + 1}'"),
    ("width-99999999999999999999", "'width-99999999999999999999'"),
    ("width-0640", "'width-0640'"),
    ("width-+640", "'width-+640'"),
    ("width--640", "'width--640'"),
    ("width-6 40", "'width-6 40'"),
    ("width- 640", "'width- 640'"),
    ("width-640px", "'width-640px'"),
    ("width-", "'width-'"),
    ("width", "'width'"),
    ("height-0", "'height-0'"),
    ("original-1", "'original-1'"),
    ("max-0x10", "'max-0x10'"),
    (f"max-10x{MAX_DIMENSION + 1}", f"'max-10x{MAX_DIMENSION + 1}'"),
    ("max-10", "'max-10'"),
    ("min-10X10", "'min-10X10'"),
    ("fill-200x200-c101", "'fill-200x200-c101'"),
    ("fill-200x200-c", "'fill-200x200-c'"),
    ("fill-200x200-c050", "'fill-200x200-c050'"),
    ("fill-200x200-50", "'fill-200x200-50'"),
    ("scale-0", "'scale-0'"),
    ("scale-1001", "'scale-1001'"),
    ("scale-50.5", "'scale-50.5'"),
    ("width-640|format-gif", "'format-gif'"),
    ("width-640|format-jpg", "'format-jpg'"),
    ("width-640|format-heic", "'format-heic'"),
    ("width-640|format-AVIF", "'format-AVIF'"),
    ("width-640|format-", "'format-'"),
    ("width-640|jpegquality-0", "'jpegquality-0'"),
    ("width-640|avifquality-101", "'avifquality-101'"),
    ("width-640|webpquality-high", "'webpquality-high'"),
    ("width-640|pngquality-50", "'pngquality-50'"),
    ("width-640|bgcolor-12345", "'bgcolor-12345'"),
    ("width-640|bgcolor-ggg", "'bgcolor-ggg'"),
    ("width-640|bgcolor-#ffffff", "'bgcolor-#ffffff'"),
    ("width-640|bgcolor-", "'bgcolor-'"),
]

SETS: list[tuple[dict[str, object], list[str]]] = [
    (
        {"widths": [640, 1280], "formats": ["avif", "webp", "jpeg"]},
        [
            "width-640|format-avif",
            "width-640|format-webp",
            "width-640|format-jpeg",
            "width-1280|format-avif",
            "width-1280|format-webp",
            "width-1280|format-jpeg",
        ],
    ),
    ({"widths": [640], "formats": ["avif"]}, ["width-640|format-avif"]),
    (
        {"widths": [320, 640], "ratio": "4:3", "formats": ["avif", "jpeg"]},
        [
            "fill-320x240|format-avif",
            "fill-320x240|format-jpeg",
            "fill-640x480|format-avif",
            "fill-640x480|format-jpeg",
        ],
    ),
    # Heights are rounded half up, and never below 1 px.
    (
        {"widths": [100, 5, 1], "ratio": "16:9", "formats": ["png"]},
        ["fill-100x56|format-png", "fill-5x3|format-png", "fill-1x1|format-png"],
    ),
    ({"widths": [10], "ratio": "1:1", "formats": ["webp"]}, ["fill-10x10|format-webp"]),
    (
        {"widths": [3, 5], "ratio": "2:1", "formats": ["webp"]},
        ["fill-3x2|format-webp", "fill-5x3|format-webp"],
    ),
    ({"widths": [1], "ratio": "1:3", "formats": ["webp"]}, ["fill-1x3|format-webp"]),
    ({"specs": ["fill-160x160|format-webp"]}, ["fill-160x160|format-webp"]),
    (
        {"specs": ["format-webp|fill-160x160-c0", "original"]},
        ["fill-160x160|format-webp", "original"],
    ),
    # specs come after widths x formats; duplicates keep their first position.
    (
        {
            "widths": [640],
            "formats": ["avif", "jpeg"],
            "specs": ["original", "format-avif|width-640", "original"],
        },
        ["width-640|format-avif", "width-640|format-jpeg", "original"],
    ),
    ({"widths": (640,), "formats": ("avif",), "specs": ()}, ["width-640|format-avif"]),
]

SET_ERRORS: list[tuple[object, str]] = [
    # (definition, text the message must contain besides the set name)
    (["width-640"], "mapping"),
    ("width-640", "mapping"),
    (None, "mapping"),
    (
        {"width": [640], "formats": ["avif"]},
        "'width'; accepted keys: widths, formats, ratio, specs",
    ),
    ({"widths": [640]}, "'formats'"),
    ({"formats": ["avif"]}, "'widths'"),
    ({"ratio": "4:3", "specs": ["original"]}, "'ratio'"),
    ({}, "no specs"),
    ({"specs": []}, "no specs"),
    ({"widths": [], "formats": ["avif"]}, "no specs"),
    ({"widths": 640, "formats": ["avif"]}, "'widths' must be a list"),
    ({"widths": [640], "formats": "avif"}, "'formats' must be a list"),
    ({"specs": "original"}, "'specs' must be a list"),
    ({"widths": [0], "formats": ["avif"]}, "width 0"),
    ({"widths": [-640], "formats": ["avif"]}, "width -640"),
    ({"widths": [MAX_DIMENSION + 1], "formats": ["avif"]}, f"width {MAX_DIMENSION + 1}"),
    ({"widths": [True], "formats": ["avif"]}, "width True"),
    ({"widths": [640.0], "formats": ["avif"]}, "width 640.0"),
    ({"widths": ["640"], "formats": ["avif"]}, "width '640'"),
    ({"widths": [640, 1280, 640], "formats": ["avif"]}, "width 640 appears twice"),
    ({"widths": [640], "formats": ["gif"]}, "'gif'"),
    ({"widths": [640], "formats": ["jpg"]}, "'jpg'"),
    ({"widths": [640], "formats": [None]}, "None"),
    ({"widths": [640], "formats": ["avif", "avif"]}, "'avif' appears twice"),
    ({"widths": [640], "formats": ["avif"], "ratio": "4x3"}, "'4x3'"),
    ({"widths": [640], "formats": ["avif"], "ratio": "0:3"}, "'0:3'"),
    ({"widths": [640], "formats": ["avif"], "ratio": "4:0"}, "'4:0'"),
    ({"widths": [640], "formats": ["avif"], "ratio": "a:b"}, "'a:b'"),
    ({"widths": [640], "formats": ["avif"], "ratio": "4:3:2"}, "'4:3:2'"),
    ({"widths": [640], "formats": ["avif"], "ratio": 1.5}, "1.5"),
    ({"widths": [MAX_DIMENSION], "formats": ["avif"], "ratio": "1:2"}, f"width {MAX_DIMENSION}"),
    ({"specs": ["width-0"]}, "'width-0'"),
    ({"specs": ["original", "format-gif|width-1"]}, "'format-gif'"),
    ({"specs": [640]}, "entry 640"),
]


@pytest.mark.parametrize(("text", "operation"), OPERATIONS)
def test_operation_canonical_form(text: str, operation: Operation) -> None:
    spec = parse_spec(text)
    assert spec == Spec(operation)
    assert str(spec.operation) == text
    assert str(spec) == spec.canonical == canonical_spec(text) == text


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical_form(text: str, canonical: str) -> None:
    assert canonical_spec(text) == canonical
    assert parse_spec(text) == parse_spec(canonical)
    assert hash(parse_spec(text)) == hash(parse_spec(canonical))
    assert canonical_spec(canonical) == canonical


@pytest.mark.parametrize(("text", "bad_part"), SPEC_ERRORS)
def test_spec_errors(text: str, bad_part: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(text)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert bad_part in message
    assert repr(text) in message
    assert ACCEPTED_FORMS in message


def test_accepted_forms_lists_every_operation_and_option() -> None:
    assert ACCEPTED_FORMS == (
        "accepted operations: original, width-W, height-H, max-WxH, min-WxH, fill-WxH[-cN], "
        "scale-P; options: format-avif|webp|jpeg|png, avifquality-N, webpquality-N, "
        "jpegquality-N, bgcolor-RRGGBB"
    )


def test_parsed_fields() -> None:
    spec = parse_spec(f"bgcolor-102030|webpquality-{other(WEBP_Q)}|format-webp|fill-20x10-c7")
    assert spec.operation == Operation(Op.FILL, width=20, height=10, closeness=7)
    assert spec.format == "webp"
    assert spec.qualities == (("webp", other(WEBP_Q)),)
    assert spec.bgcolor == spec.background == (16, 32, 48)


def test_defaults_of_a_bare_spec() -> None:
    spec = parse_spec("width-640")
    assert spec.format is None
    assert spec.qualities == ()
    assert spec.bgcolor is None
    assert spec.background == DEFAULT_BGCOLOR
    assert [spec.quality_for(fmt) for fmt in FORMATS] == [AVIF_Q, WEBP_Q, JPEG_Q, None]


def test_quality_for() -> None:
    free = parse_spec(f"width-640|jpegquality-{other(JPEG_Q)}")
    assert free.quality_for("jpeg") == other(JPEG_Q)
    assert free.quality_for("avif") == AVIF_Q
    assert free.quality_for("png") is None
    pinned = parse_spec(f"width-640|format-webp|webpquality-{other(WEBP_Q)}|jpegquality-7")
    assert pinned.quality_for("webp") == other(WEBP_Q)
    assert pinned.quality_for("jpeg") == JPEG_Q
    with pytest.raises(ValueError, match="'jpg'"):
        free.quality_for("jpg")


def test_direct_construction_is_normalised() -> None:
    built = Spec(
        Operation(Op.WIDTH, width=640),
        "webp",
        (("jpeg", 7), ("webp", other(WEBP_Q)), ("avif", AVIF_Q)),
        DEFAULT_BGCOLOR,
    )
    assert built == parse_spec(f"width-640|format-webp|webpquality-{other(WEBP_Q)}")
    assert built.bgcolor is None


def test_parse_spec_is_cached() -> None:
    assert parse_spec("width-321|format-avif") is parse_spec("width-321|format-avif")


@pytest.mark.parametrize(("definition", "expected"), SETS)
def test_expand_set(definition: dict[str, object], expected: list[str]) -> None:
    specs = expand_set("hero", definition)
    assert [str(spec) for spec in specs] == expected
    assert all(isinstance(spec, Spec) for spec in specs)


@pytest.mark.parametrize(("definition", "needle"), SET_ERRORS)
def test_set_errors(definition: object, needle: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        expand_set("hero", definition)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "'hero'" in message
    assert needle in message


def test_set_spec_error_keeps_the_spec_message() -> None:
    with pytest.raises(InvalidSpec) as caught:
        expand_set("thumb", {"specs": ["fill-160x160|format-jpg"]})
    message = str(caught.value)
    assert "'thumb'" in message
    assert "'fill-160x160|format-jpg'" in message
    assert ACCEPTED_FORMS in message
    assert isinstance(caught.value.__cause__, InvalidSpec)


dimensions = st.integers(1, MAX_DIMENSION)
operations = st.one_of(
    st.just(Operation(Op.ORIGINAL)),
    st.builds(Operation, st.just(Op.WIDTH), width=dimensions),
    st.builds(Operation, st.just(Op.HEIGHT), height=dimensions),
    st.builds(Operation, st.sampled_from([Op.MAX, Op.MIN]), width=dimensions, height=dimensions),
    st.builds(
        Operation,
        st.just(Op.FILL),
        width=dimensions,
        height=dimensions,
        closeness=st.integers(0, 100),
    ),
    st.builds(Operation, st.just(Op.SCALE), percent=st.integers(1, 1000)),
)
specs = st.builds(
    Spec,
    operations,
    st.none() | st.sampled_from(FORMATS),
    st.lists(
        st.tuples(st.sampled_from(list(DEFAULT_QUALITY)), st.integers(1, 100)), max_size=4
    ).map(tuple),
    st.none() | st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
)


@given(spec=specs, data=st.data())
def test_canonical_round_trip(spec: Spec, data: st.DataObject) -> None:
    text = str(spec)
    assert parse_spec(text) == spec
    assert str(parse_spec(text)) == text
    shuffled = "|".join(data.draw(st.permutations(text.split("|"))))
    assert parse_spec(shuffled) == spec
    assert canonical_spec(shuffled) == text
