"""Focal points and placeholders (DESIGN.md "Crops, placeholders, APIs and Jinja2").

Through the ORM and the public API, with the real session worker: a focal point renames
and re-renders the crops only and retires the old crop files; replacing the image clears
it; the worker records the placeholder before it writes any rendition. Bad input is
refused with a message that says what is wrong.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage
from PIL import Image

import rendition_worker
from rendition_worker.core.focal import InvalidFocalPoint
from rendition_worker.models import Rendition, Source, State, Tombstone
from tests.live_worker import (
    WorkerTracker,
    digest,
    media_files,
    ready_version,
    upload,
    wait_for,
    wait_idle,
)
from tests.testapp.models import Photo, Plain

THUMB = "fill-64x64|format-webp"  # the only cropping spec of testapp.Photo.image
HERO_AND_THUMB = 7
BACKGROUND = (60, 60, 60)
MARK = (230, 20, 20)


def marked_jpeg(
    size: tuple[int, int] = (600, 200),
    mark: tuple[int, int, int, int] = (490, 60, 570, 140),
    orientation: int = 1,
) -> bytes:
    """A flat grey JPEG with a red square at `mark` (stored pixels), EXIF `orientation`."""
    image = Image.new("RGB", size, BACKGROUND)
    image.paste(MARK, mark)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def red_share(data: bytes) -> float:
    """The share of clearly red pixels in an encoded image."""
    with Image.open(io.BytesIO(data)) as opened:
        rgb = opened.convert("RGB")
    pixels = rgb.tobytes()
    red = sum(
        1
        for i in range(0, len(pixels), 3)
        if pixels[i] > 150 and pixels[i + 1] < 90 and pixels[i + 2] < 90
    )
    return red / (rgb.width * rgb.height)


def crop_bytes(root: str, rows: list[Rendition]) -> bytes:
    (thumb,) = [row for row in rows if row.spec == THUMB]
    return (Path(root) / thumb.name).read_bytes()


def names(rows: list[Rendition]) -> dict[str, str]:
    return {f"{row.spec} {row.format}": row.name for row in rows}


def renamed_crop(photo: Photo, old: str) -> list[Rendition]:
    """Wait until the crop of `photo` is ready under another name than `old`."""

    def done() -> list[Rendition] | None:
        source = Source.objects.get(object_id=str(photo.pk), field="image")
        rows = list(Rendition.objects.filter(source=source, state=State.READY))
        (thumb,) = [row for row in rows if row.spec == THUMB] or [None]
        moved = thumb is not None and thumb.name != old
        return rows if moved and source.state == State.READY else None

    rows: list[Rendition] = wait_for(done, what="the crop under its new name")
    return rows


def test_a_focal_point_re_renders_only_the_crops_and_retires_the_old_ones(
    worker: WorkerTracker, settings: Any
) -> None:
    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    first = ready_version(photo, data, HERO_AND_THUMB)
    wait_idle(worker)
    before = names(first)
    old_crop = before[f"{THUMB} webp"]
    # FOCAL_POINT "auto" found the red mark at the right end, which a centred crop misses.
    assert red_share(crop_bytes(settings.MEDIA_ROOT, first)) > 0.1

    assert rendition_worker.set_focal_point(photo.image, (0.05, 0.25, 0.2 * 2 / 3, 0.5))
    after_rows = renamed_crop(photo, old_crop)
    wait_idle(worker)
    after = names(after_rows)
    # Uncropped renditions keep their names (and files); the crop has a new one.
    assert {k: v for k, v in after.items() if THUMB not in k} == {
        k: v for k, v in before.items() if THUMB not in k
    }
    files = media_files(settings.MEDIA_ROOT, "renditions/")
    assert set(after.values()) == files  # the old crop was retired (DELETE_DELAY 0)
    assert old_crop not in files
    # The crop is on the box a person set, at the left end, away from the mark.
    assert red_share(crop_bytes(settings.MEDIA_ROOT, after_rows)) == 0
    source = Source.objects.get(object_id=str(photo.pk))
    assert source.focal_point == [0.05, 0.25, 0.1333, 0.5]

    # The same box again changes nothing and queues nothing.
    assert not rendition_worker.set_focal_point(photo.image, (0.05, 0.25, 0.1333, 0.5))

    # Cleared: the crop goes back to the automatic placement, and so to its first name.
    assert rendition_worker.set_focal_point(photo.image, None)
    cleared = renamed_crop(photo, after[f"{THUMB} webp"])
    assert names(cleared) == before


def test_a_focal_point_is_kept_as_a_tombstone_for_delete_delay(
    worker: WorkerTracker, settings: Any
) -> None:
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "DELETE_DELAY": 3600}
    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    old_crop = names(ready_version(photo, data, HERO_AND_THUMB))[f"{THUMB} webp"]
    rendition_worker.set_focal_point(photo.image, (0.0, 0.0, 0.5, 1.0))
    renamed_crop(photo, old_crop)
    wait_idle(worker)
    # A page cached by a CDN may still show the old crop: it stays until DELETE_DELAY.
    assert old_crop in media_files(settings.MEDIA_ROOT, "renditions/")
    assert list(Tombstone.objects.values_list("name", flat=True)) == [old_crop]


def test_replacing_the_image_clears_its_focal_point(worker: WorkerTracker) -> None:
    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    ready_version(photo, data, HERO_AND_THUMB)
    rendition_worker.set_focal_point(photo.image, (0.1, 0.1, 0.2, 0.2))
    wait_idle(worker)

    replacement = marked_jpeg(mark=(20, 20, 80, 80))
    photo.image = upload(replacement, "second.jpg")
    photo.save()
    ready_version(photo, replacement, HERO_AND_THUMB)
    assert Source.objects.get(object_id=str(photo.pk)).focal_point is None


def test_a_focal_point_before_the_worker_took_the_file_up_is_kept(
    worker: WorkerTracker, settings: Any
) -> None:
    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    # Set at once after the upload: the state row may not exist yet.
    rendition_worker.set_focal_point(photo.image, (0.05, 0.3, 0.15, 0.4))
    rows = ready_version(photo, data, HERO_AND_THUMB)
    wait_idle(worker)
    source = Source.objects.get(object_id=str(photo.pk))
    assert source.focal_point == [0.05, 0.3, 0.15, 0.4]
    assert source.state == State.READY
    # Placed on the box, not on the red mark the automatic subject would have chosen.
    assert red_share(crop_bytes(settings.MEDIA_ROOT, rows)) == 0


class PlaceholderWitness(FileSystemStorage):
    """Notes, at every rendition it saves, whether the source's placeholder was recorded."""

    seen: list[bool] = []

    def _save(self, name: str, content: Any) -> str:
        if name.startswith("renditions/"):
            source = Source.objects.filter(field="image").first()
            PlaceholderWitness.seen.append(bool(source and source.placeholder_uri))
        return super()._save(name, content)


