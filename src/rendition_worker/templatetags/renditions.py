"""`{% picture %}`, `{% rendition_url %}` and `{% srcset %}`: ready renditions, never a wait.

Only ready renditions are listed. While a set's fallback is not ready, the original is
shown instead, so a page never waits for the worker. `{% picture %}` paints the source's
placeholder (its colour, or its blurred preview) as the `<img>`'s background, so that the
layout and colour are there before the image loads. A set or spec the field is not
configured with raises `ValueError` when rendered: that is a developer's mistake, and
requests can never make the worker generate arbitrary specs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from django.db.models.fields.files import FieldFile
from django.template import Library, Node, TemplateSyntaxError
from django.template.base import FilterExpression, Parser, Token
from django.template.context import Context
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from rendition_worker.conf import get_settings
from rendition_worker.core.encoding import MEDIA_TYPES
from rendition_worker.core.placeholder import Placeholder
from rendition_worker.core.specs import FORMATS, Spec
from rendition_worker.services.lookups import (
    RenditionInfo,
    get_placeholder,
    get_rendition,
    get_renditions,
    registered_field,
)

register = Library()

# One <source> per modern format, in this order: a browser takes the first type it supports,
# and AVIF files are the smallest.
MODERN_FORMATS = ("avif", "webp")
# The <img> gets the most widely supported format that the set produces.
IMG_FORMATS = ("jpeg", "png", "webp", "avif")
# What browsers assume when `sizes` is missing; written out because HTML requires `sizes`
# beside a srcset with width descriptors.
DEFAULT_SIZES = "100vw"
# The tag computes these from the renditions; a template cannot override them.
COMPUTED_ATTRIBUTES = frozenset({"src", "srcset"})
# `placeholder=` of `{% picture %}`: what is painted under the <img> while it loads.
PLACEHOLDERS = ("color", "blur", "none")
DEFAULT_PLACEHOLDER = "color"
_COLOR = re.compile("#[0-9a-f]{6}")
_DATA_URI = re.compile("data:image/(?:webp|png|jpeg);base64,[A-Za-z0-9+/]+=*")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_:][-A-Za-z0-9_:.]*")
_KEYWORD_ARGUMENT = re.compile(r"([A-Za-z_:][-A-Za-z0-9_:.]*)=(.+)", re.DOTALL)


def picture_html(
    fieldfile: FieldFile, set_name: str, attributes: Mapping[str, object] | None = None
) -> SafeString:
    """The `<picture>` of one set of a field's current file; '' for an empty field.

    `attributes`: `alt` (default ''), `sizes` (default 100vw, also on each `<source>`),
    `placeholder` ("color", the default, "blur" or "none": what the `<img>`'s inline
    background shows while it loads), and any other HTML attribute for the `<img>`; one
    the tag sets itself (`loading`, `decoding`, `width`, `height`) is replaced, so
    `loading="eager"` works for a hero image; a `style` is kept after the placeholder's.
    A value of None or False leaves the attribute out, True writes it bare.
    """
    extra = dict(attributes or {})
    placeholder_kind = extra.pop("placeholder", DEFAULT_PLACEHOLDER)
    if placeholder_kind not in PLACEHOLDERS:
        raise ValueError(
            f"placeholder={placeholder_kind!r} is not one of {', '.join(PLACEHOLDERS)}"
        )
    _check_attribute_names(extra)
    entry = registered_field(fieldfile)
    specs = get_settings().set_specs(entry.key, set_name)
    if not fieldfile:
        return SafeString()
    sizes = extra.pop("sizes", DEFAULT_SIZES)
    alt = extra.pop("alt", "")
    ready = get_renditions(fieldfile)
    placeholder = get_placeholder(fieldfile) if placeholder_kind != "none" else None
    if placeholder is not None:
        extra["style"] = _background(placeholder, placeholder_kind, extra.get("style")) or None
    in_set = [(spec, ready[str(spec)]) for spec in specs if str(spec) in ready]
    img_format = _img_format(specs, in_set)
    fallback = _by_width(rendition for _, rendition in in_set if rendition.format == img_format)
    if not fallback:
        # Pending (or failed): the original, without width/height unless the worker has
        # recorded the upright ones with the placeholder: the cheap ones (ImageField's
        # width_field) are the stored size, not the EXIF-upright one, and would distort a
        # rotated photo.
        plain: dict[str, object] = {"src": fieldfile.url, "alt": alt}
        if placeholder is not None:
            plain.update(width=placeholder.width, height=placeholder.height)
        plain.update(loading="lazy", decoding="async")
        return _tag("img", plain, extra)
    sources = []
    for fmt in MODERN_FORMATS:
        group = _by_width(rendition for _, rendition in in_set if rendition.format == fmt)
        if fmt != img_format and group:
            source = {"type": MEDIA_TYPES[fmt], "srcset": _srcset(group), "sizes": sizes}
            sources.append(_tag("source", source, {}))
    largest = fallback[-1]
    img = {
        "src": largest.url,
        "srcset": _srcset(fallback),
        "sizes": sizes,
        "width": largest.width,
        "height": largest.height,
        "alt": alt,
        "loading": "lazy",
        "decoding": "async",
    }
    return format_html(
        "<picture>{}{}</picture>", mark_safe("".join(sources)), _tag("img", img, extra)
    )


def srcset_value(fieldfile: FieldFile, set_name: str, fmt: str) -> str:
    """`URL 160w, URL 320w` of the ready renditions of one set in one format ('' if none)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    entry = registered_field(fieldfile)
    specs = get_settings().set_specs(entry.key, set_name)
    if not fieldfile:
        return ""
    ready = get_renditions(fieldfile)
    in_set = (ready[str(spec)] for spec in specs if str(spec) in ready)
    return _srcset(_by_width(rendition for rendition in in_set if rendition.format == fmt))


