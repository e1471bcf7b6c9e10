"""Every hostile file of the shared corpus, rendered and held to what its MANIFEST row expects.

The oracle is independent of the pipeline: Pillow's own `exif_transpose`, frame 0, an ICC
conversion through ImageCms and a plain LANCZOS resize, compared on luma at thumbnail size.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps

from rendition_worker.core.errors import BadSource, SourceProblem
from rendition_worker.core.geometry import upright_size
from rendition_worker.core.pipeline import Rendered, RenderOptions, render
from rendition_worker.core.plugins import HEIF_AVAILABLE
from rendition_worker.core.sources import Limits
from rendition_worker.core.specs import Op, Spec, expand_set, parse_spec
from tests.conftest import corpus_path, read_manifest

SPECS: tuple[Spec, ...] = (
    *expand_set("corpus", {"widths": [320, 640, 2560], "formats": ["avif", "webp", "jpeg"]}),
    parse_spec("fill-100x100|format-png"),
    parse_spec("width-320|format-jpeg|bgcolor-ff0000"),
)
REJECTIONS: dict[str, tuple[SourceProblem, str]] = {
    "reject-corrupt": (SourceProblem.CORRUPT, "damaged"),
    "reject-not-image": (SourceProblem.NOT_IMAGE, "not an image"),
    "reject-unsupported": (SourceProblem.UNSUPPORTED, "unsupported"),
    "reject-bomb": (SourceProblem.TOO_LARGE, "too large"),
}
# Mean absolute luma difference (0-255) between a rendition and the oracle, both reduced to at
# most 128 px. Measured on this corpus: at most 2.6 for every correct rendition (JPEG q80,
# WebP q80, AVIF q60, DCT-scaled decoding against a full one); ignoring EXIF orientation gives
# 60 or more, ignoring the CMYK profile 6.2, black instead of the background far more.
MAX_LUMA_DIFFERENCE = 5.0
COMPARE_SIDE = 128
# The manifest leaves the HEIC's size blank: stock Pillow cannot read it.
HEIC_SIZE = (1440, 960)
HEIF_HINT = "rendition-worker[heif]"
# Header refusals allocate nothing: the growth budget only allows for interpreter noise.
BOMB_PEAK_GROWTH = 50 * 2**20
BOMB_HANG_GUARD_SECONDS = 2.0

Decoded = list[tuple[Rendered, Image.Image]]
ExtraCheck = Callable[[Path, Decoded], None]


def hostile_rows(*expected: str) -> list[Any]:
    """Manifest rows under hostile/ as params; one placeholder when the corpus is absent."""
    path = corpus_path()
    if not (path / "MANIFEST.csv").is_file():
        # The `corpus` fixture then skips (or fails) the placeholder with a clear reason.
        return [pytest.param(None, id="corpus-missing")]
    return [
        pytest.param(row, id=Path(row["file"]).name)
        for row in read_manifest(path)
        if row["file"].startswith("hostile/") and (not expected or row["expected"] in expected)
    ]


def expectation(row: dict[str, str]) -> str:
    """What the pipeline should do with the row's file in this environment."""
    # The corpus README: the HEIC is `ok` once pillow_heif is registered (the heif extra).
    if Path(row["file"]).suffix == ".heic" and HEIF_AVAILABLE:
        return "ok"
    return row["expected"]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_file(path: Path, specs: tuple[Spec, ...] = SPECS, **options: Any) -> list[Rendered]:
    """Render `specs` from the file at `path` and encode them all."""
    with path.open("rb") as fp:
        return list(render(fp, specs, RenderOptions(**options)))


def open_rendition(rendered: Rendered) -> Image.Image:
    """Decode a rendition's bytes completely."""
    image = Image.open(io.BytesIO(rendered.data))
    image.load()
    return image


