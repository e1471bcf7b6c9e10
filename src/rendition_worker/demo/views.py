"""The demo's pages: gallery, photo detail, upload form, and media files with cache headers."""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.contrib import messages
from django.core.cache import caches
from django.core.paginator import Paginator
from django.db import DatabaseError, connection
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django.views.static import serve

import rendition_worker
from rendition_worker.conf import get_settings
from rendition_worker.demo.forms import PhotoForm
from rendition_worker.demo.models import Photo

PAGE_SIZE = 24
# Seconds between reloads of a page that shows a pending photo.
REFRESH_SECONDS = 2
# What the gallery's and the detail page's CSS make of an image's width (see base.html):
# browsers pick the srcset candidate from these before they lay the page out.
GALLERY_SIZES = "(min-width: 48rem) 33vw, 100vw"
DETAIL_SIZES = "(min-width: 64rem) 64rem, 100vw"
# Rendition names change whenever their content could (DESIGN.md), so a browser may keep one.
IMMUTABLE = "public, max-age=31536000, immutable"

logger = logging.getLogger(__name__)


def gallery(request: HttpRequest) -> HttpResponse:
    """The newest photos, each as a `<picture>` of its `thumb` crop, with its state."""
    page = Paginator(Photo.objects.all(), PAGE_SIZE).get_page(request.GET.get("page"))
    photos = list(page.object_list)
    rendition_worker.prefetch_renditions(photos, "image")
    # The statuses come with the prefetched renditions: no query per photo.
    cards = [(photo, rendition_worker.get_status(photo.image)) for photo in photos]
    pending = any(status.state == "pending" for _, status in cards)
    context = {
        "page": page,
        "cards": cards,
        "sizes": GALLERY_SIZES,
        "refresh": REFRESH_SECONDS if pending else None,
    }
    return render(request, "demo/gallery.html", context)


def photo_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One photo: its picture, its state (pending, ready or failed) and its ready renditions."""
    photo = get_object_or_404(Photo, pk=pk)
    status = rendition_worker.get_status(photo.image)
    context = {
        "photo": photo,
        "status": status,
        "renditions": list(rendition_worker.get_renditions(photo.image).values()),
        "sizes": DETAIL_SIZES,
        # The admin's change page has the focal point widget; staff who may change a photo
        # get a link to it.
        "can_focus": request.user.has_perm("demo.change_photo"),
        "refresh": REFRESH_SECONDS if status.state == "pending" else None,
    }
    return render(request, "demo/detail.html", context)


@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """The upload form; a valid POST saves the photo and redirects to its page."""
    if request.method == "POST":
        form = PhotoForm(request.POST, request.FILES)
        if form.is_valid():
            photo = form.save()
            messages.success(request, f"Uploaded {photo.title}; the worker is rendering it.")
            return redirect("demo:photo", pk=photo.pk)
    else:
        form = PhotoForm()
    return render(request, "demo/upload.html", {"form": form})


def media(request: HttpRequest, path: str) -> HttpResponseBase:
    """A file of MEDIA_ROOT; renditions with a long-lived, immutable Cache-Control."""
    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    if isinstance(response, FileResponse | HttpResponse) and path.startswith(
        get_settings().path + "/"
    ):
        response["Cache-Control"] = IMMUTABLE
    return response


@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """200 "ok" when the database and the cache answer; 503 naming what does not."""
    problems = [
        f"{what}: {reason}"
        for what, check in (("database", _database_reason), ("cache", _cache_reason))
        if (reason := check()) is not None
    ]
    if problems:
        return HttpResponse(
            "\n".join(problems) + "\n", status=503, content_type="text/plain; charset=utf-8"
        )
    return HttpResponse("ok", content_type="text/plain; charset=utf-8")


def _database_reason() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.warning("healthz: the database does not answer", exc_info=True)
        return _first_line(exc)
    return None


def _cache_reason() -> str | None:
    # The cache the worker invalidates and the pages read: a web process that cannot reach
    # it serves stale renditions, so it is not healthy. A key of its own per request, so
    # that concurrent checks never read each other's value.
    key = f"demo-healthz:{uuid.uuid4().hex}"
    try:
        cache = caches[get_settings().cache]
        cache.set(key, key, timeout=30)
        answer = cache.get(key)
        cache.delete(key)
    # Each cache backend raises its client's own errors (redis-py's, OSError for files).
    except Exception as exc:
        logger.warning("healthz: the cache does not answer", exc_info=True)
        return _first_line(exc)
    if answer != key:
        return "a value written was not read back"
    return None


def _first_line(exc: BaseException) -> str:
    # The class and the first line: enough to act on, without a multi-line driver report.
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
