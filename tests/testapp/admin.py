"""The test site's admin: the registered models with rendition-worker's mixin."""

from __future__ import annotations

from django.contrib import admin

from rendition_worker.admin import RenditionAdminMixin
from tests.testapp.models import Photo, Poster


@admin.register(Photo)
class PhotoAdmin(RenditionAdminMixin, admin.ModelAdmin):
    list_display = ("id", "title", "image", "cover")


@admin.register(Poster)
class PosterAdmin(RenditionAdminMixin, admin.ModelAdmin):
    list_display = ("id", "image")
