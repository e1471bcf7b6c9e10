"""The spec language: Wagtail-compatible specs and sets, parsed into canonical value objects."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from rendition_worker.core.errors import InvalidSpec

FORMATS: tuple[str, ...] = ("avif", "webp", "jpeg", "png")
# Chosen with benchmarks/pipeline.py on the corpus photos (5 widths x 3 formats): against the
# Django tools' defaults (AVIF 75 with aom, WebP 80, JPEG 75) these make 2-23% fewer bytes at
# a mean luma SSIM within 0.004; AVIF 68 or WebP 84 would cost more bytes than the tools'.
# Iteration order is the canonical order.
DEFAULT_QUALITY: Mapping[str, int] = MappingProxyType({"avif": 64, "webp": 80, "jpeg": 80})
DEFAULT_BGCOLOR: tuple[int, int, int] = (255, 255, 255)
# WebP cannot encode a larger side, so no spec may ask for one.
MAX_DIMENSION = 16383


class Op(StrEnum):
    """The geometry operations; the value is the token's name."""

    ORIGINAL = "original"
    WIDTH = "width"
    HEIGHT = "height"
    MAX = "max"
    MIN = "min"
    FILL = "fill"
    SCALE = "scale"


_OPERATION_FORMS: Mapping[Op, str] = {
    Op.ORIGINAL: "original",
    Op.WIDTH: "width-W",
    Op.HEIGHT: "height-H",
    Op.MAX: "max-WxH",
    Op.MIN: "min-WxH",
    Op.FILL: "fill-WxH[-cN]",
    Op.SCALE: "scale-P",
}
ACCEPTED_FORMS = (
    f"accepted operations: {', '.join(_OPERATION_FORMS.values())}; "
    f"options: format-{'|'.join(FORMATS)}, "
    f"{', '.join(f'{fmt}quality-N' for fmt in DEFAULT_QUALITY)}, bgcolor-RRGGBB"
)

# No leading zeros (Wagtail writes none, and they would give one spec two spellings); at most 9
# digits, since no limit needs more and int() refuses very long strings with a plain ValueError.
_NUMBER = "(?:0|[1-9][0-9]{0,8})"
# Keyed by Op, which hashes as its str value, so a token's name looks its pattern up directly.
_OPERATION_PATTERNS: Mapping[str, re.Pattern[str]] = {
    Op.ORIGINAL: re.compile("original"),
    Op.WIDTH: re.compile(f"width-(?P<width>{_NUMBER})"),
    Op.HEIGHT: re.compile(f"height-(?P<height>{_NUMBER})"),
    Op.MAX: re.compile(f"max-(?P<width>{_NUMBER})x(?P<height>{_NUMBER})"),
    Op.MIN: re.compile(f"min-(?P<width>{_NUMBER})x(?P<height>{_NUMBER})"),
    Op.FILL: re.compile(
        f"fill-(?P<width>{_NUMBER})x(?P<height>{_NUMBER})(?:-c(?P<closeness>{_NUMBER}))?"
    ),
    Op.SCALE: re.compile(f"scale-(?P<percent>{_NUMBER})"),
}
# Field name -> (letter used in the accepted forms, lowest, highest).
_LIMITS: Mapping[str, tuple[str, int, int]] = {
    "width": ("W", 1, MAX_DIMENSION),
    "height": ("H", 1, MAX_DIMENSION),
    "closeness": ("N", 0, 100),
    # Renditions never upscale, so above 100 behaves like 100 but stays as written.
    "percent": ("P", 1, 1000),
    "quality": ("N", 1, 100),
}
_QUALITY_OPTIONS: Mapping[str, str] = {f"{fmt}quality": fmt for fmt in DEFAULT_QUALITY}
_OPTIONS = ("format", *_QUALITY_OPTIONS, "bgcolor")
_BGCOLOR = re.compile("[0-9a-fA-F]{3}|[0-9a-fA-F]{6}")
_RATIO = re.compile("([1-9][0-9]{0,8}):([1-9][0-9]{0,8})")
_SET_KEYS = ("widths", "formats", "ratio", "specs")


