"""The focal point form field and widget: click or drag a box on the image, in the admin.

The value is `x,y,w,h` in fractions of the upright image (what `set_focal_point` takes),
or empty for none. The widget shows the image (a ready uncropped rendition when there is
one, the original otherwise: the browser applies EXIF orientation to both, so fractions of
what it shows are fractions of the upright picture) with the box drawn over it; its
script (static/rendition_worker/focal-point.js) turns a drag into that box and a click
into a small box around the point.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from rendition_worker.core.focal import FocalBox, parse_focal_box

# Boxes the widget can send are always valid; these say what is wrong with a hand-made POST.
_FORM = "x,y,width,height in fractions 0..1 of the upright image, or empty for none"


class FocalPointWidget(forms.Widget):
    """The image with the focal box over it, a hidden input holding `x,y,w,h`, and Clear."""

    template_name = "rendition_worker/widgets/focal_point.html"
    # Set per form instance (the form deep-copies its widgets): what the widget shows.
    image_url: str = ""

    class Media:
        css = {"all": ("rendition_worker/focal-point.css",)}
        js = ("rendition_worker/focal-point.js",)

    def format_value(self, value: Any) -> str:
        """`x,y,w,h` for a box, '' for none."""
        if isinstance(value, FocalBox):
            return value.key
        return "" if value in (None, "") else str(value)

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        """The template's context: the image and the box in percent, for the overlay."""
        context = super().get_context(name, value, attrs)
        box = _box_or_none(self.format_value(value))
        context["widget"]["image_url"] = self.image_url
        context["widget"]["box"] = (
            {
                "left": f"{box.x * 100:.2f}",
                "top": f"{box.y * 100:.2f}",
                "width": f"{box.width * 100:.2f}",
                "height": f"{box.height * 100:.2f}",
            }
            if box is not None
            else None
        )
        return context


class FocalPointField(forms.Field):
    """A focal box as `x,y,w,h` text; cleans to a FocalBox or None."""

    widget = FocalPointWidget

    def to_python(self, value: Any) -> FocalBox | None:
        """Parse `x,y,w,h`; a ValidationError that says what is wrong otherwise."""
        if isinstance(value, FocalBox) or value in (None, ""):
            return value or None
        try:
            numbers = [float(part) for part in str(value).split(",")]
            return parse_focal_box(numbers)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"Not a focal point ({_FORM}): {exc}", code="invalid") from exc

    def has_changed(self, initial: Any, data: Any) -> bool:
        """Changed when the box differs, not when its spelling does."""
        try:
            return self.to_python(initial) != self.to_python(data)
        except ValidationError:
            return True


def _box_or_none(text: str) -> FocalBox | None:
    try:
        return parse_focal_box([float(part) for part in text.split(",")]) if text else None
    except (TypeError, ValueError):
        return None