@pytest.fixture
def witness_storage(settings: Any) -> Iterator[type[PlaceholderWitness]]:
    PlaceholderWitness.seen = []
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": f"{__name__}.PlaceholderWitness"},
    }
    yield PlaceholderWitness


def test_the_placeholder_is_recorded_before_the_first_rendition(
    worker: WorkerTracker, witness_storage: type[PlaceholderWitness]
) -> None:
    # Stored 300x200 with EXIF orientation 6: upright it is 200x300.
    data = marked_jpeg((300, 200), (0, 0, 300, 200), orientation=6)
    photo = Photo.objects.create(image=upload(data))
    assert rendition_worker.get_placeholder(photo.image) is None  # not taken up yet
    ready_version(photo, data, HERO_AND_THUMB)
    assert witness_storage.seen and all(witness_storage.seen)

    placeholder = rendition_worker.get_placeholder(Photo.objects.get(pk=photo.pk).image)
    assert placeholder is not None
    assert (placeholder.width, placeholder.height) == (200, 300)
    red, green, blue = (int(placeholder.color[i : i + 2], 16) for i in (1, 3, 5))
    assert red > 180 and green < 70 and blue < 70, placeholder.color
    assert placeholder.data_uri.startswith("data:image/webp;base64,")
    assert len(placeholder.data_uri) < 1500
    assert Source.objects.get(object_id=str(photo.pk)).digest == digest(data)


