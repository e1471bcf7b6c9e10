"""The admin's focal point widget in headless Chromium: drag a box, click a point, clear, save.

A real photo row rendered by the real worker; the admin change page served by the live
server; the pointer moved by Chromium's own input events. What the browser shows is read
back from the page, and what it saved from the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Browser

import rendition_worker
from rendition_worker.models import Rendition, Source, State
from tests.browser.conftest import Chromium
from tests.django.test_focal import THUMB, marked_jpeg, red_share
from tests.live_worker import WorkerTracker, upload, wait_for, wait_idle
from tests.testapp.models import Photo

HERO_AND_THUMB = 7
# Where the widget's state is read from: the hidden input and the drawn box, in percent.
READ_WIDGET = """
() => {
  const input = document.querySelector('input[name="image_focal_point"]');
  const box = document.querySelector("[data-rw-focal-box]");
  const image = document.querySelector("[data-rw-focal-image]");
  return {
    value: input.value,
    hidden: box.hidden,
    style: box.getAttribute("style") || "",
    loaded: image.complete && image.naturalWidth > 0,
    src: image.currentSrc,
  };
}
"""


@pytest.fixture
def admin_page(
    worker: WorkerTracker, demo_server: str, settings: Any
) -> tuple[str, dict[str, str]]:
    """The test site's admin on the live server; the session cookie of a logged-in superuser."""
    settings.ROOT_URLCONF = "tests.browser.admin_urls"
    settings.STATIC_URL = "/static/"
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    user = User.objects.create_superuser("admin", "admin@example.com", "-")
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    return demo_server, {"name": cookie.key, "value": cookie.value, "url": demo_server}


def drag_click_clear(browser: Browser, url: str, cookie: dict[str, str]) -> dict[str, Any]:
    """Drag a box from (10%, 20%) to (40%, 80%) of the image, save; then click, then clear."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        context.add_cookies([cookie])  # type: ignore[list-item]
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("() => document.querySelector('[data-rw-focal-image]').complete")
        found: dict[str, Any] = {"initial": page.evaluate(READ_WIDGET)}
        frame = page.locator("[data-rw-focal-image]").bounding_box()
        assert frame is not None
        left, top, width, height = frame["x"], frame["y"], frame["width"], frame["height"]
        page.mouse.move(left + 0.1 * width, top + 0.2 * height)
        page.mouse.down()
        page.mouse.move(left + 0.25 * width, top + 0.5 * height, steps=4)
        page.mouse.move(left + 0.4 * width, top + 0.8 * height, steps=4)
        page.mouse.up()
        found["dragged"] = page.evaluate(READ_WIDGET)
        with page.expect_navigation():
            page.click('input[name="_continue"]')
        found["saved"] = page.evaluate(READ_WIDGET)
        # The page came back with a message above the form: the image has moved.
        frame = page.locator("[data-rw-focal-image]").bounding_box()
        assert frame is not None
        left, top, width, height = frame["x"], frame["y"], frame["width"], frame["height"]
        page.mouse.click(left + 0.5 * width, top + 0.5 * height)
        found["clicked"] = page.evaluate(READ_WIDGET)
        page.click("[data-rw-focal-clear]")
        found["cleared"] = page.evaluate(READ_WIDGET)
        found["image_size"] = (width, height)
        return found
    finally:
        context.close()


def numbers(value: str) -> list[float]:
    return [float(part) for part in value.split(",")]


def test_a_person_drags_the_focal_box_on_the_image_and_the_crops_follow(
    admin_page: tuple[str, dict[str, str]],
    chromium: Chromium,
    worker: WorkerTracker,
    settings: Any,
) -> None:
    base, cookie = admin_page
    data = marked_jpeg((1200, 400), (980, 120, 1140, 280))
    photo = Photo.objects.create(title="mark", image=upload(data))
    wait_for(lambda: rendition_worker.get_status(photo.image).state == "ready", what="ready")
    wait_idle(worker)
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    old_crop = Rendition.objects.get(source=source, spec=THUMB).name
    # Placed automatically, the crop holds the red mark at the right end.
    assert red_share((Path(settings.MEDIA_ROOT) / old_crop).read_bytes()) > 0.1

    url = base + reverse("admin:testapp_photo_change", args=[photo.pk])
    found = chromium.run(drag_click_clear, url, cookie)

    assert found["initial"]["value"] == ""
    assert found["initial"]["hidden"] is True
    assert found["initial"]["loaded"], found["initial"]
    # The widget shows a rendition (width-320), not the 1200 px original.
    assert "/media/renditions/" in found["initial"]["src"]
    dragged = numbers(found["dragged"]["value"])
    assert dragged == pytest.approx([0.1, 0.2, 0.3, 0.6], abs=0.01)
    assert found["dragged"]["hidden"] is False
    # Saved: the page comes back with the box the database now holds.
    recorded = Source.objects.get(pk=source.pk).focal_point
    assert recorded == pytest.approx(dragged, abs=1e-4)
    assert numbers(found["saved"]["value"]) == pytest.approx(dragged, abs=1e-4)
    assert "left:" in found["saved"]["style"]
    # A click makes a small box around the point; Clear empties it (not saved here).
    assert numbers(found["clicked"]["value"]) == pytest.approx([0.45, 0.45, 0.1, 0.1], abs=0.01)
    assert found["cleared"]["value"] == "" and found["cleared"]["hidden"] is True

    # The worker renders the crop again, on the box: away from the red mark at the right.
    def recropped() -> bool:
        row = Rendition.objects.get(source=source, spec=THUMB)
        state = Source.objects.get(pk=source.pk).state
        return row.name != old_crop and row.state == State.READY and state == State.READY

    wait_for(recropped, what="the crop on the new focal point")
    wait_idle(worker)
    new_crop = Rendition.objects.get(source=source, spec=THUMB).name
    assert red_share((Path(settings.MEDIA_ROOT) / new_crop).read_bytes()) == 0
