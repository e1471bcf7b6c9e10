"""The pipeline on generated images: what the corpus lacks, each case built to be checkable."""

from __future__ import annotations

import io
import math
import random
import struct
import threading
import weakref
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageCms, ImageFile, ImageOps, ImageStat, PngImagePlugin

from rendition_worker.core.errors import BadSource, SourceProblem
from rendition_worker.core.pipeline import FORMAT_PRIORITY, Rendered, RenderOptions, render
from rendition_worker.core.sources import Limits, dct_eighths, decode_source, open_source
from rendition_worker.core.specs import parse_spec

Color = tuple[int, ...]
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
FORMATS = ("avif", "webp", "jpeg", "png")
ORIENTATION = 0x0112
HANG_GUARD_SECONDS = 30
# The transpose that turns an upright picture into the stored pixels of each EXIF
# orientation: the inverse of what ImageOps.exif_transpose applies when displaying it.
TO_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encoded(image: Image.Image, fmt: str, **params: Any) -> io.BytesIO:
    """`image` saved in `fmt` to an in-memory file."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    buffer.seek(0)
    return buffer


def render_all(fp: io.BytesIO, specs: Iterable[str], **options: Any) -> list[Rendered]:
    """Render the spec strings from `fp` and encode them all."""
    return list(render(fp, [parse_spec(spec) for spec in specs], RenderOptions(**options)))


def decoded(rendered: Rendered) -> Image.Image:
    """A rendition's bytes opened and loaded with Pillow."""
    image = Image.open(io.BytesIO(rendered.data))
    image.load()
    return image


def mean_color(image: Image.Image, box: tuple[int, int, int, int]) -> Color:
    """Average colour of `box` in RGB."""
    return tuple(round(value) for value in ImageStat.Stat(image.convert("RGB").crop(box)).mean)


def close(color: Iterable[float], wanted: Iterable[float], tolerance: float) -> bool:
    """Whether every channel of `color` is within `tolerance` of `wanted`."""
    return all(abs(a - b) <= tolerance for a, b in zip(color, wanted, strict=True))


def quadrants(width: int, height: int) -> Image.Image:
    """An upright picture whose four quadrants have four colours: any turn or flip shows."""
    image = Image.new("RGB", (width, height), YELLOW)
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image


