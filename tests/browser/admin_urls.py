"""The URLs of the admin browser test: the admin, media (the demo's view) and static files.

The test settings serve no static files (no staticfiles app, no STATIC_URL), and the
focal point widget's script is one; staticfiles' view reads it from the app's folder.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import URLPattern, URLResolver, path, re_path

from rendition_worker.demo import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    re_path(r"^media/(?P<path>.*)$", views.media, name="media"),
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}, name="static"),
]
