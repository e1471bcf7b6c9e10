"""The admin: sources, their renditions, failed ones filterable, regeneration by the worker."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import default_storage
from django.db import connection, models
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from rendition_worker.models import Rendition, Source, State
from tests.live_worker import WorkerTracker, jpeg_bytes, upload, wait_for
from tests.testapp.models import Photo, Poster

SOURCES_URL = reverse("admin:rendition_worker_source_changelist")
PHOTOS_URL = reverse("admin:testapp_photo_changelist")
HERO_AND_THUMB = 7  # hero: 2 widths x 3 formats, thumb: 1


def make_source(
    instance: models.Model,
    field: str = "image",
    state: str = State.READY,
    error: str = "",
    renditions: int = 0,
) -> Source:
    """A state row for `instance`, with `renditions` ready rendition rows."""
    source = Source.objects.create(
        content_type=ContentType.objects.get_for_model(instance),
        object_id=str(instance.pk),
        field=field,
        name=f"photos/{field}-{instance.pk}.jpg",
        state=state,
        error=error,
    )
    Rendition.objects.bulk_create(
        Rendition(
            source=source,
            spec=f"width-{100 + n}|format-webp",
            source_name=source.name,
            state=State.READY,
            name=f"renditions/{field}-{instance.pk}-{n}.webp",
            format="webp",
            width=100 + n,
            height=75,
            size=1234,
        )
        for n in range(renditions)
    )
    return source


def ready_source(instance: models.Model, field: str = "image") -> Source:
    """Wait until the worker made every rendition of `instance`'s field; its state row."""

    def ready() -> Source | None:
        source = Source.objects.filter(object_id=str(instance.pk), field=field).first()
        return source if source is not None and source.state == State.READY else None

    return wait_for(ready, what=f"{type(instance).__name__} {instance.pk} to be ready")


def changelist_names(response: Any) -> set[str]:
    return {source.name for source in response.context["cl"].result_list}


