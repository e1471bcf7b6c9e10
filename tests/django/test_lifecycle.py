"""Scenario tests of DESIGN.md's Behaviour section, through the ORM, with a real worker."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

from rendition_worker.models import Rendition, Source, State
from tests.django.conftest import WorkerTracker, jpeg_bytes, media_files, upload, wait_for, wait_idle
from tests.testapp.models import Photo

HERO_AND_THUMB = 7  # hero: 2 widths x 3 formats, thumb: 1


def ready_renditions(photo: Photo) -> list[Rendition]:
    return list(
        Rendition.objects.filter(
            source__object_id=str(photo.pk), source__field="image", state=State.READY
        )
    )


def test_create_generates_every_rendition(worker: WorkerTracker, settings: Any) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    wait_for(lambda: len(ready_renditions(photo)) == HERO_AND_THUMB, what="renditions")
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    wait_for(lambda: Source.objects.get(pk=source.pk).state == State.READY, what="ready state")
    files = media_files(settings.MEDIA_ROOT, "renditions/")
    assert files == {rendition.name for rendition in ready_renditions(photo)}
    assert photo.image.name in media_files(settings.MEDIA_ROOT)
