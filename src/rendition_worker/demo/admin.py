"""The demo's admin: photos, with each one's rendition state and a regenerate action."""

from __future__ import annotations

from django.contrib import admin

from rendition_worker.admin import RenditionAdminMixin
from rendition_worker.demo.models import Photo


@admin.register(Photo)
class PhotoAdmin(RenditionAdminMixin):
    """Photos, with the renditions panel of rendition-worker on each change page."""

    list_display = ("title", "image", "uploaded_at")
    search_fields = ("title",)
    date_hierarchy = "uploaded_at"