def run_action(client: Client, url: str, action: str, pks: list[Any]) -> Any:
    response = client.post(
        url, {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True
    )
    assert response.status_code == 200
    return response


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# Source changelist and change page


@pytest.mark.django_db
def test_source_changelist_lists_and_filters_failed(admin_client: Client) -> None:
    photos = [Photo.objects.create(title=f"p{n}") for n in range(2)]
    poster = Poster.objects.create()
    ready = make_source(poster, renditions=2)
    failed = make_source(photos[0], state=State.FAILED, error="cannot identify image file " * 10)
    pending = make_source(photos[1], field="cover", state=State.PENDING)

    response = admin_client.get(SOURCES_URL)
    assert response.status_code == 200
    assert changelist_names(response) == {ready.name, failed.name, pending.name}

    response = admin_client.get(SOURCES_URL, {"state__exact": "failed"})
    assert changelist_names(response) == {failed.name}
    content = response.content.decode()
    assert "cannot identify image file" in content
    assert content.count("cannot identify image file") < 10  # an excerpt, not the whole error
    photo_url = reverse("admin:testapp_photo_change", args=[photos[0].pk])
    assert f'href="{photo_url}"' in content

    response = admin_client.get(SOURCES_URL, {"field__exact": "cover"})
    assert changelist_names(response) == {pending.name}
    photo_type = ContentType.objects.get_for_model(Photo)
    response = admin_client.get(SOURCES_URL, {"content_type__id__exact": photo_type.pk})
    assert changelist_names(response) == {failed.name, pending.name}
    response = admin_client.get(SOURCES_URL, {"q": str(poster.pk)})
    assert changelist_names(response) == {ready.name}
    response = admin_client.get(SOURCES_URL, {"q": failed.name})
    assert changelist_names(response) == {failed.name}


@pytest.mark.django_db
def test_source_changelist_query_count_does_not_grow_with_rows(
    admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    make_source(Photo.objects.create(), renditions=3)
    admin_client.get(SOURCES_URL)  # the session and content types are cached from here on
    with CaptureQueriesContext(connection) as one_row:
        assert admin_client.get(SOURCES_URL).status_code == 200
    for _ in range(29):
        make_source(Poster.objects.create(), renditions=3)
    with django_assert_max_num_queries(len(one_row)):
        response = admin_client.get(SOURCES_URL)
    assert len(response.context["cl"].result_list) == 30


@pytest.mark.django_db
def test_source_change_page_is_read_only_and_lists_renditions(
    admin_client: Client, settings: Any
) -> None:
    source = make_source(Photo.objects.create(), renditions=2)
    url = reverse("admin:rendition_worker_source_change", args=[source.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="_save"' not in content
    for rendition in source.renditions.all():
        assert html.escape(rendition.spec) in content
        assert f'href="{settings.MEDIA_URL}{rendition.name}"' in content
    assert admin_client.get(reverse("admin:rendition_worker_source_add")).status_code == 403
    delete_url = reverse("admin:rendition_worker_source_delete", args=[source.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert admin_client.post(url, {"state": State.FAILED}).status_code == 403
    assert Source.objects.get(pk=source.pk).state == State.READY


@pytest.mark.django_db
def test_source_action_skips_fields_no_longer_registered(
    admin_client: Client, settings: Any
) -> None:
    source = make_source(Poster.objects.create(), state=State.FAILED)
    settings.RENDITION_WORKER = {
        **settings.RENDITION_WORKER,
        "FIELDS": {"testapp.Photo.image": ["hero"]},
    }
    response = run_action(admin_client, SOURCES_URL, "regenerate_renditions", [source.pk])
    assert messages_of(response) == [
        "1 selected source was skipped: its row is gone or has no image, or its field is no "
        "longer registered."
    ]


# The mixin on the site's own ModelAdmins


@pytest.mark.django_db
def test_change_page_query_count_does_not_grow_with_renditions(
    admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    few, many = Photo.objects.create(), Photo.objects.create()
    make_source(few, renditions=1)
    make_source(many, renditions=20)
    make_source(many, field="cover", renditions=20)
    admin_client.get(reverse("admin:testapp_photo_change", args=[few.pk]))
    with CaptureQueriesContext(connection) as one:
        admin_client.get(reverse("admin:testapp_photo_change", args=[few.pk]))
    with django_assert_max_num_queries(len(one)):
        response = admin_client.get(reverse("admin:testapp_photo_change", args=[many.pk]))
    assert response.content.decode().count("format-webp") >= 40


@pytest.mark.django_db
def test_add_page_loads_without_the_panel(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:testapp_photo_add"))
    assert response.status_code == 200
    assert response.context["inline_admin_formsets"] == []


def test_photo_change_page_shows_state_and_renditions(
    worker: WorkerTracker, admin_client: Client
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    source = ready_source(photo)
    renditions = list(source.renditions.all())
    assert len(renditions) == HERO_AND_THUMB
    response = admin_client.get(reverse("admin:testapp_photo_change", args=[photo.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert photo.image.name in content
    assert ">ready<" in content
    for rendition in renditions:
        assert html.escape(rendition.spec) in content
        assert f'href="{default_storage.url(rendition.name)}"' in content


def test_uuid_change_page_shows_state_and_renditions(
    worker: WorkerTracker, admin_client: Client
) -> None:
    poster = Poster.objects.create(image=upload(jpeg_bytes(), "poster.jpg"))
    source = ready_source(poster)
    response = admin_client.get(reverse("admin:testapp_poster_change", args=[poster.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert source.name in content
    for rendition in source.renditions.all():
        assert f'href="{default_storage.url(rendition.name)}"' in content


def test_photo_change_page_shows_a_failed_source(
    worker: WorkerTracker, admin_client: Client
) -> None:
    photo = Photo.objects.create(image=upload(b"not an image at all", "broken.jpg"))

    def failed() -> Source | None:
        return Source.objects.filter(
            object_id=str(photo.pk), field="image", state=State.FAILED
        ).first()

    source = wait_for(failed, what="the source to fail")
    response = admin_client.get(reverse("admin:testapp_photo_change", args=[photo.pk]))
    content = response.content.decode()
    assert ">failed<" in content
    assert html.escape(source.error) in content


def test_photo_action_regenerates_a_deleted_file(
    worker: WorkerTracker, admin_client: Client, settings: Any
) -> None:
    photo = Photo.objects.create(image=upload(jpeg_bytes()))
    source = ready_source(photo)
    lost = source.renditions.order_by("spec").first()
    assert lost is not None
    path = Path(settings.MEDIA_ROOT) / lost.name
    path.unlink()

    response = run_action(admin_client, PHOTOS_URL, "regenerate_renditions", [photo.pk])

    assert messages_of(response) == ["Queued regeneration of 1 image."]
    wait_for(path.is_file, what="the worker to write the deleted rendition again")
    ready_source(photo)
    assert source.renditions.filter(state=State.READY).count() == HERO_AND_THUMB


def test_source_action_regenerates_a_deleted_file_of_a_uuid_row(
    worker: WorkerTracker, admin_client: Client, settings: Any
) -> None:
    poster = Poster.objects.create(image=upload(jpeg_bytes(), "poster.jpg"))
    source = ready_source(poster)
    paths = [Path(settings.MEDIA_ROOT) / r.name for r in source.renditions.all()]
    for path in paths:
        path.unlink()

    response = run_action(admin_client, SOURCES_URL, "regenerate_renditions", [source.pk])

    assert messages_of(response) == ["Queued regeneration of 1 image."]
    wait_for(lambda: all(path.is_file() for path in paths), what="every rendition again")


def test_replacing_the_image_through_the_admin_form(
    worker: WorkerTracker, admin_client: Client, settings: Any
) -> None:
    photo = Photo.objects.create(title="before", image=upload(jpeg_bytes()))
    old = ready_source(photo)
    old_files = [Path(settings.MEDIA_ROOT) / r.name for r in old.renditions.all()]
    url = reverse("admin:testapp_photo_change", args=[photo.pk])
    # What a browser posts back: the form, the panel's management form and row ids.
    data: dict[str, Any] = {"title": "after", "album": "", "cover": "", "_save": "Save"}
    for inline in admin_client.get(url).context["inline_admin_formsets"]:
        formset = inline.formset
        for key, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{key}"] = value
        for form in formset.initial_forms:
            data[f"{form.prefix}-id"] = form.instance.pk
    data["image"] = upload(jpeg_bytes((500, 400), (10, 200, 90)), "new.jpg")

    response = admin_client.post(url, data)

    assert response.status_code == 302, response.context and response.context["errors"]
    photo.refresh_from_db()
    assert photo.title == "after"
    assert photo.image.name != old.name
    new = wait_for(
        lambda: Source.objects.filter(pk=old.pk, name=photo.image.name, state=State.READY).first(),
        what="the new image's renditions",
    )
    assert new.renditions.count() == HERO_AND_THUMB
    wait_for(lambda: not any(path.exists() for path in old_files), what="old renditions deleted")


@pytest.mark.django_db
def test_view_only_staff_sees_the_panel_but_not_the_action(client: Client) -> None:
    photo = Photo.objects.create()
    make_source(photo, renditions=1)
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_photo", content_type__app_label="testapp")
    )
    client.force_login(user)

    response = client.get(reverse("admin:testapp_photo_change", args=[photo.pk]))
    assert response.status_code == 200
    assert "width-100|format-webp" in response.content.decode()
    response = client.get(PHOTOS_URL)
    assert response.status_code == 200
    assert "regenerate_renditions" not in response.content.decode()
    assert client.get(SOURCES_URL).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_source"))
    response = client.get(SOURCES_URL)
    assert response.status_code == 200
    assert "regenerate_renditions" not in response.content.decode()
    user.user_permissions.add(Permission.objects.get(codename="change_source"))
    assert "regenerate_renditions" in client.get(SOURCES_URL).content.decode()


@pytest.mark.django_db
def test_superuser_sees_the_action(admin_client: Client) -> None:
    make_source(Photo.objects.create())
    assert "regenerate_renditions" in admin_client.get(PHOTOS_URL).content.decode()
    assert "regenerate_renditions" in admin_client.get(SOURCES_URL).content.decode()