def open_quietly(path: Path) -> Image.Image:
    """Open an image file without Pillow's warning about the 99.6 MP corpus file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def reference(path: Path, frame: int = 0, *, upright: bool = True) -> Image.Image:
    """What every rendition should show: one frame, upright, in sRGB, as RGBA, <= 512 px."""
    with open_quietly(path) as source:
        if source.format in {"JPEG", "MPO"}:
            source.draft(source.mode, (4 * COMPARE_SIDE, 4 * COMPARE_SIDE))
        source.seek(frame)
        profile = source.info.get("icc_profile")
        image = ImageOps.exif_transpose(source) if upright else source.copy()
    if image.mode == "I;16":
        # convert() would clip 16-bit values; scale them to 8 bits instead.
        scaled = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(scaled.round().astype(np.uint8))
    if profile and image.mode in {"RGB", "RGBA", "CMYK"}:
        alpha = image.getchannel("A") if image.mode == "RGBA" else None
        image = ImageCms.profileToProfile(
            image.convert("RGB") if alpha else image,
            ImageCms.ImageCmsProfile(io.BytesIO(profile)),
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
        assert image is not None
        if alpha:
            image.putalpha(alpha)
    image = image.convert("RGBA")
    image.thumbnail((4 * COMPARE_SIDE, 4 * COMPARE_SIDE), Image.Resampling.LANCZOS)
    return image


def flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite `image` onto an opaque background colour."""
    canvas = Image.new("RGBA", image.size, (*background, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    return canvas.convert("RGB")


def luma_difference(rendition: Image.Image, expected: Image.Image, spec: Spec) -> float:
    """Mean absolute luma difference of a rendition and the picture it should show."""
    scale = min(1.0, COMPARE_SIDE / max(rendition.size))
    size = (max(1, round(rendition.width * scale)), max(1, round(rendition.height * scale)))
    lanczos = Image.Resampling.LANCZOS
    if spec.operation.kind is Op.FILL:
        wanted = ImageOps.fit(expected, size, lanczos)
    else:
        wanted = expected.resize(size, lanczos)
    got = rendition.convert("RGBA").resize(size, lanczos, reducing_gap=3.0)
    luma = [
        np.asarray(flatten(image, spec.background).convert("L"), dtype=np.float64)
        for image in (got, wanted)
    ]
    return float(np.abs(luma[0] - luma[1]).mean())


def expected_size(spec: Spec, source: tuple[int, int]) -> tuple[int, int]:
    """Output size of the two operations used here, never upscaled, ratio kept."""
    width, height = source
    if spec.operation.kind is Op.FILL:
        assert spec.operation.width == spec.operation.height  # only square fills here
        side = min(spec.operation.width or 0, width, height)
        return side, side
    assert spec.operation.kind is Op.WIDTH
    out_width = min(spec.operation.width or 0, width)
    return out_width, max(1, round(height * out_width / width))


def check_plain_rendition(rendered: Rendered, image: Image.Image, source: tuple[int, int]) -> None:
    """Size, ratio, mode and metadata every rendition must have."""
    label = str(rendered.spec)
    assert image.format.lower() == rendered.format, label
    assert image.size == (rendered.width, rendered.height), label
    want_width, want_height = expected_size(rendered.spec, source)
    assert image.width == want_width, label
    assert image.height >= 1, label
    assert abs(image.height - want_height) <= 1, label
    assert image.mode in {"RGB", "RGBA", "L", "LA"}, label
    assert 0x0112 not in image.getexif(), label
    assert not image.info.get("icc_profile"), label


def check_rendered(path: Path, row: dict[str, str], extra_check: ExtraCheck | None) -> None:
    """The file renders every spec, each showing the upright first frame in sRGB."""
    with path.open("rb") as fp:
        rendering = render(fp, SPECS)
        outputs = list(rendering)
    source = (rendering.source.width, rendering.source.height)
    assert source == upright_source_size(path, row)
    assert sorted(str(rendered.spec) for rendered in outputs) == sorted(map(str, SPECS))
    expected = reference(path)
    decoded = [(rendered, open_rendition(rendered)) for rendered in outputs]
    for rendered, image in decoded:
        check_plain_rendition(rendered, image, source)
        difference = luma_difference(image, expected, rendered.spec)
        assert difference < MAX_LUMA_DIFFERENCE, f"{rendered.spec}: {difference:.1f}"
    if extra_check is not None:
        extra_check(path, decoded)


def upright_source_size(path: Path, row: dict[str, str]) -> tuple[int, int]:
    """The displayed size from the manifest and the file's own EXIF orientation."""
    if not row["width"]:
        assert path.suffix == ".heic"
        return HEIC_SIZE
    with open_quietly(path) as image:
        orientation = int(image.getexif().get(0x0112, 1))
    return upright_size((int(row["width"]), int(row["height"])), orientation)


def check_rotation_matters(path: Path, decoded: Decoded) -> None:
    """The oracle tells the rotations apart: ignoring orientation would fail the test."""
    stored = reference(path, upright=False)
    for rendered, image in decoded:
        difference = luma_difference(image, stored, rendered.spec)
        assert difference > 4 * MAX_LUMA_DIFFERENCE, f"{rendered.spec}: {difference:.1f}"


def check_alpha(path: Path, decoded: Decoded) -> None:
    """Alpha formats keep transparency; JPEG shows the background colour where it was."""
    alpha = reference(path).getchannel("A")
    for rendered, image in decoded:
        if rendered.format != "jpeg":
            assert image.mode in {"RGBA", "LA"}, str(rendered.spec)
            assert image.getchannel("A").getextrema()[0] < 255, str(rendered.spec)
            continue
        assert image.mode == "RGB", str(rendered.spec)
        transparent = fully_transparent(alpha, rendered.spec, image.size)
        assert transparent.any(), f"{rendered.spec}: no fully transparent area to check"
        pixels = np.asarray(image, dtype=np.float64)[transparent]
        error = np.abs(pixels - rendered.spec.background).mean()
        # JPEG ringing next to opaque edges; black (the classic bug) would be about 255.
        assert error < 24, f"{rendered.spec}: {error:.1f} away from the background"


def fully_transparent(alpha: Image.Image, spec: Spec, size: tuple[int, int]) -> Any:
    """Mask of the rendition's pixels whose whole footprint in the source is transparent."""
    box = Image.Resampling.BOX
    scaled = (
        ImageOps.fit(alpha, size, box)
        if spec.operation.kind is Op.FILL
        else alpha.resize(size, box)
    )
    return np.asarray(scaled) == 0


def check_first_frame(path: Path, decoded: Decoded) -> None:
    """The lossless rendition is frame 0, not another frame of the animation."""
    with Image.open(path) as source:
        other = source.n_frames // 2
    first, middle = reference(path, 0), reference(path, other)
    ((png, image),) = [(rendered, image) for rendered, image in decoded if rendered.format == "png"]
    assert luma_difference(image, first, png.spec) < luma_difference(image, middle, png.spec)


# Every `ok*` expectation, with the checks beyond those every rendition passes.
EXTRA_CHECKS: dict[str, ExtraCheck | None] = {
    "ok": None,
    "ok-rotate": check_rotation_matters,
    "ok-flatten-alpha": check_alpha,
    "ok-animated-first-frame": check_first_frame,
}


def check_rejected(path: Path, expected: str) -> None:
    """Rendering raises BadSource with the expected problem and a message naming it."""
    problem, word = REJECTIONS[expected]
    with pytest.raises(BadSource) as caught:
        render_file(path)
    assert caught.value.problem is problem, str(caught.value)
    assert word in str(caught.value)


# Runs in a fresh interpreter so that the peak RSS before the render is a low-water mark.
BOMB_PROBE = """
import json, resource, sys, time
from rendition_worker.core.errors import BadSource
from rendition_worker.core.pipeline import render
from rendition_worker.core.specs import parse_spec

specs = [parse_spec("width-320|format-jpeg")]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    with open(sys.argv[1], "rb") as fp:
        list(render(fp, specs))
except BadSource as exc:
    outcome = {"problem": str(exc.problem), "message": str(exc)}
else:
    outcome = {"problem": None, "message": "rendered"}
outcome["seconds"] = time.perf_counter() - started
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
outcome["peak_growth"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale
print(json.dumps(outcome))
"""


def run_probe(script: str, *args: str) -> dict[str, Any]:
    """Run a Python script in a fresh interpreter; return the JSON it prints."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def check_bomb(path: Path) -> None:
    """Refused as too large, quickly and without allocating the declared pixels."""
    outcome = run_probe(BOMB_PROBE, str(path))
    assert outcome["problem"] == SourceProblem.TOO_LARGE, outcome["message"]
    assert "too large" in outcome["message"]
    assert outcome["peak_growth"] < BOMB_PEAK_GROWTH, outcome
    assert outcome["seconds"] < BOMB_HANG_GUARD_SECONDS, outcome


@pytest.mark.parametrize("row", hostile_rows())
def test_hostile_file(corpus: Path, row: dict[str, str]) -> None:
    path = corpus / row["file"]
    expected = expectation(row)
    if expected == "reject-bomb":
        check_bomb(path)
    elif expected in REJECTIONS:
        check_rejected(path, expected)
    elif expected in EXTRA_CHECKS:
        check_rendered(path, row, EXTRA_CHECKS[expected])
    else:
        pytest.fail(f"unknown expected value {expected!r} in MANIFEST.csv")
    assert sha256(path) == row["sha256"], "the original file changed"


@pytest.mark.parametrize("row", hostile_rows("reject-corrupt"))
def test_damaged_file_stays_damaged_when_truncated_images_are_allowed(
    corpus: Path, row: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some other library in the worker may have set it; Pillow then returns grey pictures.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    check_rejected(corpus / row["file"], "reject-corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_large_jpeg_is_refused_under_a_lower_pixel_limit(corpus: Path) -> None:
    path = corpus / "hostile" / "large-9643x10328.jpg"
    with pytest.raises(BadSource) as caught:
        render_file(path, limits=Limits(max_pixels=50_000_000))
    assert caught.value.problem is SourceProblem.TOO_LARGE
    assert "too large" in str(caught.value)
    assert "9643x10328" in str(caught.value)


NO_HEIF_PROBE = """
import json, sys
sys.modules["pillow_heif"] = None  # as if the heif extra were not installed
from rendition_worker.core.errors import BadSource
from rendition_worker.core.pipeline import render
from rendition_worker.core.plugins import HEIF_AVAILABLE
from rendition_worker.core.specs import parse_spec

outcome = {"heif_available": HEIF_AVAILABLE, "problem": None, "message": "rendered"}
try:
    with open(sys.argv[1], "rb") as fp:
        list(render(fp, [parse_spec("width-320|format-jpeg")]))
except BadSource as exc:
    outcome.update(problem=str(exc.problem), message=str(exc))
print(json.dumps(outcome))
"""


def test_heic_without_the_heif_extra_is_unsupported(corpus: Path) -> None:
    outcome = run_probe(NO_HEIF_PROBE, str(corpus / "hostile" / "heic-1440x960.heic"))
    assert outcome["heif_available"] is False
    assert outcome["problem"] == SourceProblem.UNSUPPORTED, outcome["message"]
    assert "unsupported" in outcome["message"]
    assert HEIF_HINT in outcome["message"]
