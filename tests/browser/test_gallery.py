"""The demo gallery in headless Chromium: AVIF of the width srcset asks for, or the original.

The expected rendition is computed here, not read from the browser: the `sizes` attribute is
evaluated for the viewport, and the candidate picked as Chromium picks it from the `w`
descriptors and the device pixel ratio. The browser must then show exactly that AVIF file,
fetched as image/avif through the demo's media view, and decoded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import redis
from django.conf import settings as django_settings
from django.core.files import File
from PIL import Image
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError

import rendition_worker
from rendition_worker.conf import get_settings
from rendition_worker.demo.models import Photo
from tests.browser.conftest import Chromium
from tests.live_worker import WorkerTracker, wait_for, wait_idle

# CSS px per rem in media queries and lengths: the initial font size, 16px in Chromium.
REM = 16.0
# (viewport width in CSS px, device pixel ratio): a phone on the `100vw` branch of the
# gallery's `sizes`, and a high-density laptop on the `33vw` three-column branch.
VIEWPORTS = [(400, 1.0), (1280, 2.0)]

_CONDITION = re.compile(r"\(\s*(min|max)-width\s*:\s*([0-9.]+)(px|rem|em)\s*\)\s*(.*)")
_LENGTH = re.compile(r"([0-9.]+)(px|vw|rem|em)")

# Whether photo `pk`'s image has loaded: what `wait_for_function` polls for.
IMAGE_LOADED = """
(pk) => {
  const img = document.querySelector(`li.card[data-photo="${pk}"] img`);
  return Boolean(img && img.complete && img.currentSrc);
}
"""
# One call reads everything about a card's image, so that a reload between two reads (the
# page refreshes itself while a photo is pending) cannot mix two documents. `decode()`
# rejects if the file cannot be decoded. naturalWidth of a srcset image is divided by the
# candidate's density; a plain image of the same URL (from the memory cache) gives pixels.
READ_CARD = """
async (pk) => {
  const card = document.querySelector(`li.card[data-photo="${pk}"]`);
  const img = card.querySelector("img");
  await img.decode();
  const plain = new Image();
  plain.src = img.currentSrc;
  await plain.decode();
  const avif = card.querySelector('source[type="image/avif"]');
  return {
    state: card.dataset.state,
    currentSrc: img.currentSrc,
    naturalWidth: img.naturalWidth,
    pixelWidth: plain.naturalWidth,
    avifSrcset: avif ? avif.getAttribute("srcset") : null,
    avifSizes: avif ? avif.getAttribute("sizes") : null,
    innerWidth: window.innerWidth,
    devicePixelRatio: window.devicePixelRatio,
  };
}
"""


@dataclass(frozen=True)
class Card:
    """What the browser shows for one photo of the gallery."""

    state: str
    current_src: str
    natural_width: int
    pixel_width: int
    avif_srcset: str | None
    avif_sizes: str | None
    inner_width: int
    device_pixel_ratio: float


def css_length(text: str, viewport: float) -> float:
    """A `sizes` length (px, vw, rem, em) in CSS px for a viewport this wide."""
    match = _LENGTH.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"unsupported length {text!r} in sizes")
    number, unit = float(match[1]), match[2]
    if unit == "vw":
        return number * viewport / 100
    return number * REM if unit in {"rem", "em"} else number


def source_size(sizes: str, viewport: float) -> float:
    """The slot width `sizes` gives at this viewport: the first entry whose condition holds.

    Handles what the demo writes, `(min-width: ...)` / `(max-width: ...)` then a length, and
    refuses anything else rather than guess.
    """
    for entry in (part.strip() for part in sizes.split(",")):
        match = _CONDITION.fullmatch(entry)
        if match is None:
            return css_length(entry, viewport)
        kind, number, unit, length = match.groups()
        bound = float(number) * (REM if unit in {"rem", "em"} else 1.0)
        if (viewport >= bound) if kind == "min" else (viewport <= bound):
            return css_length(length, viewport)
    return viewport  # no entry matched: 100vw, as HTML says


def spec_pick(widths: Sequence[int], slot: float, dpr: float) -> int:
    """HTML's choice: the smallest candidate dense enough for the screen, else the largest."""
    return next((w for w in sorted(widths) if w / slot >= dpr), max(widths))


def chromium_pick(widths: Sequence[int], slot: float, dpr: float) -> int:
    """Chromium's choice (html_srcset_parser.cc, SelectionLogic) without a cached candidate.

    Between the last candidate below the density and the first one above it, Chromium
    takes the lower one when the density is under their geometric mean (and above 1x).
    """
    ordered = sorted(widths)
    densities = [w / slot for w in ordered]
    for i in range(len(ordered) - 1):
        if densities[i + 1] < dpr:
            continue
        mean = math.sqrt(densities[i] * densities[i + 1])
        if (dpr <= 1.0 and dpr > densities[i]) or dpr >= mean:
            return ordered[i + 1]
        return ordered[i]
    return ordered[-1]


def srcset_widths(srcset: str) -> dict[int, str]:
    """`URL 480w, URL 960w` as width -> URL."""
    candidates = {}
    for candidate in srcset.split(","):
        url, descriptor = candidate.split()
        candidates[int(descriptor.removesuffix("w"))] = url
    return candidates


@dataclass(frozen=True)
class Visit:
    """One photo's card as a fresh browser context shows it, and the responses it got."""

    card: Card
    # URL -> response headers (lower-case names).
    responses: dict[str, dict[str, str]]


