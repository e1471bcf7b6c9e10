"""Import a folder of images as demo photos and follow them until their renditions are done."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from django.core.files import File
from tqdm import tqdm

import rendition_worker
from rendition_worker.demo.models import Photo

# Files are picked by extension, not by content: a corrupt .jpg is imported too, and the
# worker records it as failed, which is what the demo shows.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif", ".tif", ".tiff", ".bmp", ".heic", ".heif"}
)
POLL_SECONDS = 0.5


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, by name."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def photos_import(files: Sequence[Path], check: Callable[[], None]) -> tuple[list[Photo], int]:
    """Save each file as a Photo titled with its file name, unless one has that title already.

    Returns the photos of all the files (new and earlier imports) and how many were new.
    `check` runs between files and raises to abort.
    """
    existing = {
        photo.title: photo for photo in Photo.objects.filter(title__in=[p.name for p in files])
    }
    photos: list[Photo] = []
    created = 0
    with tqdm(total=len(files), desc="importing", unit=" photos", leave=False) as bar:
        for path in files:
            check()
            photo = existing.get(path.name)
            if photo is None:
                with path.open("rb") as content:
                    # Saved through the ORM like an upload: the signal handlers enqueue the
                    # renditions after the commit.
                    photo = Photo.objects.create(title=path.name, image=File(content, path.name))
                created += 1
            photos.append(photo)
            bar.update(1)
    return photos, created


def photos_follow(photos: Sequence[Photo], check: Callable[[], None]) -> dict[int, str]:
    """Wait, with a progress bar, until no photo is pending; returns pk -> error of failed ones.

    `check` runs between polls and raises to abort.
    """
    waiting = {photo.pk: photo for photo in photos}
    failed: dict[int, str] = {}
    with tqdm(total=len(photos), desc="rendering", unit=" photos") as bar:
        while True:
            for pk, photo in list(waiting.items()):
                status = rendition_worker.get_status(photo.image)
                if status.state == "pending":
                    continue
                del waiting[pk]
                if status.state == "failed":
                    failed[pk] = status.error
                    bar.set_postfix(failed=len(failed))
                bar.update(1)
            if not waiting:
                return failed
            check()
            time.sleep(POLL_SECONDS)
