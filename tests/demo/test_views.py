"""The demo's pages in-process, against the real Celery worker of tests/live_worker.py.

Django's test client drives the demo's own URLconf with the test settings (where the demo
app is installed with the test sets); the renditions are made by the real worker on Redis.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from PIL import Image

import rendition_worker
import rendition_worker.core.plugins  # to open the AVIF served back
from rendition_worker.demo.models import Photo
from rendition_worker.demo.views import IMMUTABLE
from rendition_worker.models import Source
from tests.demo.conftest import Cards, WorkerTracker, srcset_urls
from tests.live_worker import jpeg_bytes, media_files, wait_for

pytestmark = pytest.mark.urls("rendition_worker.demo.urls")

# The test settings' hero set for demo.Photo.image: widths 160 and 320 in each format.
HERO_WIDTHS = (160, 320)


def photo_upload(name: str = "harbour.jpg", size: tuple[int, int] = (640, 480)) -> Any:
    """A real JPEG as the browser's multipart form sends it."""
    return SimpleUploadedFile(name, jpeg_bytes(size), content_type="image/jpeg")


def body(response: Any) -> str:
    """A page's HTML."""
    return str(response.content.decode())


def body_bytes(response: Any) -> bytes:
    """A file response's bytes, read whole."""
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_an_uploaded_photo_is_pending_then_ready_with_every_format(
    worker: WorkerTracker, client: Client, settings: Any
) -> None:
    # Inside one transaction the worker's task is not sent yet (it goes after the commit):
    # the pages are seen exactly as a visitor sees them before the worker has rendered.
    with transaction.atomic():
        response = client.post("/upload/", {"title": "Harbour", "image": photo_upload()})
        assert response.status_code == 302, body(response)
        photo = Photo.objects.get()
        assert response["Location"] == f"/photos/{photo.pk}/"
        pending = client.get(response["Location"])
        assert pending.status_code == 200
        page = Cards(body(pending))
        assert page.states == {str(photo.pk): "pending"}
        # The original, as a plain <img>, no <picture>: a page never waits for the worker.
        assert page.sources == {}
        assert page.images[str(photo.pk)]["src"] == photo.image.url
        assert "the worker is rendering it" in body(pending)  # the upload's message
        assert '<meta http-equiv="refresh"' in body(pending)
        gallery = Cards(body(client.get("/")))
        assert gallery.states == {str(photo.pk): "pending"}
    assert photo.image.name.startswith("photos/")
    assert Path(settings.MEDIA_ROOT, photo.image.name).is_file()

    def ready_page() -> str | None:
        html = body(client.get(f"/photos/{photo.pk}/"))
        return html if Cards(html).states.get(str(photo.pk)) == "ready" else None

    html = wait_for(ready_page, what="the detail page to show the photo ready")
    page = Cards(html)
    sources = dict(page.sources[str(photo.pk)])
    assert set(sources) == {"image/avif", "image/webp"}
    img = page.images[str(photo.pk)]
    srcsets = {**sources, "image/jpeg": img["srcset"]}
    for media_type, srcset in srcsets.items():
        extension = {"image/avif": "avif", "image/webp": "webp", "image/jpeg": "jpg"}[media_type]
        assert [url.rsplit(".", 1)[-1] for url in srcset_urls(srcset)] == [extension] * 2
        assert [candidate.split()[1] for candidate in srcset.split(", ")] == [
            f"{width}w" for width in HERO_WIDTHS
        ]
    assert img["src"].endswith(".jpg") and (img["width"], img["height"]) == ("320", "240")
    assert '<meta http-equiv="refresh"' not in html
    # The detail page's table lists every ready rendition: hero in 3 formats x 2 widths, thumb.
    assert html.count("<tr data-spec=") == 7
    gallery = Cards(body(client.get("/")))
    assert gallery.states == {str(photo.pk): "ready"}
    # The gallery's cards are the thumb crop (webp only here: no <source>), on the colour
    # the worker recorded.
    card = gallery.images[str(photo.pk)]
    thumb = rendition_worker.get_rendition(photo.image, "fill-64x64|format-webp")
    assert thumb is not None
    assert (card["src"], card["width"], card["height"]) == (thumb.url, "64", "64")
    placeholder = rendition_worker.get_placeholder(photo.image)
    assert placeholder is not None
    assert card["style"] == f"background-color:{placeholder.color}"
    assert str(photo.pk) not in gallery.sources


