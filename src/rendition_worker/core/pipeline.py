"""One source in, all of its renditions out: decode once, resize largest first, encode in parallel.

`render()` reads the header, refuses what is too large, plans every rendition and decodes
the source once (DCT-scaled when the largest output allows it). Iterating the result resizes
each crop from the source once at its largest size, derives the smaller sizes from the next
larger one, and encodes on a thread pool (Pillow's codecs release the GIL). Renditions come
out cheapest format first, so a caller that stores them in order makes the JPEG/PNG fallback
ready before the AVIF.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import IO

from PIL import Image

from rendition_worker.core import heap, resampling
from rendition_worker.core.analysis import SMALL_SIDE, Analysis, Focus, analyse
from rendition_worker.core.color import to_srgb
from rendition_worker.core.encoding import (
    ALPHA_FORMATS,
    EXTENSIONS,
    MEDIA_TYPES,
    EncoderSettings,
    encode,
)
from rendition_worker.core.geometry import (
    SWAPPING_ORIENTATIONS,
    Box,
    Geometry,
    Size,
    plan_geometry,
    stored_box,
)
from rendition_worker.core.scheduling import BudgetPool
from rendition_worker.core.sources import (
    Limits,
    OpenedSource,
    decode_source,
    open_source,
)
from rendition_worker.core.specs import Spec

# Output pixels per band of a banded resize: bounds the intermediate copy to about 4 MB.
# (Quarter-size bands measured no lower peak: freed bands stay in glibc's per-thread heaps.)
BAND_PIXELS = 1_000_000
# Working memory of one encode per output pixel, measured on 2560x1920 and 1920x1440 photos
# (anonymous RSS growth, benchmarks/pipeline.py --breakdown): SVT-AV1 123 MB at 2560 px
# (aom 116, rav1e 102; a third of it is libavif's and pillow-avif's copies), WebP method 2
# 29 MB, progressive optimised JPEG 16 MB. PNG is zlib's window plus a row or two.
ENCODER_BYTES_PER_PIXEL = {"avif": 25, "webp": 6, "jpeg": 4, "png": 1}
# A mode conversion before encoding (alpha composite, grey to RGB) adds a copy of its own.
CONVERSION_BYTES_PER_PIXEL = 4
# Output format order: the fallback a <picture> always has first, the slowest encoder last.
FORMAT_PRIORITY = {"jpeg": 0, "png": 0, "webp": 1, "avif": 2}
# What a spec without `format-` becomes, by source format (Wagtail keeps the source format).
SOURCE_FORMAT_OUTPUT = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "GIF": "png", "WEBP": "webp"}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Limits, encoder settings and parallelism of one render."""

    limits: Limits = field(default_factory=Limits)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    workers: int = 2
    # Bytes the encoders running at once may use (estimated, see ENCODER_BYTES_PER_PIXEL);
    # an encode larger than this runs alone. 140 MB lets a 2560 px AVIF (123 MB) run beside
    # a 1920 px WebP or a 2560 px JPEG, not beside a 2560 px WebP (29 MB).
    memory_budget: int = 140_000_000


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the pipeline learnt about a source: format, upright size and frame count."""

    format: str
    width: int
    height: int
    frames: int


@dataclass(frozen=True, slots=True)
class Rendered:
    """One encoded rendition."""

    spec: Spec
    format: str
    width: int
    height: int
    data: bytes
    encode_ms: float

    @property
    def extension(self) -> str:
        """File extension without the dot (`jpg` for JPEG)."""
        return EXTENSIONS[self.format]

    @property
    def media_type(self) -> str:
        """MIME type, e.g. `image/avif`."""
        return MEDIA_TYPES[self.format]


_EncodeKey = tuple[Box, Size, str, int | None, tuple[int, int, int] | None]


@dataclass(frozen=True, slots=True)
class _Output:
    """An encode to do: the spec it serves and what makes its bytes distinct."""

    spec: Spec
    box: Box
    size: Size
    format: str
    quality: int | None
    background: tuple[int, int, int] | None


class Rendering:
    """A decoded source and the plan of its renditions; iterate once to encode them."""

    def __init__(
        self,
        source: OpenedSource,
        pixels: Image.Image,
        plans: dict[Spec, Geometry],
        options: RenderOptions,
        analysis: Analysis,
    ) -> None:
        self.source = SourceInfo(source.format, *source.size, source.frames)
        # Subject and placeholder, known before the first rendition is encoded.
        self.analysis = analysis
        self._orientation = source.orientation
        self._stored_size = source.stored_size
        self._pixels: Image.Image | None = pixels
        self._icc = pixels.info.get("icc_profile")
        self._plans = plans
        self._options = options

    def __iter__(self) -> Iterator[Rendered]:
        """Encode every planned rendition, yielding them cheapest format first."""
        if self._pixels is None:
            raise RuntimeError("a Rendering can be iterated only once")
        heap.map_large_buffers()
        try:
            with BudgetPool(self._options.workers, self._options.memory_budget) as pool:
                futures: dict[_EncodeKey, Future[tuple[bytes, float]]] = {}
                outputs = self._schedule(pool, futures)
                for output in sorted(outputs, key=_yield_order):
                    data, elapsed = futures[_encode_key(output)].result()
                    width, height = output.size
                    yield Rendered(output.spec, output.format, width, height, data, elapsed)
        finally:
            # Once a render, not after each encode: a trim makes the next buffers fault in
            # anew (10 renders: 1.18M page faults against 1.45M when trimming after every
            # AVIF encode), for the same peaks (benchmarks/pipeline.py --steady).
            heap.release_free_memory()

    def _schedule(
        self, pool: BudgetPool, futures: dict[_EncodeKey, Future[tuple[bytes, float]]]
    ) -> list[_Output]:
        # A scaled JPEG decode is RGBX, which the SIMD resizer does not read: one RGB copy,
        # made while nothing else is in memory, and the RGBX one let go.
        assert self._pixels is not None
        self._pixels = resampling.resizable(self._pixels)
        # Every crop at its largest size first, so that the decoded source (the largest
        # buffer by far) is freed before any encoder allocates.
        groups: dict[Box, dict[Size, list[Spec]]] = {}
        for spec, geometry in self._plans.items():
            groups.setdefault(geometry.box, {}).setdefault(geometry.size, []).append(spec)
        largest = {
            box: self._largest(box, max(sizes, key=_area), pool) for box, sizes in groups.items()
        }
        self._pixels = None
        outputs: list[_Output] = []
        for box, by_size in groups.items():
            outputs.extend(self._schedule_crop(pool, futures, largest.pop(box), by_size))
        return outputs

    def _schedule_crop(
        self,
        pool: BudgetPool,
        futures: dict[_EncodeKey, Future[tuple[bytes, float]]],
        image: Image.Image,
        by_size: dict[Size, list[Spec]],
    ) -> list[_Output]:
        # Largest size first, each smaller size derived from the next larger one while the
        # pool encodes. A size is derived only once the encodes two sizes up are done, so
        # that at most two sizes of the crop are in memory (all five of a 2560 px set hold
        # 40 MB, beside the 123 MB the AVIF encoder of the largest needs).
        outputs: list[_Output] = []
        older: list[Future[tuple[bytes, float]]] = []
        current: list[Future[tuple[bytes, float]]] = []
        for size in sorted(by_size, key=_area, reverse=True):
            if image.size != size:
                wait(older)
                image = resampling.lanczos(image, size)
                older, current = current, []
            # The slowest encoder first: AVIF is the long pole, the others fill the gaps.
            for spec in sorted(by_size[size], key=self._encode_order(image)):
                output = self._output(spec, image)
                outputs.append(output)
                key = _encode_key(output)
                if key not in futures:
                    futures[key] = self._submit_encode(pool, image, output)
                    current.append(futures[key])
        return outputs

    def _encode_order(self, image: Image.Image) -> Callable[[Spec], int]:
        return lambda spec: -FORMAT_PRIORITY[self._output(spec, image).format]

    def _submit_encode(
        self, pool: BudgetPool, image: Image.Image, output: _Output
    ) -> Future[tuple[bytes, float]]:
        avif = output.format == "avif"
        cost = _encode_cost(output, image.mode)
        workers = self._options.workers
        # AVIF encodes run one at a time (see encoding._AVIF_LOCK) on a lane of their own
        # with one thread fewer than the pool, so that the other encoders keep a core; one
        # over the budget runs alone, so it gets every thread.
        alone = cost > self._options.memory_budget
        threads = (workers if alone else max(1, workers - 1)) if avif else 1
        job = functools.partial(_encode_job, image, output, self._options.encoder, threads)
        return pool.submit(job, cost=cost, lane="avif" if avif else None)

    def _largest(self, box: Box, size: Size, pool: BudgetPool) -> Image.Image:
        pixels = self._pixels
        assert pixels is not None
        # The source may be DCT-scaled and is in stored orientation: map the box onto it,
        # resize, then rotate the (much smaller) output upright.
        left, top, right, bottom = stored_box(box, self._orientation, self._stored_size)
        fx = pixels.width / self._stored_size[0]
        fy = pixels.height / self._stored_size[1]
        scaled_box = (left * fx, top * fy, right * fx, bottom * fy)
        stored_size = (size[1], size[0]) if self._orientation in SWAPPING_ORIENTATIONS else size
        bands = band_boxes(stored_size, scaled_box)
        jobs = deque(
            pool.submit(functools.partial(_srgb_band, pixels, band_size, band_box, self._icc))
            for _, band_size, band_box in bands
        )
        image: Image.Image | None = None
        for row, _, _ in bands:
            band = jobs.popleft().result()  # a pasted band's future lets go of it
            if image is None:
                image = Image.new(band.mode, stored_size)
            image.paste(band, (0, row))
        assert image is not None
        if self._orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[self._orientation])
        return _drop_opaque_alpha(image)

    def _output(self, spec: Spec, image: Image.Image) -> _Output:
        has_alpha = image.mode in {"RGBA", "LA"}
        fmt = spec.format or _follow_source(self.source.format, has_alpha)
        background = spec.background if has_alpha and fmt not in ALPHA_FORMATS else None
        box = self._plans[spec].box
        return _Output(spec, box, image.size, fmt, spec.quality_for(fmt), background)


def render(
    fp: IO[bytes],
    specs: Sequence[Spec],
    options: RenderOptions | None = None,
    focus: Focus | None = None,
) -> Rendering:
    """Check and decode the source in `fp` once and plan `specs`; raises `BadSource`.

    `focus`: the focal box, FOCAL_POINT mode and what is known of this source version; the
    subject and placeholder it lacks are computed from a small copy before any encode.
    """
    options = options or RenderOptions()
    focus = focus or Focus()
    unique = list(dict.fromkeys(specs))
    source = open_source(fp, options.limits)
    needed = None
    if source.draftable:
        # A person's box may zoom crops in; an estimated subject only moves them (same scale).
        box = focus.box.pixels(source.size) if focus.box is not None else None
        needed = _needed_size(source, _plan(source, unique, box, zoom=True))
        if not unique:  # only the subject and placeholder are wanted: the small copy's size
            needed = (SMALL_SIDE, SMALL_SIDE)
    pixels = decode_source(source, fp, needed)
    started = time.perf_counter()
    small = _small_copy(pixels, source.orientation) if focus.needs_small_copy() else None
    analysis = analyse(focus, small, source.size)
    analysis = dataclasses.replace(analysis, ms=(time.perf_counter() - started) * 1000)
    plans = _plan(source, unique, analysis.focus_pixels(source.size), zoom=analysis.zoom)
    return Rendering(source, pixels, plans, options, analysis)


def _small_copy(pixels: Image.Image, orientation: int) -> Image.Image:
    """An upright sRGB copy of about SMALL_SIDE px, for the subject and the placeholder."""
    factor = max(1, max(pixels.size) // SMALL_SIDE)
    small = pixels.reduce(factor) if factor > 1 else pixels
    if max(small.size) > SMALL_SIDE:  # reduce() goes by whole factors: finish the way down
        scale = SMALL_SIDE / max(small.size)
        size = (max(1, round(small.width * scale)), max(1, round(small.height * scale)))
        small = small.resize(size, Image.Resampling.BOX)
    small = _without_padding(small if small is not pixels else pixels.copy())
    small = to_srgb(small, pixels.info.get("icc_profile"))
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
    return small


def band_boxes(size: Size, box: Box) -> list[tuple[int, Size, Box]]:
    """Split a resize of `box` to `size` into bands of output rows: (top row, size, box).

    A two-pass resize (Pillow's or the SIMD one) keeps a horizontally resized copy of every
    source row the box covers (31 MB for 4032x3024 -> 2560 wide); a band at a time, that
    copy stays small, and bands can run on several cores. Both resizers read filter support
    outside the box, so the bands meet without seams: the result equals one whole resize.
    """
    width, height = size
    rows = max(1, BAND_PIXELS // width)
    left, top, right, bottom = box
    step = (bottom - top) / height
    return [
        (
            first,
            (width, min(height, first + rows) - first),
            (left, top + first * step, right, top + min(height, first + rows) * step),
        )
        for first in range(0, height, rows)
    ]


def _plan(
    source: OpenedSource, specs: list[Spec], focus: Box | None, *, zoom: bool
) -> dict[Spec, Geometry]:
    return {spec: plan_geometry(source.size, spec.operation, focus, zoom=zoom) for spec in specs}


def _needed_size(source: OpenedSource, plans: dict[Spec, Geometry]) -> Size | None:
    scale = max((geometry.scale for geometry in plans.values()), default=1.0)
    if scale > 7 / 8:
        return None  # DCT scaling goes in eighths
    width, height = source.stored_size
    return math.ceil(width * scale), math.ceil(height * scale)


def _srgb_band(image: Image.Image, size: Size, box: Box, icc: bytes | None) -> Image.Image:
    band = resampling.lanczos(image, size, box)
    return to_srgb(_without_padding(band), icc)


def _without_padding(image: Image.Image) -> Image.Image:
    # A scaled JPEG decode is RGBX (see sources); outputs are RGB.
    return image.convert("RGB") if image.mode == "RGBX" else image


def _drop_opaque_alpha(image: Image.Image) -> Image.Image:
    # An alpha band with no transparent pixel only costs bytes (and a JPEG composite).
    if image.mode in {"RGBA", "LA"} and image.getchannel("A").getextrema()[0] == 255:
        return image.convert(image.mode[:-1])
    return image


def _follow_source(source_format: str, has_alpha: bool) -> str:
    fallback = "png" if has_alpha else "jpeg"
    return SOURCE_FORMAT_OUTPUT.get(source_format, fallback)


def _encode_key(output: _Output) -> _EncodeKey:
    # Two specs that clamp to the same pixels (width-2560 and width-1920 of a 1200 px
    # source) share one encode; the same size of another crop is other pixels.
    return output.box, output.size, output.format, output.quality, output.background


def _area(size: Size) -> int:
    return size[0] * size[1]


def _encode_cost(output: _Output, mode: str) -> int:
    per_pixel = ENCODER_BYTES_PER_PIXEL[output.format]
    if _needs_conversion(mode, output):
        per_pixel += CONVERSION_BYTES_PER_PIXEL
    return output.size[0] * output.size[1] * per_pixel


def _yield_order(output: _Output) -> tuple[int, int]:
    return FORMAT_PRIORITY[output.format], output.size[0] * output.size[1]


def _encode_job(
    image: Image.Image, output: _Output, settings: EncoderSettings, threads: int
) -> tuple[bytes, float]:
    started = time.perf_counter()
    prepared = _for_format(image, output)
    data = encode(prepared, output.format, output.quality, settings, threads=threads)
    return data, (time.perf_counter() - started) * 1000


def _needs_conversion(mode: str, output: _Output) -> bool:
    return output.background is not None or (
        output.format in {"avif", "webp"} and mode in {"L", "LA"}
    )


def _for_format(image: Image.Image, output: _Output) -> Image.Image:
    """Return an image object of this encode's own, in a mode the output format stores."""
    mode = image.mode
    if output.background is not None:
        canvas = Image.new("RGB", image.size, output.background)
        canvas.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return canvas
    if output.format in {"avif", "webp"} and mode in {"L", "LA"}:
        return image.convert("RGBA" if mode == "LA" else "RGB")
    # save() keeps its options on the image object (encoderinfo), so two threads saving one
    # object mix their settings up. A second object over the same pixels costs no copy.
    return image._new(image.im)