def quadrant_colors(image: Image.Image) -> list[Color]:
    """Mean colours of the middle of each quadrant: top left, top right, bottom left, right."""
    w, h = image.size
    centres = [
        (w // 4, h // 4),
        (3 * w // 4, h // 4),
        (w // 4, 3 * h // 4),
        (3 * w // 4, 3 * h // 4),
    ]
    return [
        mean_color(image, (x - w // 8, y - h // 8, x + w // 8 + 1, y + h // 8 + 1))
        for x, y in centres
    ]


def photo_like(width: int, height: int) -> Image.Image:
    """A detailed RGB picture (fractal and gradients), so encoders have real work to do."""
    fractal = Image.effect_mandelbrot((width, height), (-2.0, -1.2, 0.8, 1.2), 64)
    vertical = Image.linear_gradient("L")
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)
    ramps = [ramp.resize((width, height)) for ramp in (vertical, horizontal)]
    return Image.merge("RGB", (fractal, *ramps))


# --- EXIF orientation -------------------------------------------------------------------------

UPRIGHT_SPECS = {
    "width-150|format-png": (150, 100),
    "fill-100x100|format-png": (100, 100),
    "max-120x120|format-png": (120, 80),
}


def close_layout(image: Image.Image, upright: Image.Image) -> bool:
    """Whether `image` shows the quadrant colours of `upright` in the same places."""
    # 40 levels: JPEG sources blur colour edges, the middle of a quadrant stays within 10.
    return all(
        close(got, wanted, 40)
        for got, wanted in zip(quadrant_colors(image), quadrant_colors(upright), strict=True)
    )


@pytest.mark.parametrize("container", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_output_is_upright_for_every_orientation(orientation: int, container: str) -> None:
    upright = quadrants(300, 200)
    transpose = TO_STORED[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    source = encoded(stored, container, exif=exif, quality=95)
    # The fixture itself: Pillow's own exif_transpose shows the upright picture.
    assert close_layout(ImageOps.exif_transpose(Image.open(source)), upright)

    rendering = render(source, [parse_spec(s) for s in UPRIGHT_SPECS])
    assert (rendering.source.width, rendering.source.height) == (300, 200)
    outputs = {str(rendered.spec): rendered for rendered in rendering}
    for spec, size in UPRIGHT_SPECS.items():
        image = decoded(outputs[spec])
        assert image.size == size, spec
        assert close_layout(image, upright), f"{spec}: {quadrant_colors(image)}"
        assert ORIENTATION not in image.getexif(), spec


@pytest.mark.parametrize("orientation", range(1, 9))
def test_output_is_upright_when_the_jpeg_decodes_at_eighths(orientation: int) -> None:
    # width-230 of a 300x200 picture decodes at 7/8 through libjpeg-turbo, not Pillow's draft.
    upright = quadrants(300, 200)
    transpose = TO_STORED[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    outputs = render_all(encoded(stored, "JPEG", exif=exif, quality=95), ["width-230|format-png"])
    image = decoded(outputs[0])
    assert image.size == (230, 153)
    assert close_layout(image, upright), quadrant_colors(image)


# --- Decoding at a reduced size ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "needed", "eighths"),
    [
        ((4032, 3024), (2560, 1920), 6),  # 5/8 would be 2520 wide
        ((4032, 3024), (2016, 1512), 4),
        ((4032, 3024), (1000, 2000), 6),  # the taller need decides
        ((3648, 2736), (2560, 1920), 6),
        ((4000, 3000), (3600, 2700), 8),
        ((11544, 8658), (2560, 1920), 2),
        ((100, 100), (1, 1), 1),
    ],
)
def test_the_smallest_eighths_scale_that_covers_the_need(
    stored: tuple[int, int], needed: tuple[int, int], eighths: int
) -> None:
    assert dct_eighths(stored, needed) == eighths


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """Peak signal-to-noise ratio of `image` against `reference` in RGB, in dB."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    error = float(np.mean((a - b) ** 2))
    return math.inf if error == 0 else 10 * math.log10(255**2 / error)


@pytest.mark.parametrize(
    ("mode", "width", "decoded_size", "decoded_mode"),
    [
        ("RGB", 290, (300, 225), "RGBX"),  # 6/8: libjpeg-turbo through simplejpeg
        ("L", 290, (300, 225), "L"),
        ("RGB", 330, (350, 263), "RGBX"),  # 7/8
        ("RGB", 200, (200, 150), "RGB"),  # 4/8: Pillow's draft
        ("RGB", 390, (400, 300), "RGB"),  # no scale fits: a full decode
    ],
)
def test_jpeg_decodes_at_the_scale_the_largest_output_needs(
    mode: str, width: int, decoded_size: tuple[int, int], decoded_mode: str
) -> None:
    picture = photo_like(400, 300).convert(mode)
    source = encoded(picture, "JPEG", quality=95)
    opened = open_source(source, Limits())
    pixels = decode_source(opened, source, (width, math.ceil(width * 3 / 4)))
    assert (pixels.size, pixels.mode) == (decoded_size, decoded_mode)

    source.seek(0)
    output = decoded(render_all(source, [f"width-{width}|format-png"])[0])
    assert output.mode == ("L" if mode == "L" else "RGB")
    # As close to a full decode and one Lanczos resize as Pillow's own halving draft gets.
    reference = Image.open(source).resize(output.size, Image.Resampling.LANCZOS)
    assert psnr(output, reference) > 32


def with_stray_bytes(data: bytes) -> bytes:
    """`data` with junk between two markers: libjpeg warns, Pillow decodes it all the same."""
    quantisation = data.index(b"\xff\xdb")
    return data[:quantisation] + b"\x00\x17\x2a" + data[quantisation:]


def test_a_jpeg_libjpeg_turbo_refuses_but_pillow_reads_renders_through_pillow() -> None:
    clean = encoded(photo_like(400, 300), "JPEG", quality=90).getvalue()
    damaged = with_stray_bytes(clean)
    # The fixture: strict libjpeg-turbo refuses it, Pillow reads every pixel of it.
    with pytest.raises(ValueError, match="extraneous"):
        simplejpeg.decode_jpeg(damaged, min_width=290, strict=True)
    assert Image.open(io.BytesIO(damaged)).tobytes() == Image.open(io.BytesIO(clean)).tobytes()

    source = io.BytesIO(damaged)
    pixels = decode_source(open_source(source, Limits()), source, (290, 218))
    # TurboJPEG refuses the header even leniently, so Pillow decodes it, at full size.
    assert (pixels.size, pixels.mode) == ((400, 300), "RGB")
    output = decoded(render_all(io.BytesIO(damaged), ["width-290|format-png"])[0])
    expected = decoded(render_all(io.BytesIO(clean), ["width-290|format-png"])[0])
    assert output.size == expected.size == (290, 218)
    assert psnr(output, expected) > 32


def with_damaged_scan(data: bytes) -> bytes:
    """`data` with a stray restart marker halfway through its scan, its end intact."""
    middle = data.index(b"\xff\xda") + (len(data) - data.index(b"\xff\xda")) // 2
    return data[:middle] + b"\xff\xd3" + data[middle + 2 :]


def test_a_jpeg_with_damaged_scan_data_renders_at_eighths_as_pillow_would_show_it() -> None:
    damaged = with_damaged_scan(encoded(photo_like(400, 300), "JPEG", quality=90).getvalue())
    # The fixture: strict libjpeg-turbo refuses it; Pillow, like a browser, shows it.
    with pytest.raises(ValueError, match="Corrupt JPEG data"):
        simplejpeg.decode_jpeg(damaged, min_width=290, strict=True)
    shown = Image.open(io.BytesIO(damaged))
    shown.load()

    source = io.BytesIO(damaged)
    pixels = decode_source(open_source(source, Limits()), source, (290, 218))
    assert (pixels.size, pixels.mode) == ((300, 225), "RGBX")  # not a full decode by Pillow
    source.seek(0)
    output = decoded(render_all(source, ["width-290|format-png"])[0])
    assert psnr(output, shown.resize(output.size, Image.Resampling.LANCZOS)) > 30


@pytest.mark.parametrize(
    ("photo", "decoded_size"),
    [
        ("photo-olympus-ep3-4032x3024.jpg", (3024, 2268)),
        # A broken restart interval (libvips refuses the file): decoded leniently, not in full.
        ("photo-olympus-u1020-3648x2736.jpg", (2736, 2052)),
    ],
)
def test_corpus_photos_decode_at_six_eighths_for_a_2560_px_set(
    corpus: Path, photo: str, decoded_size: tuple[int, int]
) -> None:
    with (corpus / "photos" / photo).open("rb") as fp:
        opened = open_source(fp, Limits())
        pixels = decode_source(opened, fp, (2560, 1920))
        assert (pixels.size, pixels.mode) == (decoded_size, "RGBX")
        shown = Image.open(fp)  # Pillow's own full decode of the same file
        shown.draft("RGB", (2560, 1920))  # Pillow's draft cannot go below full size here
        assert shown.size == opened.stored_size
        expected = shown.resize(decoded_size, Image.Resampling.LANCZOS)
    assert psnr(pixels, expected) > 30


# --- Modes and colour ------------------------------------------------------------------------


def gradient(mode: str, high: float) -> Image.Image:
    """A 256x64 left-to-right ramp from 0 to `high` in a high-depth mode."""
    ramp = np.tile(np.linspace(0.0, high, 256), (64, 1))
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(ramp.round().astype(dtype) if mode != "F" else ramp.astype(dtype))
    assert image.mode == mode
    return image


@pytest.mark.parametrize(
    ("mode", "high", "container"),
    [
        ("I;16", 65535, "PNG"),
        ("I;16", 65535, "TIFF"),
        ("I", 65535, "TIFF"),
        ("F", 1.0, "TIFF"),
        ("F", 255.0, "TIFF"),
        ("F", 65535.0, "TIFF"),
        ("F", 1000.0, "TIFF"),
    ],
)
def test_high_depth_grey_is_scaled_not_clipped(mode: str, high: float, container: str) -> None:
    source = encoded(gradient(mode, high), container)
    assert Image.open(source).mode == mode
    (rendered,) = render_all(source, ["original|format-png"])
    stat = ImageStat.Stat(decoded(rendered).convert("L"))
    # A full ramp averages 127.5 and spreads widely; clipping gives nearly all 0 or 255.
    assert 100 < stat.mean[0] < 155, stat.mean
    assert stat.stddev[0] > 50, stat.stddev


def test_cmyk_jpeg_without_profile_comes_out_rgb() -> None:
    cmyk = Image.new("CMYK", (64, 32), (255, 0, 0, 0))  # cyan
    cmyk.paste((0, 0, 255, 0), (32, 0, 64, 32))  # yellow
    source = encoded(cmyk, "JPEG", quality=95)
    assert Image.open(source).info.get("icc_profile") is None
    for rendered in render_all(source, [f"original|format-{fmt}" for fmt in FORMATS]):
        image = decoded(rendered)
        assert image.mode == "RGB", rendered.format
        assert close(mean_color(image, (4, 4, 28, 28)), (0, 255, 255), 24), rendered.format
        assert close(mean_color(image, (36, 4, 60, 28)), (255, 255, 0), 24), rendered.format


# Colours Adobe RGB (1998) and sRGB disagree on by 11 to 60 levels in a channel.
ADOBE_PATCHES = [(200, 50, 50), (60, 120, 200), (40, 160, 120), (230, 200, 60)]


def test_embedded_profile_is_converted_to_srgb(corpus: Path) -> None:
    with Image.open(corpus / "hostile" / "icc-adobe-rgb-1998.jpg") as donor:
        adobe_rgb = donor.info["icc_profile"]
    patches = Image.new("RGB", (32 * len(ADOBE_PATCHES), 32))
    for index, color in enumerate(ADOBE_PATCHES):
        patches.paste(color, (32 * index, 0, 32 * index + 32, 32))
    wanted = ImageCms.profileToProfile(
        patches,
        ImageCms.ImageCmsProfile(io.BytesIO(adobe_rgb)),
        ImageCms.createProfile("sRGB"),
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
    )
    assert wanted is not None

    (rendered,) = render_all(
        encoded(patches, "PNG", icc_profile=adobe_rgb), ["original|format-png"]
    )
    image = decoded(rendered)
    assert not image.info.get("icc_profile")
    for index, naive in enumerate(ADOBE_PATCHES):
        box = (32 * index + 4, 4, 32 * index + 28, 28)
        got = mean_color(image, box)
        assert close(got, mean_color(wanted, box), 2), (naive, got)
        assert not close(got, naive, 10), f"{naive}: the profile was ignored"


# --- Alpha -----------------------------------------------------------------------------------


def with_alpha(mode: str, *, transparent: bool) -> Image.Image:
    """60x40: the right half opaque blue-ish (or grey), the left half transparent if asked."""
    if mode == "P":
        image = Image.new("P", (60, 40), 1)
        image.putpalette([0, 0, 0, 30, 90, 200])
        if transparent:
            image.paste(0, (0, 0, 30, 40))
        image.info["transparency"] = 0  # a tRNS chunk even when no pixel uses index 0
        return image
    color: Color = (120, 255) if mode == "LA" else (30, 90, 200, 255)
    image = Image.new(mode, (60, 40), color)
    if transparent:
        # Black under the transparent pixels: what a naive alpha drop would show.
        image.paste((0,) * len(color), (0, 0, 30, 40))
    return image


ALPHA_SPECS = [f"width-30|format-{fmt}" for fmt in ("avif", "webp", "png", "jpeg")]


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA"])
def test_fully_opaque_alpha_is_dropped(mode: str) -> None:
    source = encoded(with_alpha(mode, transparent=False), "PNG")
    for rendered in render_all(source, ALPHA_SPECS):
        assert decoded(rendered).mode in {"RGB", "L"}, rendered.format


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA"])
def test_transparency_is_kept_or_flattened_onto_bgcolor(mode: str) -> None:
    source = encoded(with_alpha(mode, transparent=True), "PNG")
    specs = [*ALPHA_SPECS, "width-30|format-jpeg|bgcolor-ff0000"]
    for rendered in render_all(source, specs):
        image = decoded(rendered)
        left, right = (2, 2, 12, 18), (18, 2, 28, 18)
        if rendered.format == "jpeg":
            assert image.mode == "RGB"
            background = rendered.spec.background
            assert close(mean_color(image, left), background, 12), str(rendered.spec)
        else:
            assert image.mode in {"RGBA", "LA"}, rendered.format
            # AVIF codes alpha lossily too: a level or two off.
            assert image.getchannel("A").crop(left).getextrema()[1] <= 8, rendered.format
            assert image.getchannel("A").crop(right).getextrema()[0] >= 247, rendered.format
        opaque = (120, 120, 120) if mode == "LA" else (30, 90, 200)
        assert close(mean_color(image, right), opaque, 12), str(rendered.spec)


# --- Geometry in pixels ---------------------------------------------------------------------

NO_UPSCALING = [
    ("original", (50, 40)),
    ("width-100", (50, 40)),
    ("height-100", (50, 40)),
    ("max-200x200", (50, 40)),
    ("min-100x100", (50, 40)),
    ("scale-150", (50, 40)),
    ("fill-100x100", (40, 40)),
    ("fill-200x100", (50, 25)),
    ("fill-30x60", (20, 40)),
]


@pytest.mark.parametrize(("spec", "size"), NO_UPSCALING, ids=[spec for spec, _ in NO_UPSCALING])
def test_no_operation_upscales(spec: str, size: tuple[int, int]) -> None:
    (rendered,) = render_all(encoded(photo_like(50, 40), "PNG"), [f"{spec}|format-png"])
    assert (rendered.width, rendered.height) == size
    assert decoded(rendered).size == size


TINY_SPECS = ["width-320", "fill-100x100", "max-10x10", "scale-10", "height-1"]


@pytest.mark.parametrize("size", [(1, 1), (940, 2), (2, 940)], ids=["1x1", "940x2", "2x940"])
def test_tiny_and_thin_sources_give_at_least_one_pixel_in_every_format(
    size: tuple[int, int],
) -> None:
    source = encoded(Image.new("RGB", size, (10, 200, 30)), "PNG")
    specs = [f"{spec}|format-{fmt}" for spec in TINY_SPECS for fmt in FORMATS]
    outputs = render_all(source, specs)
    assert len(outputs) == len(specs)
    for rendered in outputs:
        image = decoded(rendered)
        assert image.size == (rendered.width, rendered.height), str(rendered.spec)
        assert min(image.size) >= 1, str(rendered.spec)
        assert image.width <= size[0], str(rendered.spec)
        assert image.height <= size[1], str(rendered.spec)
        assert close(mean_color(image, (0, 0, *image.size)), (10, 200, 30), 24), str(rendered.spec)


@pytest.mark.parametrize(
    "specs",
    [
        pytest.param(["fill-100x1|format-png"], id="alone"),
        pytest.param(
            ["width-100|format-png", "fill-100x1|format-png"],
            id="beside-width",
        ),
    ],
)
def test_fill_crops_the_centre_even_when_another_spec_has_its_size(specs: list[str]) -> None:
    # 400x2: green, red (the centre 200 px), blue. fill-100x1 keeps the red centre; width-100
    # squeezes all three into the same 100x1 size.
    strip = Image.new("RGB", (400, 2), RED)
    strip.paste(GREEN, (0, 0, 100, 2))
    strip.paste(BLUE, (300, 0, 400, 2))
    outputs = {
        str(rendered.spec): rendered for rendered in render_all(encoded(strip, "PNG"), specs)
    }
    fill = decoded(outputs["fill-100x1|format-png"]).convert("RGB")
    assert fill.size == (100, 1)
    assert fill.getpixel((5, 0)) == RED
    assert fill.getpixel((95, 0)) == RED


# --- Encoding --------------------------------------------------------------------------------

DETERMINISM_WIDTHS = (40, 64, 100, 128, 160, 200, 256, 320, 400)


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("alpha", [False, True], ids=["rgb-jpeg", "rgba-png"])
def test_rendering_is_deterministic(alpha: bool, workers: int) -> None:
    picture = photo_like(400, 300)
    if alpha:
        picture.putalpha(Image.linear_gradient("L").resize(picture.size))
    data = encoded(picture, "PNG" if alpha else "JPEG").getvalue()
    specs = [
        f"width-{w}|format-{fmt}" for w in DETERMINISM_WIDTHS for fmt in ("avif", "webp", "jpeg")
    ]

    def run() -> dict[str, bytes]:
        outputs = render_all(io.BytesIO(data), specs, workers=workers)
        return {str(rendered.spec): rendered.data for rendered in outputs}

    first, second = run(), run()
    assert len(first) == len(specs)
    assert [spec for spec in first if first[spec] != second[spec]] == []


def test_bytes_do_not_depend_on_the_number_of_workers() -> None:
    # Workers decide the AV1 encoder's threads too, and threads are not part of a name.
    data = encoded(photo_like(640, 480), "JPEG").getvalue()
    specs = [f"width-{w}|format-{fmt}" for w in (320, 640) for fmt in ("avif", "webp", "jpeg")]
    outputs = {
        workers: {str(r.spec): r.data for r in render_all(io.BytesIO(data), specs, workers=workers)}
        for workers in (1, 4)
    }
    assert outputs[1] == outputs[4]


def metadata_sources() -> dict[str, io.BytesIO]:
    """The same picture with EXIF, an ICC profile, XMP and text, in three containers."""
    picture = photo_like(64, 48)
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[ORIENTATION] = 1
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret location")
    return {
        "JPEG": encoded(picture, "JPEG", exif=exif, icc_profile=icc, xmp=xmp, comment=b"hi"),
        "PNG": encoded(picture, "PNG", exif=exif, icc_profile=icc, pnginfo=text),
        "WEBP": encoded(picture, "WEBP", exif=exif, icc_profile=icc, xmp=xmp),
    }


METADATA_KEYS = {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "Comment"}


@pytest.mark.parametrize("container", ["JPEG", "PNG", "WEBP"])
def test_outputs_carry_no_metadata(container: str) -> None:
    source = metadata_sources()[container]
    assert METADATA_KEYS & set(Image.open(source).info)  # the fixture does carry some
    for rendered in render_all(source, [f"width-32|format-{fmt}" for fmt in FORMATS]):
        image = decoded(rendered)
        assert not {key for key in METADATA_KEYS if image.info.get(key)}, rendered.format
        assert not image.getexif(), rendered.format


FOLLOW_SOURCE = [
    ("JPEG", "RGB", "jpeg"),
    ("MPO", "RGB", "jpeg"),
    ("PNG", "RGB", "png"),
    ("PNG", "RGBA", "png"),
    ("GIF", "P", "png"),
    ("TIFF", "RGB", "jpeg"),
    ("TIFF", "RGBA", "png"),
    ("BMP", "RGB", "jpeg"),
    ("WEBP", "RGB", "webp"),
    ("WEBP", "RGBA", "webp"),
]


@pytest.mark.parametrize(
    ("container", "mode", "wanted"), FOLLOW_SOURCE, ids=[f"{c}-{m}" for c, m, _ in FOLLOW_SOURCE]
)
def test_spec_without_format_follows_the_source(container: str, mode: str, wanted: str) -> None:
    picture = with_alpha("RGBA", transparent=True) if mode == "RGBA" else photo_like(60, 40)
    if mode == "P":
        picture = picture.convert("P")
    params = {"save_all": True, "append_images": [picture]} if container == "MPO" else {}
    (rendered,) = render_all(encoded(picture, container, **params), ["width-20"])
    assert rendered.format == wanted
    assert decoded(rendered).format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[wanted]


def test_cheap_formats_come_first() -> None:
    specs = [
        f"width-{w}|format-{fmt}" for fmt in ("avif", "webp", "png", "jpeg") for w in (60, 120)
    ]
    outputs = render_all(encoded(photo_like(200, 150), "JPEG"), specs)
    assert sorted(str(rendered.spec) for rendered in outputs) == sorted(specs)
    ranks = [FORMAT_PRIORITY[rendered.format] for rendered in outputs]
    assert ranks == sorted(ranks), [rendered.format for rendered in outputs]


def test_encodes_over_the_memory_budget_still_run() -> None:
    specs = [f"width-{w}|format-{fmt}" for w in (50, 100) for fmt in ("avif", "webp", "jpeg")]
    source = encoded(photo_like(200, 150), "JPEG")
    outputs: list[Rendered] = []
    # In a thread of its own, so that a pool waiting for room forever fails instead of hanging.
    worker = threading.Thread(
        target=lambda: outputs.extend(render_all(source, specs, memory_budget=1)), daemon=True
    )
    worker.start()
    worker.join(HANG_GUARD_SECONDS)
    assert not worker.is_alive(), "encodes costlier than the budget never started"
    assert sorted(str(rendered.spec) for rendered in outputs) == sorted(specs)


@pytest.mark.parametrize("largest", [200, 290])  # Pillow's 1/2 draft, libjpeg-turbo's 6/8
def test_the_decoded_source_is_freed_before_the_first_rendition_comes_out(largest: int) -> None:
    # The decoded source is the largest buffer; the encoders must not allocate beside it.
    specs = [parse_spec(f"width-{w}|format-{fmt}") for w in (100, largest) for fmt in FORMATS]
    rendering = render(encoded(photo_like(400, 300), "JPEG"), specs)
    source = weakref.ref(rendering._pixels)
    outputs = iter(rendering)
    next(outputs)
    assert source() is None
    assert len(list(outputs)) == len(specs) - 1


def test_a_rendering_iterates_once() -> None:
    rendering = render(encoded(photo_like(40, 30), "JPEG"), [parse_spec("width-20")])
    assert len(list(rendering)) == 1
    with pytest.raises(RuntimeError, match="only once"):
        list(rendering)


# --- Bad sources -----------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    """A JPEG cut at 60%: its header is whole, its scan data is not."""
    data = encoded(photo_like(256, 192), "JPEG", quality=90).getvalue()
    return data[: len(data) * 6 // 10]


@pytest.mark.parametrize("width", [100, 180])  # decoded by Pillow at 1/2, by libjpeg-turbo at 6/8
@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg_is_corrupt_whatever_load_truncated_images_says(
    load_truncated: bool, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = truncated_jpeg()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    if load_truncated:  # the danger is real: Pillow then decodes it without complaint
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(BadSource) as caught:
        render_all(io.BytesIO(data), [f"width-{width}|format-jpeg"])
    assert caught.value.problem is SourceProblem.CORRUPT
    assert "damaged" in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated


NOT_RENDERABLE = [
    ("random.jpg", random.Random(7).randbytes(4096), SourceProblem.NOT_IMAGE, "not an image"),
    ("notes.jpg", b"shopping list: eggs, flour\n" * 20, SourceProblem.NOT_IMAGE, "not an image"),
    ("empty.jpg", b"", SourceProblem.NOT_IMAGE, "not an image"),
    (
        "logo.jpg",
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        SourceProblem.UNSUPPORTED,
        "unsupported",
    ),
    (
        "scan.jpg",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        SourceProblem.UNSUPPORTED,
        "unsupported",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "problem", "words"), NOT_RENDERABLE, ids=[row[0] for row in NOT_RENDERABLE]
)
def test_content_decides_not_the_file_name(
    tmp_path: Path, name: str, content: bytes, problem: SourceProblem, words: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with path.open("rb") as fp, pytest.raises(BadSource) as caught:
        render(fp, [parse_spec("width-100")])
    assert caught.value.problem is problem, str(caught.value)
    assert words in str(caught.value)


def png_header_only(width: int, height: int) -> bytes:
    """A grey PNG that declares `width` x `height` but holds a single row of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def test_source_over_max_pixels_but_under_pillows_limit_is_refused() -> None:
    # 144 MP: only a warning for Pillow (its error starts at 179 MP), too large for us.
    with pytest.raises(BadSource) as caught:
        render_all(io.BytesIO(png_header_only(12_000, 12_000)), ["width-100"])
    assert caught.value.problem is SourceProblem.TOO_LARGE
    assert "too large" in str(caught.value)
    assert "12000x12000" in str(caught.value)


def animation(container: str, frames: int) -> io.BytesIO:
    """`frames` 20x20 frames of distinct colours (for MPO: a multi-picture JPEG)."""
    pictures = [Image.new("RGB", (20, 20), (40 * index, 100, 200)) for index in range(frames)]
    params: dict[str, Any] = {"save_all": True, "append_images": pictures[1:]}
    if container == "PNG":
        params["default_image"] = False
    return encoded(pictures[0], container, **params)


ANIMATED = ["GIF", "PNG", "WEBP", "MPO"]


@pytest.mark.parametrize("container", ANIMATED)
def test_frames_within_limits_render(container: str) -> None:
    source = animation(container, 3)
    limits = Limits(max_frames=3, max_pixels=20 * 20 * 3)
    rendering = render(source, [parse_spec("original|format-png")], RenderOptions(limits=limits))
    assert rendering.source.frames == 3
    (rendered,) = list(rendering)
    # Frame 0 (40 * 0, 100, 200), not a later one.
    assert close(mean_color(decoded(rendered), (0, 0, 20, 20)), (0, 100, 200), 6)


@pytest.mark.parametrize("container", ANIMATED)
@pytest.mark.parametrize(
    ("limits", "words"),
    [
        (Limits(max_frames=2), "frames"),
        (Limits(max_pixels=20 * 20 * 3 - 1), "too large"),
    ],
    ids=["max-frames", "pixels-times-frames"],
)
def test_too_many_frames_or_frame_pixels_are_too_large(
    container: str, limits: Limits, words: str
) -> None:
    with pytest.raises(BadSource) as caught:
        render(animation(container, 3), [parse_spec("width-10")], RenderOptions(limits=limits))
    assert caught.value.problem is SourceProblem.TOO_LARGE
    assert words in str(caught.value)
