"""The demo's JSON API: `/api/photos/`, each photo's renditions through `RenditionsField`."""

from __future__ import annotations

from rest_framework import generics, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.renderers import JSONRenderer

from rendition_worker.contrib.rest_framework import RenditionsField
from rendition_worker.demo.models import Photo


class PhotoSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """A photo: its title, upload time and every set of its renditions."""

    image = RenditionsField()

    class Meta:
        model = Photo
        fields = ["id", "title", "uploaded_at", "image"]


class PhotoPage(PageNumberPagination):
    """Pages of the gallery's size, newest first."""

    page_size = 24


class PhotoList(generics.ListAPIView):  # type: ignore[type-arg]
    """`GET /api/photos/`: the photos, a page at a time, with absolute rendition URLs."""

    queryset = Photo.objects.all()
    serializer_class = PhotoSerializer
    pagination_class = PhotoPage
    renderer_classes = [JSONRenderer]
    # A public read-only listing, as the gallery is.
    permission_classes: list[type] = []
    authentication_classes: list[type] = []
