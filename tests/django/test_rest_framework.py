"""`RenditionsField` through a real DRF view and APIClient (DESIGN.md "Django REST framework")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.urls import path
from rest_framework import generics, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIClient

import rendition_worker
from rendition_worker.contrib.rest_framework import RenditionsField
from rendition_worker.models import Rendition, State
from tests.django.test_reading import isolate_cache_and_media, photos_without_signals, record
from tests.django.test_templatetags import HERO, PREVIEW, THUMB, with_placeholder
from tests.testapp.models import Photo, Plain

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


class PhotoSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    image = RenditionsField()
    cover = RenditionsField(sets=["thumb"])

    class Meta:
        model = Photo
        fields = ["id", "image", "cover"]


class Page(PageNumberPagination):
    page_size = 25


class PhotoList(generics.ListAPIView):  # type: ignore[type-arg]
    queryset = Photo.objects.order_by("pk")
    serializer_class = PhotoSerializer
    pagination_class = Page
    renderer_classes = [JSONRenderer]


class PhotoDetail(generics.RetrieveAPIView):  # type: ignore[type-arg]
    queryset = Photo.objects.all()
    serializer_class = PhotoSerializer
    renderer_classes = [JSONRenderer]


urlpatterns = [
    path("api/photos/", PhotoList.as_view()),
    path("api/photos/<int:pk>/", PhotoDetail.as_view()),
]


@pytest.fixture(autouse=True)
def own_cache_and_media(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> None:
    """A cache and a MEDIA_ROOT of this test's own."""
    isolate_cache_and_media(request, settings, tmp_path)


def get(url: str) -> Any:
    response = APIClient().get(url)
    assert response.status_code == 200, response.content
    return response.json()


def test_a_ready_field_lists_every_set_and_format_with_absolute_urls() -> None:
    (photo,) = photos_without_signals("photos/a.jpg")
    record([photo])
    with_placeholder([photo])
    ready = rendition_worker.get_renditions(photo.image)

    body = get(f"/api/photos/{photo.pk}/")

    absolute = "http://testserver"
    assert body["cover"] is None  # an empty field
    image = body["image"]
    assert image["state"] == "ready"
    assert (image["width"], image["height"]) == (300, 400)  # the upright source's
    assert image["original"] == absolute + photo.image.url
    assert image["placeholder"] == {"color": "#3a5f0b", "data_uri": PREVIEW}
    assert list(image["sets"]) == ["hero", "thumb"]
    assert list(image["sets"]["hero"]) == ["avif", "webp", "jpeg"]
    for fmt, specs in (("avif", HERO[0::3]), ("webp", HERO[1::3]), ("jpeg", HERO[2::3])):
        assert image["sets"]["hero"][fmt] == [
            {
                "url": absolute + ready[spec].url,
                "width": ready[spec].width,
                "height": ready[spec].height,
            }
            for spec in specs
        ]
    (thumb,) = image["sets"]["thumb"]["webp"]
    assert thumb == {"url": absolute + ready[THUMB].url, "width": 64, "height": 64}


def test_without_a_request_urls_stay_as_the_storage_gives_them() -> None:
    (photo,) = photos_without_signals("photos/a.jpg")
    record([photo], [THUMB])
    data = PhotoSerializer(photo).data
    assert data["image"]["original"] == photo.image.url
    assert data["image"]["sets"]["thumb"]["webp"][0]["url"].startswith("/media/renditions/")


def test_a_pending_field_lists_only_what_is_ready_and_the_original() -> None:
    (photo,) = photos_without_signals("photos/a.jpg")
    record([photo], [HERO[5], HERO[3]], source_state=State.PENDING)
    Rendition.objects.filter(format="avif").update(state=State.PENDING)

    image = get(f"/api/photos/{photo.pk}/")["image"]

    assert image["state"] == "pending"
    assert (image["width"], image["height"], image["placeholder"]) == (None, None, None)
    assert image["original"] == "http://testserver" + photo.image.url
    assert image["sets"]["hero"]["avif"] == []
    assert image["sets"]["hero"]["webp"] == []
    assert [item["width"] for item in image["sets"]["hero"]["jpeg"]] == [320]
    assert image["sets"]["thumb"] == {"webp": []}


def test_a_field_nobody_has_rendered_yet_is_pending() -> None:
    (photo,) = photos_without_signals("photos/a.jpg")
    image = get(f"/api/photos/{photo.pk}/")["image"]
    assert image["state"] == "pending"
    assert image["sets"] == {"hero": {"avif": [], "webp": [], "jpeg": []}, "thumb": {"webp": []}}


def test_a_failed_field_says_so_and_lists_nothing() -> None:
    (photo,) = photos_without_signals("photos/a.jpg")
    record([photo], [], source_state=State.FAILED, error="damaged JPEG file")
    image = get(f"/api/photos/{photo.pk}/")["image"]
    assert image["state"] == "failed"
    assert all(not listed for formats in image["sets"].values() for listed in formats.values())


def test_a_list_endpoint_costs_two_queries_cold_and_none_for_renditions_warm(
    django_assert_num_queries: Any,
) -> None:
    photos = photos_without_signals(*(f"photos/page-{index}.jpg" for index in range(20)))
    record(photos[:10])
    record(photos[10:], [HERO[0]], source_state=State.PENDING)
    with_placeholder(photos)
    ContentType.objects.clear_cache()

    # Cold: the page's COUNT and rows, the content type (once per process), and one query for
    # every row's renditions, placeholder and state.
    with django_assert_num_queries(4):
        body = get("/api/photos/")
    assert body["count"] == 20
    states = [row["image"]["state"] for row in body["results"]]
    assert states == ["ready"] * 10 + ["pending"] * 10
    assert all(row["image"]["placeholder"]["data_uri"] == PREVIEW for row in body["results"])

    # Warm: only the page's own two queries.
    with django_assert_num_queries(2):
        assert get("/api/photos/") == body


def test_an_unknown_set_is_refused_when_the_serializer_is_built() -> None:
    class Wrong(serializers.ModelSerializer):  # type: ignore[type-arg]
        image = RenditionsField(sets=["hero", "cards"])

        class Meta:
            model = Photo
            fields = ["image"]

    # Binding the fields (what any use of the serializer does first) refuses it, row or not.
    with pytest.raises(
        ValueError, match=r"testapp\.Photo\.image has no set 'cards'; its sets: hero, thumb"
    ):
        _ = Wrong().fields


def test_an_unregistered_field_and_a_string_of_sets_are_refused() -> None:
    class Unregistered(serializers.ModelSerializer):  # type: ignore[type-arg]
        image = RenditionsField()

        class Meta:
            model = Plain
            fields = ["image"]

    (plain,) = photos_without_signals("plain/a.jpg", model=Plain)
    with pytest.raises(ValueError, match=r"testapp\.Plain\.image is not a registered field"):
        _ = Unregistered(plain).data
    with pytest.raises(TypeError, match="a list of set names, not the string 'hero'"):
        RenditionsField(sets="hero")


def test_a_plain_serializer_checks_its_sets_on_the_value() -> None:
    class Loose(serializers.Serializer):  # type: ignore[type-arg]
        image = RenditionsField(sets=["cards"])

    (photo,) = photos_without_signals("photos/a.jpg")
    with pytest.raises(ValueError, match="has no set 'cards'"):
        _ = Loose(photo).data
