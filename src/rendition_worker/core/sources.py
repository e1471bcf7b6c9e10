"""Open a source image safely: size limits before decoding, clear errors, 8-bit working modes."""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

from rendition_worker.core.errors import BadSource, SourceProblem
from rendition_worker.core.geometry import Size, upright_size
from rendition_worker.core.plugins import HEIF_AVAILABLE

# Only raster formats that are common on the web or from cameras; the long tail of Pillow
# plugins (EPS runs Ghostscript, for one) is not worth its attack surface. (Multi-picture
# JPEGs open through the JPEG plugin and then report their format as MPO.)
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "TIFF", "BMP") + (
    ("HEIF",) if HEIF_AVAILABLE else ()
)
# Formats whose decoder can scale by M/8 while decoding (DCT scaling).
DRAFTABLE_FORMATS = frozenset({"JPEG", "MPO"})
# Working modes: 8 bits per channel, resizable by Pillow, convertible to sRGB after resizing.
# (A JPEG decoded at M/8 arrives as RGBX, Pillow's own 4-byte layout, without a copy: the
# pipeline makes each resized band RGB.)
WORKING_MODES = frozenset({"RGB", "RGBA", "L", "LA", "CMYK"})
# Pillow's draft() scales JPEGs by 1/2, 1/4 and 1/8 only; libjpeg-turbo also decodes at 3/8,
# 5/8, 6/8 and 7/8. Those go through simplejpeg: a 4032 px photo for a 2560 px output then
# decodes at 3024 px (27 MB instead of 49, and a resize that costs 40% less).
_PILLOW_SCALES = frozenset({1, 2, 4, 8})
# The JPEG modes simplejpeg decodes as Pillow does (Adobe CMYK and the rest stay with Pillow).
_SCALED_COLORSPACES = {"RGB": ("RGBX", "RGBX"), "L": ("GRAY", "L")}
_END_OF_IMAGE = b"\xff\xd9"

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF8", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypavis", 4, "AVIF"),
)
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a source may declare before we refuse to decode it."""

    max_pixels: int = 100_000_000
    max_frames: int = 1_000


@dataclass(slots=True)
class OpenedSource:
    """A source whose header passed the limits; pixels decoded at most once, on demand."""

    image: Image.Image
    format: str
    stored_size: Size
    orientation: int
    frames: int

    @property
    def draftable(self) -> bool:
        """Whether the decoder can scale down while decoding (and orientation is known now)."""
        return self.format in DRAFTABLE_FORMATS

    @property
    def size(self) -> Size:
        """Size of the picture as displayed (EXIF orientation applied)."""
        return upright_size(self.stored_size, self.orientation)


def sniff_format(head: bytes) -> str | None:
    """Name the format of a file from its first bytes, or None if it is not recognised."""
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    for magic, name in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in head.lower():
        return "SVG"
    return None


def open_header(fp: IO[bytes], formats: tuple[str, ...]) -> ImageFile.ImageFile:
    """Identify `fp` and read its header as `Image.open` does, without Pillow's bomb check.

    `Image.open` compares the declared size with the process-wide `Image.MAX_IMAGE_PIXELS`
    (a warning above it, an error above twice it: 179 MP by default), which would override
    MAX_PIXELS either way. Changing that global for our decodes would loosen it for every
    other thread of the site, so the format's opener is called directly, as `Image.open`
    calls it, and the caller applies its own limit before any pixel is decoded.
    """
    Image.init()  # registers every plugin once; Image.open does the same
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in formats:
        opener = Image.OPEN.get(fmt)
        if opener is None:
            continue
        factory, accept = opener
        accepted = accept(prefix) if accept is not None else True
        if isinstance(accepted, str) or not accepted:  # a str is Pillow's "almost" warning
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all: Image.open tries the next one as well
    raise UnidentifiedImageError("cannot identify image file")


def open_source(fp: IO[bytes], limits: Limits) -> OpenedSource:
    """Open `fp` and check its declared size and frames against `limits`, decoding nothing."""
    fp.seek(0)
    head = fp.read(64)
    fp.seek(0)
    if not head:
        raise BadSource(SourceProblem.NOT_IMAGE, "not an image: the file is empty")
    sniffed = sniff_format(head)
    try:
        image = open_header(fp, DECODABLE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _pillow_refused(sniffed, exc) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(sniffed) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on bad headers
        raise _damaged(sniffed, exc) from exc
    width, height = image.size
    _check_pixels(width, height, 1, limits, image.format)
    try:
        frames = int(getattr(image, "n_frames", 1))
    except Image.DecompressionBombError as exc:
        raise _pillow_refused(image.format, exc) from exc
    except Exception as exc:
        raise _damaged(image.format, exc) from exc
    if frames > limits.max_frames:
        raise BadSource(
            SourceProblem.TOO_LARGE,
            f"too many frames: {frames} declared, the limit is {limits.max_frames}",
        )
    _check_pixels(width, height, frames, limits, image.format)
    fmt = str(image.format)
    orientation = _orientation(image) if fmt in DRAFTABLE_FORMATS else 1
    return OpenedSource(image, fmt, (width, height), orientation, frames)


def decode_source(source: OpenedSource, fp: IO[bytes], needed: Size | None) -> Image.Image:
    """Decode the first frame, DCT-scaled down to no less than `needed`, in a working mode.

    `needed` is in stored orientation; `None` decodes at full size. Also sets
    `source.orientation` for formats whose metadata is only known after decoding.
    """
    image = source.image
    if needed is not None and source.format in DRAFTABLE_FORMATS:
        eighths = dct_eighths(source.stored_size, needed)
        if eighths not in _PILLOW_SCALES and image.mode in _SCALED_COLORSPACES:
            scaled = _decode_scaled_jpeg(image, fp, needed)
            if scaled is not None:
                return scaled
        image.draft(image.mode, needed)
    if source.format == "PNG":
        _verify_png(fp)
    try:
        with _strict_truncation():
            image.load()
    except Image.DecompressionBombError as exc:
        raise _pillow_refused(source.format, exc) from exc
    except Exception as exc:
        # Never retry a failed load: Pillow's second load() returns partial pixels silently.
        raise _damaged(source.format, exc) from exc
    if source.format not in DRAFTABLE_FORMATS:
        # PNG and WebP may keep EXIF after the pixel data, so it is only read now.
        source.orientation = _orientation(image)
    return to_working_mode(image)


def dct_eighths(stored: Size, needed: Size) -> int:
    """The smallest M for which a JPEG decoded at M/8 of `stored` is no smaller than `needed`."""
    for eighths in range(1, 8):
        if all(-(-side * eighths // 8) >= want for side, want in zip(stored, needed, strict=True)):
            return eighths
    return 8


def _decode_scaled_jpeg(image: Image.Image, fp: IO[bytes], needed: Size) -> Image.Image | None:
    """Decode a JPEG at the M/8 scale Pillow cannot ask for, or None to let Pillow decode it.

    Pillow ignores libjpeg's warnings about damaged scan data (the picture shows, with a smudge,
    as in browsers) but refuses a file that ends early. A strict decode that complains is
    retried leniently only when the file ends with its end-of-image marker; any other
    complaint leaves the file to Pillow, which has the last word.
    """
    colorspace, mode = _SCALED_COLORSPACES[image.mode]
    fp.seek(0)
    data = fp.read()
    fp.seek(0)
    array = _libjpeg_turbo(data, colorspace, needed, strict=True)
    if array is None and data.rstrip(b"\0").endswith(_END_OF_IMAGE):
        array = _libjpeg_turbo(data, colorspace, needed, strict=False)
    del data
    if array is None:
        return None
    height, width = array.shape[:2]
    # Same memory as the array: Pillow's RGB also keeps four bytes a pixel.
    decoded = Image.frombuffer(mode, (width, height), array, "raw", mode, 0, 1)
    decoded.info = dict(image.info)
    return decoded


def _libjpeg_turbo(data: bytes, colorspace: str, needed: Size, *, strict: bool) -> Any:
    """simplejpeg's decode at the smallest M/8 scale covering `needed`, or None if it refused."""
    try:
        return simplejpeg.decode_jpeg(
            data, colorspace=colorspace, min_width=needed[0], min_height=needed[1], strict=strict
        )
    except ValueError:
        return None