@dataclass(frozen=True, slots=True)
class Operation:
    """One geometry operation with its parameters."""

    kind: Op
    width: int | None = None
    height: int | None = None
    closeness: int = 0
    percent: int | None = None

    @property
    def crops(self) -> bool:
        """Whether where the subject is can change this operation's output: fill-*, min-*."""
        return self.kind in {Op.FILL, Op.MIN}

    def __str__(self) -> str:
        if self.kind is Op.ORIGINAL:
            return "original"
        if self.kind is Op.WIDTH:
            return f"width-{self.width}"
        if self.kind is Op.HEIGHT:
            return f"height-{self.height}"
        if self.kind is Op.SCALE:
            return f"scale-{self.percent}"
        crop = f"-c{self.closeness}" if self.kind is Op.FILL and self.closeness else ""
        return f"{self.kind}-{self.width}x{self.height}{crop}"


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed spec; equal Specs have the same canonical string."""

    operation: Operation
    format: str | None = None
    qualities: tuple[tuple[str, int], ...] = ()
    bgcolor: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        # Normalised here rather than in the parser so that equality and hashing follow the
        # canonical form however the Spec was built.
        given = dict(self.qualities)
        kept = tuple(
            (fmt, given[fmt])
            for fmt, default in DEFAULT_QUALITY.items()
            if fmt in given and given[fmt] != default and self.format in (None, fmt)
        )
        object.__setattr__(self, "qualities", kept)
        if self.bgcolor == DEFAULT_BGCOLOR:
            object.__setattr__(self, "bgcolor", None)

    def __str__(self) -> str:
        tokens = [str(self.operation)]
        if self.format is not None:
            tokens.append(f"format-{self.format}")
        tokens.extend(f"{fmt}quality-{quality}" for fmt, quality in self.qualities)
        if self.bgcolor is not None:
            tokens.append("bgcolor-" + "".join(f"{channel:02x}" for channel in self.bgcolor))
        return "|".join(tokens)

    @property
    def canonical(self) -> str:
        """The canonical spec string, the same as str()."""
        return str(self)

    @property
    def background(self) -> tuple[int, int, int]:
        """The colour transparent pixels become in formats without alpha."""
        return self.bgcolor if self.bgcolor is not None else DEFAULT_BGCOLOR

    def quality_for(self, fmt: str) -> int | None:
        """The effective encoder quality for an output format; None for png."""
        if fmt not in FORMATS:
            raise ValueError(f"Unknown format {fmt!r}; accepted formats: {', '.join(FORMATS)}.")
        if fmt not in DEFAULT_QUALITY:
            return None
        return dict(self.qualities).get(fmt, DEFAULT_QUALITY[fmt])


def _invalid(spec: str, problem: str) -> InvalidSpec:
    return InvalidSpec(f"Invalid spec {spec!r}: {problem} ({ACCEPTED_FORMS}).")


def _in_range(spec: str, token: str, field: str, value: int) -> int:
    letter, low, high = _LIMITS[field]
    if not low <= value <= high:
        raise _invalid(spec, f"{token!r} is out of range, {letter} must be {low}..{high}")
    return value


def _parse_operation(spec: str, token: str, kind: Op) -> Operation:
    match = _OPERATION_PATTERNS[kind].fullmatch(token)
    if match is None:
        raise _invalid(spec, f"{token!r} is not of the form {_OPERATION_FORMS[kind]}")
    values = {
        field: _in_range(spec, token, field, int(text))
        for field, text in match.groupdict().items()
        if text is not None
    }
    return Operation(
        kind,
        width=values.get("width"),
        height=values.get("height"),
        closeness=values.get("closeness", 0),
        percent=values.get("percent"),
    )


def _parse_number(spec: str, token: str, argument: str, field: str) -> int:
    if re.fullmatch(_NUMBER, argument) is None:
        raise _invalid(spec, f"{token!r} is not of the form {token.partition('-')[0]}-N")
    return _in_range(spec, token, field, int(argument))


def _parse_bgcolor(spec: str, token: str, argument: str) -> tuple[int, int, int]:
    if _BGCOLOR.fullmatch(argument) is None:
        raise _invalid(spec, f"{token!r} is not of the form bgcolor-RRGGBB or bgcolor-RGB")
    digits = argument.lower() if len(argument) == 6 else "".join(c * 2 for c in argument.lower())
    red, green, blue = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    return red, green, blue


@functools.lru_cache(maxsize=1024)
def parse_spec(text: str) -> Spec:
    """Parse a spec string, in any valid token order, into its canonical Spec."""
    if not text.strip():
        raise _invalid(text, "the spec is empty")
    operation: Operation | None = None
    fmt: str | None = None
    qualities: dict[str, int] = {}
    bgcolor: tuple[int, int, int] | None = None
    seen_options: set[str] = set()
    for part in text.split("|"):
        token = part.strip()
        if not token:
            raise _invalid(text, "empty token '' between two '|' or at an end")
        name, _, argument = token.partition("-")
        if name in _OPERATION_PATTERNS:
            if operation is not None:
                raise _invalid(text, f"{token!r} is a second operation after {str(operation)!r}")
            operation = _parse_operation(text, token, Op(name))
        elif name not in _OPTIONS:
            raise _invalid(text, f"{token!r} is not a known operation or option")
        elif name in seen_options:
            raise _invalid(text, f"{token!r} repeats the {name} option")
        elif name == "format":
            if argument not in FORMATS:
                raise _invalid(text, f"{token!r} names an unknown format")
            fmt = argument
        elif name == "bgcolor":
            bgcolor = _parse_bgcolor(text, token, argument)
        else:
            qualities[_QUALITY_OPTIONS[name]] = _parse_number(text, token, argument, "quality")
        seen_options.add(name)
    if operation is None:
        raise _invalid(text, "there is no geometry operation")
    return Spec(operation, fmt, tuple(qualities.items()), bgcolor)


def canonical_spec(text: str) -> str:
    """The canonical string of a spec string."""
    return str(parse_spec(text))


def _invalid_set(name: str, problem: str) -> InvalidSpec:
    return InvalidSpec(f"Invalid set {name!r}: {problem}.")


def _set_list(name: str, definition: Mapping[str, object], key: str) -> list[object]:
    value = definition.get(key, [])
    if not isinstance(value, list | tuple):
        raise _invalid_set(name, f"{key!r} must be a list, not {value!r}")
    return list(value)


def _set_widths(name: str, definition: Mapping[str, object]) -> list[int]:
    widths: list[int] = []
    for width in _set_list(name, definition, "widths"):
        # bool is an int subclass, and True is certainly not meant as 1 px.
        if isinstance(width, bool) or not isinstance(width, int):
            raise _invalid_set(name, f"width {width!r} in 'widths' is not an integer")
        if not 1 <= width <= MAX_DIMENSION:
            raise _invalid_set(name, f"width {width!r} in 'widths' is not in 1..{MAX_DIMENSION}")
        if width in widths:
            raise _invalid_set(name, f"width {width!r} appears twice in 'widths'")
        widths.append(width)
    return widths


def _set_formats(name: str, definition: Mapping[str, object]) -> list[str]:
    formats: list[str] = []
    for fmt in _set_list(name, definition, "formats"):
        if not isinstance(fmt, str) or fmt not in FORMATS:
            accepted = ", ".join(FORMATS)
            raise _invalid_set(name, f"unknown format {fmt!r} in 'formats'; accepted: {accepted}")
        if fmt in formats:
            raise _invalid_set(name, f"format {fmt!r} appears twice in 'formats'")
        formats.append(fmt)
    return formats


def _set_operation(name: str, width: int, ratio: tuple[int, int] | None) -> Operation:
    if ratio is None:
        return Operation(Op.WIDTH, width=width)
    ratio_width, ratio_height = ratio
    # Integer half-up rounding: exact, and unlike round() it never rounds a half down.
    height = max(1, (2 * width * ratio_height + ratio_width) // (2 * ratio_width))
    if height > MAX_DIMENSION:
        raise _invalid_set(name, f"width {width} at 'ratio' makes a height over {MAX_DIMENSION}")
    return Operation(Op.FILL, width=width, height=height)


def expand_set(name: str, definition: Mapping[str, object]) -> tuple[Spec, ...]:
    """Expand one SETS entry into its specs, in order, without duplicates."""
    accepted_keys = ", ".join(_SET_KEYS)
    if not isinstance(definition, Mapping):
        raise _invalid_set(name, f"expected a mapping with keys among {accepted_keys}")
    for key in definition:
        if key not in _SET_KEYS:
            raise _invalid_set(name, f"unknown key {key!r}; accepted keys: {accepted_keys}")
    if ("widths" in definition) != ("formats" in definition):
        raise _invalid_set(name, "'widths' and 'formats' must be given together")
    if "ratio" in definition and "widths" not in definition:
        raise _invalid_set(name, "'ratio' needs 'widths' and 'formats'")
    ratio: tuple[int, int] | None = None
    if "ratio" in definition:
        value = definition["ratio"]
        match = _RATIO.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise _invalid_set(name, f"'ratio' {value!r} is not of the form 'W:H', e.g. '4:3'")
        ratio = (int(match[1]), int(match[2]))
    widths = _set_widths(name, definition)
    formats = _set_formats(name, definition)
    specs = [Spec(_set_operation(name, w, ratio), fmt) for w in widths for fmt in formats]
    for entry in _set_list(name, definition, "specs"):
        if not isinstance(entry, str):
            raise _invalid_set(name, f"entry {entry!r} in 'specs' is not a string")
        try:
            specs.append(parse_spec(entry))
        except InvalidSpec as error:
            raise _invalid_set(name, f"bad entry in 'specs': {str(error).rstrip('.')}") from error
    if not specs:
        raise _invalid_set(name, "it expands to no specs")
    return tuple(dict.fromkeys(specs))