def visit(browser: Browser, url: str, pk: int, width: int, dpr: float) -> Visit:
    """Open the gallery at a viewport in a fresh context (empty cache), read photo `pk`'s card.

    Runs in the browser's thread (`Chromium.run`). A gallery with a pending photo reloads
    itself every few seconds; a read that a reload interrupts is made again.
    """
    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=dpr)
    try:
        page = context.new_page()
        responses: dict[str, dict[str, str]] = {}
        page.on("response", lambda response: responses.__setitem__(response.url, response.headers))
        return Visit(read_card(page, url, pk), responses)
    finally:
        context.close()


def read_card(page: Page, url: str, pk: int) -> Card:
    """Load the gallery and read photo `pk`'s card once its image has loaded."""
    attempts = 5
    for attempt in range(attempts):
        page.goto(url)
        try:
            # Lazy images load near the viewport only: bring this one there.
            page.locator(f'li.card[data-photo="{pk}"] img').scroll_into_view_if_needed()
            page.wait_for_function(IMAGE_LOADED, arg=pk, timeout=30_000)
            values = page.evaluate(READ_CARD, pk)
        except PlaywrightError as exc:
            if "context was destroyed" not in str(exc) or attempt == attempts - 1:
                raise
            continue
        return Card(
            state=values["state"],
            current_src=values["currentSrc"],
            natural_width=values["naturalWidth"],
            pixel_width=values["pixelWidth"],
            avif_srcset=values["avifSrcset"],
            avif_sizes=values["avifSizes"],
            inner_width=values["innerWidth"],
            device_pixel_ratio=values["devicePixelRatio"],
        )
    raise AssertionError("unreachable: the last attempt returns or raises")


def test_ready_photo_shows_the_avif_srcset_selects(
    demo_site: str,
    demo_renditions: dict[str, Any],
    worker: WorkerTracker,
    chromium: Chromium,
    photo_file: Path,
) -> None:
    """At each viewport, currentSrc is the AVIF crop of the computed width, served and decoded."""
    with photo_file.open("rb") as content:
        photo = Photo.objects.create(title="ready", image=File(content, photo_file.name))
    wait_idle(worker, timeout=120)
    assert rendition_worker.get_status(photo.image).state == "ready"
    photo.refresh_from_db()
    # The gallery's cards are the `thumb` set's crops.
    thumb = {str(spec) for spec in get_settings().set_specs("demo.Photo.image", "thumb")}
    avif = {
        info.width: info
        for info in rendition_worker.get_renditions(photo.image).values()
        if info.spec in thumb and info.format == "avif"
    }
    widths = sorted(demo_renditions["SETS"]["thumb"]["widths"])
    assert len(widths) > 1, "one width leaves the browser nothing to choose"
    assert sorted(avif) == widths, "the photo is wider than every width: all must exist"
    renditions_prefix = urljoin(demo_site, f"{django_settings.MEDIA_URL}renditions/")

    for width, dpr in VIEWPORTS:
        seen = chromium.run(visit, demo_site + "/", photo.pk, width, dpr)
        card, responses = seen.card, seen.responses
        where = f"viewport {width}px at {dpr}x"
        assert (card.inner_width, card.device_pixel_ratio) == (width, dpr), where
        assert card.state == "ready", where
        assert card.avif_srcset is not None and card.avif_sizes is not None, where
        offered = srcset_widths(card.avif_srcset)
        assert sorted(offered) == widths, where
        slot = source_size(card.avif_sizes, width)
        expected = spec_pick(widths, slot, dpr)
        # Chromium departs from HTML's rule in some cases; these viewports avoid them.
        assert chromium_pick(widths, slot, dpr) == expected, f"{where}: ambiguous case"
        expected_url = urljoin(demo_site, avif[expected].url)
        assert card.current_src == expected_url, f"{where}: expected the {expected}w AVIF"
        assert card.natural_width > 0, f"{where}: not decoded"
        assert card.pixel_width == avif[expected].width, f"{where}: not the {expected}w file"
        headers = responses.get(expected_url)
        assert headers is not None, f"{where}: {expected_url} was not fetched"
        assert headers["content-type"] == "image/avif", where
        # The demo's media view marks renditions immutable: the file came through it.
        assert "immutable" in headers.get("cache-control", ""), where
        fetched = sorted(url for url in responses if url.startswith(renditions_prefix))
        assert fetched == [expected_url], f"{where}: only the chosen rendition is fetched"


def test_pending_photo_shows_its_original(
    demo_site: str, settings: Any, chromium: Chromium, photo_file: Path
) -> None:
    """A photo whose renditions are not made yet is shown as its original, decoded."""
    # Its task goes to a queue no worker consumes, so the photo stays pending.
    parked = f"{django_settings.TEST_QUEUE}-parked"
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "QUEUE": parked}
    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    try:
        with photo_file.open("rb") as content:
            photo = Photo.objects.create(title="pending", image=File(content, photo_file.name))
        wait_for(lambda: broker.llen(parked), 30, "the photo's task to be queued")
        seen = chromium.run(visit, demo_site + "/", photo.pk, *VIEWPORTS[0])
        assert rendition_worker.get_status(photo.image).state == "pending"
    finally:
        broker.delete(parked)
    original = urljoin(demo_site, photo.image.url)
    assert seen.card.state == "pending"
    assert seen.card.avif_srcset is None
    assert seen.card.current_src == original
    assert seen.card.natural_width > 0
    assert seen.card.pixel_width == Image.open(photo_file).width
    assert seen.responses[original]["content-type"] == "image/jpeg"