def to_working_mode(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB, RGBA, L, LA or CMYK, keeping transparency."""
    mode = image.mode
    has_key = "transparency" in image.info
    if mode in WORKING_MODES and not has_key:
        return image
    if mode in {"RGB", "P", "PA", "RGBa", "RGBX", "YCbCr", "LAB", "HSV"}:
        alpha = has_key or mode in {"PA", "RGBa"}
        converted = image.convert("RGBA" if alpha else "RGB")
    elif mode in {"L", "1", "La"}:
        converted = image.convert("LA" if has_key or mode == "La" else "L")
    elif mode.startswith(("I", "F")):
        converted = _high_depth_to_l(image)
    else:
        converted = image.convert("RGBA" if "A" in mode else "RGB")
    converted.info = dict(image.info)
    converted.info.pop("transparency", None)
    return converted


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    # A plain convert("L") clips 16-bit values (1023 of 1024 pixels of a 16-bit grey PNG
    # become white); scale by the depth instead. 32-bit int and float modes carry no depth,
    # so their range is read from the pixels.
    wide = image.convert("F")
    high = float(wide.getextrema()[1])  # type: ignore[arg-type]
    if image.mode.startswith("I;16") or (image.mode == "I" and 255.0 < high <= 65535.0):
        factor = 255.0 / 65535.0  # 16-bit data: keep its brightness, do not stretch it
    elif image.mode == "F" and high <= 1.0:
        factor = 255.0  # the usual 0..1 float convention
    elif high > 255.0:
        factor = 255.0 / high
    else:
        factor = 1.0
    return wide.point(lambda value: value * factor).convert("L")


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:
        # Malformed EXIF is metadata damage, not pixel damage: render the picture as stored.
        return 1
    return value if 1 <= value <= 8 else 1


def _verify_png(fp: IO[bytes]) -> None:
    # Some damaged PNGs decode without error; only verify() checks every chunk's CRC,
    # and it must run on an image object of its own.
    fp.seek(0)
    try:
        # Through open_header too: Image.open would warn (89 MP) or refuse (179 MP) anew.
        with open_header(fp, ("PNG",)) as checker:
            checker.verify()
    except Exception as exc:
        raise _damaged("PNG", exc) from exc
    finally:
        fp.seek(0)


_TRUNCATION_LOCK = threading.Lock()


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    # If anything in the process set LOAD_TRUNCATED_IMAGES, truncated files would decode as
    # mostly grey pictures instead of failing; force the strict behaviour while we decode.
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_pixels(width: int, height: int, frames: int, limits: Limits, fmt: str | None) -> None:
    declared = width * height * frames
    if width < 1 or height < 1:
        raise BadSource(SourceProblem.CORRUPT, f"damaged {fmt} file: it declares {width}x{height}")
    if declared > limits.max_pixels:
        frames_note = f" x {frames} frames" if frames > 1 else ""
        raise BadSource(
            SourceProblem.TOO_LARGE,
            f"too large to decode safely: {fmt} declares {width}x{height}{frames_note} = "
            f"{declared:,} pixels, the limit (MAX_PIXELS) is {limits.max_pixels:,}",
        )


def _pillow_refused(fmt: str | None, exc: Image.DecompressionBombError) -> BadSource:
    # Some decoders check Image.MAX_IMAGE_PIXELS themselves (TIFF strips, GIF and WebP
    # canvases, MPO frames): past MAX_PIXELS, Pillow's own limit still stands for those.
    return BadSource(
        SourceProblem.TOO_LARGE,
        f"too large to decode safely: the {fmt or 'image'} decoder applies Pillow's own limit "
        f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {exc}",
    )


def _unidentified(sniffed: str | None) -> BadSource:
    if sniffed is None:
        return BadSource(SourceProblem.NOT_IMAGE, "not an image: the content is not recognised")
    if sniffed in DECODABLE_FORMATS:  # Pillow knows the format but cannot read this file
        return BadSource(SourceProblem.CORRUPT, f"damaged {sniffed} file: its header is unreadable")
    hint = " (install rendition-worker[heif] to decode it)" if sniffed == "HEIF" else ""
    return BadSource(SourceProblem.UNSUPPORTED, f"unsupported format: {sniffed}{hint}")


def _damaged(fmt: str | None, exc: Exception) -> BadSource:
    # Pillow's decoders say what is wrong in an OSError; anything else keeps its type in the
    # message so that a surprise (a Pillow quirk, a bug of ours) is not mistaken for damage.
    reason = str(exc) if isinstance(exc, OSError) and str(exc) else f"{type(exc).__name__}: {exc}"
    return BadSource(SourceProblem.CORRUPT, f"damaged {fmt or 'image'} file: {reason}")
