"""The demo's URLs: gallery, photo pages, upload, JSON API, admin, media and static files.

Django serving files is fine for a demo and for a small site behind a cache; a larger one
sets DEMO_SERVE_MEDIA=0 and DEMO_SERVE_STATIC=0 and lets a web server or the bucket's
CDN serve them.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import URLPattern, URLResolver, include, path, re_path

from rendition_worker.demo import api, views

demo_patterns: list[URLPattern | URLResolver] = [
    path("", views.gallery, name="gallery"),
    path("photos/<int:pk>/", views.photo_detail, name="photo"),
    path("upload/", views.upload, name="upload"),
    path("api/photos/", api.PhotoList.as_view(), name="api-photos"),
]

urlpatterns: list[URLPattern | URLResolver] = [
    path("", include((demo_patterns, "demo"))),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
]


def _prefix(url: str) -> str | None:
    # Only a local path can be routed; an absolute URL (a CDN, a bucket) is served elsewhere.
    if not url.startswith("/") or url.startswith("//"):
        return None
    return re.escape(url.lstrip("/"))


_media = _prefix(settings.MEDIA_URL)
if getattr(settings, "DEMO_SERVE_MEDIA", True) and _media:
    urlpatterns.append(re_path(rf"^{_media}(?P<path>.*)$", views.media, name="media"))
_static = _prefix(settings.STATIC_URL or "")
if getattr(settings, "DEMO_SERVE_STATIC", True) and _static:
    # staticfiles' own view reads the apps' static folders directly (no collectstatic);
    # insecure=True lets it run with DEBUG off.
    urlpatterns.append(
        re_path(rf"^{_static}(?P<path>.*)$", serve_static, {"insecure": True}, name="static")
    )
