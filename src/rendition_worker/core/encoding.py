"""Encode sRGB working images as AVIF, WebP, JPEG or PNG, with no metadata."""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import asdict, dataclass

from PIL import Image
from pillow_avif import _avif

import rendition_worker.core.plugins  # noqa: F401  # AVIF encoding through pillow_avif

AVIF_CODECS = ("svt", "aom", "rav1e")
MEDIA_TYPES = {"avif": "image/avif", "webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
EXTENSIONS = {"avif": "avif", "webp": "webp", "jpeg": "jpg", "png": "png"}
# Formats that carry an alpha channel; JPEG gets transparent pixels composited instead.
ALPHA_FORMATS = frozenset({"avif", "webp", "png"})
# SVT-AV1 refuses frames narrower or lower than this; such tiny outputs use aom instead.
SVT_MIN_DIMENSION = 4
# libavif/SVT-AV1 crashed the process (segfault inside the encoder's add/finish) about once in
# eight test runs when two AVIF encodes ran at once in one process, from two tasks or two
# pool threads. One at a time per process; SVT-AV1 uses every core for one encode anyway.
_AVIF_LOCK = threading.Lock()
# Bumped whenever a change to the pipeline changes output pixels, so that names change too.
# 2: JPEGs decode at M/8 scales, not only halves (sources.dct_eighths).
# (Not bumped for the SIMD resizer, core.resampling: the same filter on the same geometry,
# within 7 levels of Pillow's pixels, PSNR 54 dB. A fleet of x86 and ARM workers makes both.)
PIPELINE_VERSION = 2


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """Encoder choices that change output bytes; part of every rendition's name."""

    avif_codec: str = "svt"
    # SVT-AV1's fastest still-picture preset (10 and up map to 9): against 8, on a 12 MP
    # photo's 5 widths, 19% less AVIF encode time for +2% AVIF bytes and -0.0004 SSIM.
    avif_speed: int = 9
    # Method 2 vs libwebp's default 4, on 12 MP photos: 22% less wall time, +1% bytes, -0.001 SSIM.
    webp_method: int = 2
    png_compress_level: int = 6

    def __post_init__(self) -> None:
        if self.avif_codec not in AVIF_CODECS:
            raise ValueError(
                f"unknown AVIF codec {self.avif_codec!r}; accepted: {', '.join(AVIF_CODECS)}"
            )

    @property
    def fingerprint(self) -> str:
        """Eight hex digits that change whenever these settings or the pipeline change."""
        text = repr((PIPELINE_VERSION, sorted(asdict(self).items())))
        return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def encodable_formats() -> frozenset[str]:
    """The output formats this Pillow build can write."""
    Image.init()
    return frozenset(fmt for fmt in EXTENSIONS if fmt.upper() in Image.SAVE)


def avif_codec_available(codec: str) -> bool:
    """Whether pillow_avif's libavif was built with the AV1 encoder `codec`."""
    return bool(_avif.encoder_codec_available(codec))


def encode(
    image: Image.Image,
    fmt: str,
    quality: int | None,
    settings: EncoderSettings,
    *,
    threads: int = 1,
) -> bytes:
    """Encode an sRGB image (RGB, RGBA, L or LA, already in the format's mode) to bytes.

    `threads` bounds the AV1 encoder's threads (the other encoders use one); the bytes do
    not depend on it.
    """
    buffer = io.BytesIO()
    if fmt == "avif":
        codec = settings.avif_codec
        if codec == "svt" and min(image.size) < SVT_MIN_DIMENSION:
            codec = "aom"
        with _AVIF_LOCK:
            image.save(
                buffer,
                "AVIF",
                quality=quality,
                speed=settings.avif_speed,
                codec=codec,
                max_threads=max(1, threads),
            )
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=settings.webp_method)
    elif fmt == "jpeg":
        # Progressive JPEGs are smaller (optimised Huffman tables) and show early on slow links.
        image.save(buffer, "JPEG", quality=quality, progressive=True, optimize=True)
    elif fmt == "png":
        image.save(buffer, "PNG", compress_level=settings.png_compress_level)
    else:  # pragma: no cover - specs only carry known formats
        raise ValueError(f"unknown output format {fmt!r}")
    return buffer.getvalue()
