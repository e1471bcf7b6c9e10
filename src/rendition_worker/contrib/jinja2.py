"""`renditions`: a Jinja2 extension with the template tags as globals.

Add `"rendition_worker.contrib.jinja2.renditions"` to the Jinja2 backend's (or django-jinja's)
`extensions`; templates then call `picture(obj.image, "hero", alt="...", sizes="...")`,
`rendition_url(obj.image, "fill-64x64|format-webp")` and `srcset(obj.image, "hero", "avif")`,
with the same arguments and the same markup as `{% picture %}`, `{% rendition_url %}` and
`{% srcset %}`. Attributes whose names are not Python names go in `attrs`:
`picture(obj.image, "hero", attrs={"data-photo": obj.pk})`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models.fields.files import FieldFile
from jinja2 import Environment
from jinja2.ext import Extension
from markupsafe import Markup

from rendition_worker.templatetags.renditions import (
    COMPUTED_ATTRIBUTES,
    picture_html,
    srcset_tag,
)
from rendition_worker.templatetags.renditions import (
    rendition_url as rendition_url_tag,
)


def picture(
    image: Any, set_name: str, attrs: Mapping[str, object] | None = None, **attributes: object
) -> Markup:
    """`{% picture %}`: the `<picture>` of one set of the image's ready renditions."""
    merged = {**(attrs or {}), **attributes}
    computed = sorted(COMPUTED_ATTRIBUTES.intersection(merged))
    if computed:
        raise TypeError(f"picture() computes {', '.join(computed)} from the renditions")
    if not image and not isinstance(image, FieldFile):
        return Markup("")  # an undefined variable is an empty field, as in the tag
    return Markup(picture_html(image, str(set_name), merged))


def rendition_url(image: Any, spec: str) -> str:
    """`{% rendition_url %}`: one ready rendition's URL, the original's until it is ready."""
    return rendition_url_tag(image, spec)


def srcset(image: Any, set_name: str, fmt: str) -> str:
    """`{% srcset %}`: `URL 160w, URL 320w` of one set's ready renditions in one format."""
    return srcset_tag(image, set_name, fmt)


class RenditionsExtension(Extension):
    """Adds `picture`, `rendition_url` and `srcset` to the environment's globals."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.globals.update(picture=picture, rendition_url=rendition_url, srcset=srcset)


# The dotted path users put in `extensions`, as the contract names it.
renditions = RenditionsExtension