@register.tag
def picture(parser: Parser, token: Token) -> PictureNode:
    """`{% picture obj.image "hero" alt="..." sizes="100vw" class="..." data-x=... %}`."""
    bits = token.split_contents()
    tag = bits.pop(0)
    usage = f'{{% {tag} obj.image "set" alt="..." sizes="..." attribute=value ... %}}'
    if len(bits) < 2 or any(_KEYWORD_ARGUMENT.fullmatch(bit) for bit in bits[:2]):
        raise TemplateSyntaxError(f"{tag} needs an image and a set name: {usage}")
    attributes: dict[str, FilterExpression] = {}
    for bit in bits[2:]:
        match = _KEYWORD_ARGUMENT.fullmatch(bit)
        if match is None:
            raise TemplateSyntaxError(
                f"{tag} takes attribute=value after the set name, not {bit!r}: {usage}"
            )
        name, value = match.groups()
        if name in attributes:
            raise TemplateSyntaxError(f"{tag} got {name!r} twice")
        if name in COMPUTED_ATTRIBUTES:
            raise TemplateSyntaxError(f"{tag} computes {name!r} from the renditions")
        attributes[name] = parser.compile_filter(value)
    return PictureNode(parser.compile_filter(bits[0]), parser.compile_filter(bits[1]), attributes)


class PictureNode(Node):
    """The node `{% picture %}` compiles to."""

    def __init__(
        self,
        image: FilterExpression,
        set_name: FilterExpression,
        attributes: Mapping[str, FilterExpression],
    ) -> None:
        self.image = image
        self.set_name = set_name
        self.attributes = attributes

    def render(self, context: Context) -> str:
        """Resolve the arguments and render the `<picture>`."""
        image = self.image.resolve(context)
        if not image and not isinstance(image, FieldFile):
            return ""  # an unset variable (None, or string_if_invalid) is an empty field
        values = {name: value.resolve(context) for name, value in self.attributes.items()}
        return picture_html(image, str(self.set_name.resolve(context)), values)


@register.simple_tag
def rendition_url(fieldfile: FieldFile, spec: str) -> str:
    """`{% rendition_url obj.image "fill-64x64|format-webp" %}`: the original's URL until ready."""
    if not fieldfile and not isinstance(fieldfile, FieldFile):
        return ""
    rendition = get_rendition(fieldfile, spec)
    if rendition is not None:
        return rendition.url
    return fieldfile.url if fieldfile else ""


@register.simple_tag(name="srcset")
def srcset_tag(fieldfile: FieldFile, set_name: str, fmt: str) -> str:
    """`{% srcset obj.image "hero" "avif" %}`: `URL 160w, URL 320w` of the ready ones."""
    if not fieldfile and not isinstance(fieldfile, FieldFile):
        return ""
    return srcset_value(fieldfile, set_name, fmt)


def _background(placeholder: Placeholder, kind: str, style: object) -> str:
    # The worker writes a hex colour and a base64 URI; anything else (a row edited by
    # hand) is left out rather than written into a style.
    painted = ""
    if _COLOR.fullmatch(placeholder.color):
        painted = f"background-color:{placeholder.color}"
    if kind == "blur" and _DATA_URI.fullmatch(placeholder.data_uri):
        image = f"background-image:url({placeholder.data_uri});background-size:cover"
        painted = f"{painted};{image}" if painted else image
    if not painted:
        return str(style) if style else ""
    if style:
        return f"{painted};{style}"
    return painted


def _check_attribute_names(attributes: Mapping[str, object]) -> None:
    for name in attributes:
        if _ATTRIBUTE_NAME.fullmatch(name) is None:
            raise ValueError(f"{name!r} is not an HTML attribute name")
        if name in COMPUTED_ATTRIBUTES:
            raise ValueError(f"{name!r} is computed from the renditions and cannot be set")


def _img_format(specs: Sequence[Spec], in_set: Sequence[tuple[Spec, RenditionInfo]]) -> str | None:
    produced = {spec.format for spec in specs if spec.format is not None}
    # A spec without `format-` follows the source's format: known once its rendition is ready.
    produced |= {rendition.format for spec, rendition in in_set if spec.format is None}
    return next((fmt for fmt in IMG_FORMATS if fmt in produced), None)


def _by_width(renditions: Iterable[RenditionInfo]) -> list[RenditionInfo]:
    # Renditions never upscale, so two widths of a small source can come out equally wide;
    # a srcset must not repeat a descriptor, and the pixels are the same: keep the first.
    by_width: dict[int, RenditionInfo] = {}
    for rendition in renditions:
        by_width.setdefault(rendition.width, rendition)
    return [by_width[width] for width in sorted(by_width)]


def _srcset(renditions: Iterable[RenditionInfo]) -> str:
    return ", ".join(f"{rendition.url} {rendition.width}w" for rendition in renditions)


def _tag(name: str, attributes: Mapping[str, object], extra: Mapping[str, object]) -> SafeString:
    merged = {**attributes, **extra}
    rendered = [
        format_html(" {}", key) if value is True else format_html(' {}="{}"', key, value)
        for key, value in merged.items()
        if value is not None and value is not False
    ]
    return format_html("<{}{}>", name, mark_safe("".join(rendered)))