@pytest.mark.django_db
def test_bad_focal_points_are_refused_with_what_is_wrong() -> None:
    photo = Photo.objects.create(title="a", image="photos/a.jpg")
    for box, error, message in [
        ((0.5, 0.5, 0.6, 0.2), InvalidFocalPoint, "reaches outside the image"),
        ((-0.1, 0.0, 0.5, 0.5), InvalidFocalPoint, "reaches outside the image"),
        ((0.1, 0.1, 0.0, 0.5), InvalidFocalPoint, "zero size"),
        ((0.1, 0.1, 0.5, float("nan")), InvalidFocalPoint, "not a finite number"),
        ((0.1, 0.1, 0.5), TypeError, r"\(x, y, width, height\)"),
        ("0.1,0.1,0.5,0.5", TypeError, r"\(x, y, width, height\)"),
        ((0.1, 0.1, True, 0.5), TypeError, "True is not a number"),
    ]:
        with pytest.raises(error, match=message):
            rendition_worker.set_focal_point(photo.image, box)  # type: ignore[arg-type]
    assert issubclass(InvalidFocalPoint, ValueError)

    empty = Photo.objects.create()
    with pytest.raises(ValueError, match="is empty: there is no image"):
        rendition_worker.set_focal_point(empty.image, (0.1, 0.1, 0.5, 0.5))
    plain = Plain.objects.create(image="plain/a.jpg")
    with pytest.raises(ValueError, match=r"Plain\.image is not a registered field"):
        rendition_worker.set_focal_point(plain.image, (0.1, 0.1, 0.5, 0.5))
    with pytest.raises(TypeError, match="expected a FieldFile"):
        rendition_worker.set_focal_point("photos/a.jpg", (0.1, 0.1, 0.5, 0.5))  # type: ignore[arg-type]
    unsaved = Photo(image="photos/b.jpg")
    with pytest.raises(ValueError, match="save the row"):
        rendition_worker.set_focal_point(unsaved.image, (0.1, 0.1, 0.5, 0.5))
    Photo.objects.filter(pk=photo.pk).update(image="photos/other.jpg")
    with pytest.raises(ValueError, match=r"holds .photos/other\.jpg. in the database"):
        rendition_worker.set_focal_point(photo.image, (0.1, 0.1, 0.5, 0.5))
    assert not Source.objects.exists()


# The admin's focal point widget (RenditionAdminMixin)


def change_url(photo: Photo) -> str:
    from django.urls import reverse

    return reverse("admin:testapp_photo_change", args=[photo.pk])


