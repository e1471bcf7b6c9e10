"""The upload form."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms

import rendition_worker.core.plugins  # noqa: F401  # so that AVIF and HEIC uploads validate
from rendition_worker.demo.models import Photo

if TYPE_CHECKING:
    _PhotoForm = forms.ModelForm[Photo]
else:  # not subscriptable at runtime
    _PhotoForm = forms.ModelForm


class PhotoForm(_PhotoForm):
    """A title and an image; Django's ImageField refuses files Pillow cannot open."""

    class Meta:
        model = Photo
        fields = ("title", "image")