def test_a_file_that_is_not_an_image_is_refused_and_nothing_saved(
    worker: WorkerTracker, client: Client, settings: Any
) -> None:
    fake = SimpleUploadedFile("notes.jpg", b"these are words, not pixels", "image/jpeg")
    response = client.post("/upload/", {"title": "Notes", "image": fake})
    assert response.status_code == 200
    assert "Upload a valid image" in body(response)
    assert not Photo.objects.exists()
    assert not Source.objects.exists()
    assert media_files(settings.MEDIA_ROOT) == set()


def test_renditions_are_served_immutable_and_originals_not(
    worker: WorkerTracker, client: Client
) -> None:
    photo = Photo.objects.create(title="Field", image=photo_upload("field.jpg", (400, 300)))

    def ready_avif() -> str | None:
        page = Cards(body(client.get(f"/photos/{photo.pk}/")))
        sources = dict(page.sources.get(str(photo.pk), []))
        return srcset_urls(sources["image/avif"])[-1] if "image/avif" in sources else None

    url = wait_for(ready_avif, what="an AVIF source on the detail page")
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/avif"
    assert response["Cache-Control"] == IMMUTABLE
    with Image.open(io.BytesIO(body_bytes(response))) as served:
        assert served.format == "AVIF"
        assert served.size == (320, 240)
    # The original keeps its name only until it is replaced: never marked immutable.
    original = client.get(photo.image.url)
    assert original.status_code == 200
    assert body_bytes(original) == Path(photo.image.path).read_bytes()
    assert "immutable" not in original.get("Cache-Control", "")
    assert client.get("/media/renditions/none.avif").status_code == 404


@pytest.mark.django_db
def test_healthz_answers_ok(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"
    assert "no-cache" in response["Cache-Control"]


def test_the_admin_lists_photos_with_their_renditions_panel(
    worker: WorkerTracker, client: Client, admin_user: Any
) -> None:
    photo = Photo.objects.create(title="Quay", image=photo_upload("quay.jpg", (400, 300)))
    wait_for(
        lambda: rendition_worker.get_status(photo.image).state == "ready",
        what="the photo's renditions",
    )
    client.force_login(admin_user)
    listing = client.get("/admin/demo/photo/")
    assert listing.status_code == 200
    assert "Quay" in body(listing)
    assert "Regenerate renditions" in body(listing)
    change = body(client.get(f"/admin/demo/photo/{photo.pk}/change/"))
    # The panel lists each rendition by its spec, with its file.
    for spec in ("width-320|format-avif", "fill-64x64|format-webp"):
        assert spec in change


def test_the_api_lists_photos_with_their_renditions(worker: WorkerTracker, client: Client) -> None:
    photo = Photo.objects.create(title="Dune", image=photo_upload("dune.jpg", (400, 300)))
    wait_for(
        lambda: rendition_worker.get_status(photo.image).state == "ready",
        what="the photo's renditions",
    )
    response = client.get("/api/photos/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    (row,) = response.json()["results"]
    assert (row["id"], row["title"]) == (photo.pk, "Dune")
    image = row["image"]
    assert image["state"] == "ready"
    assert (image["width"], image["height"]) == (400, 300)
    assert image["original"] == f"http://testserver{photo.image.url}"
    assert image["placeholder"]["color"].startswith("#")
    hero = image["sets"]["hero"]
    assert list(hero) == ["avif", "webp", "jpeg"]
    for fmt, listed in hero.items():
        assert [item["width"] for item in listed] == list(HERO_WIDTHS), fmt
        assert all(item["url"].startswith("http://testserver/media/") for item in listed)
        fetched = client.get(listed[-1]["url"].removeprefix("http://testserver"))
        assert fetched.status_code == 200
    assert [(item["width"], item["height"]) for item in image["sets"]["thumb"]["webp"]] == [
        (64, 64)
    ]


def test_staff_get_the_focal_point_link_and_visitors_do_not(
    worker: WorkerTracker, client: Client, admin_user: Any
) -> None:
    photo = Photo.objects.create(title="Pier", image=photo_upload("pier.jpg", (400, 300)))
    change = f"/admin/demo/photo/{photo.pk}/change/"
    assert change not in Cards(body(client.get(f"/photos/{photo.pk}/"))).links
    client.force_login(admin_user)
    assert change in Cards(body(client.get(f"/photos/{photo.pk}/"))).links
    # The change page it leads to has the focal point widget.
    assert "focal" in body(client.get(change)).lower()