class FormInputs(HTMLParser):
    """The named inputs of a page and their values (text, hidden), as the browser posts them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        kind = found.get("type", "text")
        if tag == "input" and found.get("name") and kind in {"text", "hidden", "number"}:
            self.values[str(found["name"])] = found.get("value") or ""


def form_data(client: Any, photo: Photo, **extra: Any) -> dict[str, Any]:
    """The change form's POST of `photo` as the page stands (inline management forms
    included), plus `extra`."""
    page = client.get(change_url(photo)).content.decode()
    return {**FormInputs(page).values, **extra}


@pytest.mark.django_db
def test_the_change_page_shows_the_widget_with_the_recorded_box(admin_client: Any) -> None:
    photo = Photo.objects.create(title="a", image="photos/a.jpg")
    assert rendition_worker.set_focal_point(photo.image, (0.1, 0.2, 0.3, 0.4))

    page = admin_client.get(change_url(photo)).content.decode()
    assert 'name="image_focal_point" value="0.1000,0.2000,0.3000,0.4000"' in page
    assert "left:10.00%;top:20.00%;width:30.00%;height:40.00%" in page
    assert f'src="{photo.image.url}"' in page  # no rendition is ready: the original
    assert "rendition_worker/focal-point.js" in page
    # The empty cover field has no image to aim at, so no widget.
    assert 'name="cover_focal_point"' not in page
    # The add page has no image yet.
    add = admin_client.get(change_url(photo).replace(f"{photo.pk}/change/", "add/"))
    assert 'name="image_focal_point"' not in add.content.decode()


@pytest.mark.django_db
def test_saving_the_change_form_sets_or_clears_the_focal_point(admin_client: Any) -> None:
    photo = Photo.objects.create(title="a", image="photos/a.jpg")
    url = change_url(photo)

    response = admin_client.post(
        url, form_data(admin_client, photo, image_focal_point="0.5,0.5,0.25,0.25")
    )
    assert response.status_code == 302
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    assert source.focal_point == [0.5, 0.5, 0.25, 0.25]
    assert source.state == State.PENDING

    response = admin_client.post(url, form_data(admin_client, photo, image_focal_point=""))
    assert response.status_code == 302
    assert Source.objects.get(pk=source.pk).focal_point is None


@pytest.mark.django_db
def test_a_bad_focal_point_in_the_form_is_an_error_on_the_page(admin_client: Any) -> None:
    photo = Photo.objects.create(title="a", image="photos/a.jpg")
    response = admin_client.post(
        change_url(photo), form_data(admin_client, photo, image_focal_point="0.9,0.5,0.5,0.5")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "reaches outside the image" in errors["image_focal_point"][0]
    response = admin_client.post(
        change_url(photo), form_data(admin_client, photo, image_focal_point="left")
    )
    assert "Not a focal point" in response.context["adminform"].form.errors["image_focal_point"][0]
    assert not Source.objects.exists()


@pytest.mark.django_db
def test_a_focal_point_sent_with_a_new_image_is_dropped(admin_client: Any) -> None:
    photo = Photo.objects.create(title="a", image="photos/a.jpg")
    new = marked_jpeg()
    response = admin_client.post(
        change_url(photo),
        form_data(admin_client, photo, image_focal_point="0.5,0.5,0.25,0.25")
        | {"image": upload(new, "b.jpg")},
    )
    assert response.status_code == 302
    photo.refresh_from_db()
    assert photo.image.name != "photos/a.jpg"
    # It was drawn on the old picture; the new one starts without one.
    assert not Source.objects.filter(focal_point__isnull=False).exists()


# Reconciliation names crops as the worker does


def test_reconciliation_agrees_with_the_worker_and_follows_focal_point_mode(
    worker: WorkerTracker, settings: Any
) -> None:
    from tests.django.test_reconcile import reconcile, zero_work

    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    first = names(ready_version(photo, data, HERO_AND_THUMB))
    rendition_worker.set_focal_point(photo.image, (0.05, 0.25, 0.1, 0.5))
    boxed = names(renamed_crop(photo, first[f"{THUMB} webp"]))
    wait_idle(worker)
    # A box set, crops renamed by the worker: the reconciler finds nothing to do.
    assert zero_work(reconcile("--dry-run"))

    # Another mode renames only the crops of sources without a box.
    other = Photo.objects.create(image=upload(marked_jpeg(mark=(20, 60, 100, 140)), "o.jpg"))
    auto = names(ready_version(other, other_bytes(other), HERO_AND_THUMB))
    wait_idle(worker)
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "FOCAL_POINT": "centre"}
    report = reconcile("--dry-run")
    assert (report["missing"], report["enqueued"]) == (1, 0)  # the crop of `other` only
    report = reconcile("--sync")
    assert report["generated"] == 1
    centred = names(Rendition.objects.filter(source__object_id=str(other.pk)))
    assert {k: v for k, v in centred.items() if v != auto[k]} == {
        f"{THUMB} webp": centred[f"{THUMB} webp"]
    }
    assert names(Rendition.objects.filter(source__object_id=str(photo.pk))) == boxed
    assert zero_work(reconcile("--dry-run"))


def other_bytes(photo: Photo) -> bytes:
    return Path(photo.image.path).read_bytes()


# A focal point changed while a worker places crops the old way


class GateStorage(FileSystemStorage):
    """Holds the first opening of an original until the test opens the gate."""

    opened = threading.Event()
    release = threading.Event()
    held = False
    lock = threading.Lock()

    def _open(self, name: str, mode: str = "rb") -> Any:
        if not name.startswith("renditions/"):
            with GateStorage.lock:
                first = not GateStorage.held
                GateStorage.held = True
            if first:
                GateStorage.opened.set()
                GateStorage.release.wait(30)
        return super()._open(name, mode)


def test_a_box_changed_during_a_render_wins_over_the_box_it_replaced(
    worker: WorkerTracker, settings: Any
) -> None:
    from tests.django.race_support import TaskLog
    from tests.django.test_reconcile import reconcile

    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    auto_crop = names(ready_version(photo, data, HERO_AND_THUMB))[f"{THUMB} webp"]
    wait_idle(worker)
    GateStorage.held = False
    GateStorage.opened.clear()
    GateStorage.release.clear()
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": f"{__name__}.GateStorage"}}
    log = TaskLog().connect()
    try:
        # Box A (on the mark): a worker claims, reads A, and is held opening the source.
        rendition_worker.set_focal_point(photo.image, (0.8, 0.25, 0.15, 0.5))
        assert GateStorage.opened.wait(30), "the worker never opened the source"
        # Box B (away from it) while that worker is held: it drops that worker's claim.
        rendition_worker.set_focal_point(photo.image, (0.05, 0.25, 0.1, 0.5))
        final = renamed_crop(photo, auto_crop)
        GateStorage.release.set()
        wait_idle(worker)
    finally:
        GateStorage.release.set()
        log.disconnect()
    statuses = sorted(str(summary.get("status")) for _, summary in log.runs)
    assert statuses == ["claimed", "ready"], log.runs
    source = Source.objects.get(object_id=str(photo.pk))
    assert (source.focal_point, source.state) == ([0.05, 0.25, 0.1, 0.5], State.READY)
    rows = list(Rendition.objects.filter(source=source))
    assert names(rows) == names(final)
    assert red_share(crop_bytes(settings.MEDIA_ROOT, rows)) == 0  # B's placement, not A's
    # What the held worker wrote for A was never recorded: an orphan the reconciler sweeps.
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "ORPHAN_GRACE": 0}
    reconcile("--sync")
    assert media_files(settings.MEDIA_ROOT, "renditions/") == set(names(rows).values())


def test_generate_force_records_the_placeholder_of_an_image_rendered_before_them(
    worker: WorkerTracker,
) -> None:
    from io import StringIO

    from django.core.management import call_command

    data = marked_jpeg()
    photo = Photo.objects.create(image=upload(data))
    rows = names(ready_version(photo, data, HERO_AND_THUMB))
    wait_idle(worker)
    # As a source rendered by a version without placeholders left it.
    Source.objects.filter(object_id=str(photo.pk)).update(placeholder_color="", placeholder_uri="")
    assert rendition_worker.get_placeholder(Photo.objects.get(pk=photo.pk).image) is None

    call_command(
        "renditions", "generate", "testapp.Photo.image", "--sync", "--force", stdout=StringIO()
    )
    placeholder = rendition_worker.get_placeholder(Photo.objects.get(pk=photo.pk).image)
    assert placeholder is not None and placeholder.color.startswith("#")
    # Nothing was rendered again: every rendition was there under its current name.
    assert names(list(Rendition.objects.filter(source__object_id=str(photo.pk)))) == rows
