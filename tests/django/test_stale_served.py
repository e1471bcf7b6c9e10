"""While an image is replaced again and again, a page is never served another image's renditions.

A reader thread plays the web process: it loads the row, asks for its renditions the way
`{% picture %}` does (through the lookup cache), and checks each one against the database:
the rendition must have been made from the very file the row it loaded points at. The
main thread replaces the image 20 times while the real worker renders and deletes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

import rendition_worker
from rendition_worker.models import Rendition, State
from tests.live_worker import WorkerTracker, jpeg_bytes, upload, wait_for, wait_idle
from tests.testapp.models import Photo

REPLACEMENTS = 20
HERO_AND_THUMB = 7


@dataclass
class Reads:
    """What the reader saw: pages rendered, renditions listed, and any stale one."""

    pages: int = 0
    renditions: int = 0
    stale: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def read_until(stop: threading.Event, pk: int, reads: Reads) -> None:
    """Render the photo's renditions over and over, checking each against the database."""
    try:
        while not stop.is_set():
            photo = Photo.objects.get(pk=pk)
            shown = list(rendition_worker.get_renditions(photo.image).values())
            reads.pages += 1
            reads.renditions += len(shown)
            made_from = dict(
                Rendition.objects.filter(name__in=[info.name for info in shown]).values_list(
                    "name", "source_name"
                )
            )
            for info in shown:
                source_name = made_from.get(info.name)
                # A row already gone means the image moved on after this page was built;
                # a row of another file is a stale rendition served.
                if source_name is not None and source_name != photo.image.name:
                    reads.stale.append(f"{info.name} (of {source_name}) for {photo.image.name}")
    except BaseException as exc:  # reported by the test, not lost in the thread
        reads.errors.append(exc)
    finally:
        connection.close()


def test_no_stale_rendition_is_served_during_20_replacements(
    worker: WorkerTracker, settings: Any
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes(color=(0, 0, 0)), "v0.jpg"))
    reads = Reads()
    stop = threading.Event()
    reader = threading.Thread(target=read_until, args=(stop, photo.pk, reads))
    reader.start()
    try:
        for version in range(1, REPLACEMENTS + 1):
            photo.image = upload(jpeg_bytes(color=(version * 12, 40, 90)), f"v{version}.jpg")
            photo.save()
            if version % 3 == 0:
                # Let the worker get part of the way, so that pages see every stage.
                wait_for(
                    Rendition.objects.filter(source_name=photo.image.name).exists,
                    what="a first rendition of the new image",
                )
        wait_for(
            lambda: (
                Rendition.objects.filter(source_name=photo.image.name, state=State.READY).count()
                == HERO_AND_THUMB
            ),
            what="the last image's renditions",
        )
        wait_idle(worker)
        pages_before = reads.pages
        wait_for(
            lambda: reads.pages > pages_before + 5 or not reader.is_alive(),
            what="pages after the last render",
        )
    finally:
        stop.set()
        reader.join(30)
    assert not reads.errors, reads.errors
    assert reads.stale == []
    assert reads.pages > REPLACEMENTS and reads.renditions > 0
    final = rendition_worker.get_renditions(Photo.objects.get(pk=photo.pk).image)
    assert len(final) == HERO_AND_THUMB
    assert set(Rendition.objects.values_list("source_name", flat=True)) == {photo.image.name}
    print(  # the figures of issue 6's report (pytest -s)
        f"\nstale served: {len(reads.stale)} of {reads.renditions} renditions "
        f"on {reads.pages} pages during {REPLACEMENTS} replacements"
    )
