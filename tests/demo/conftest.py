"""Fixtures of the demo tests: the services check, and HTML read back as tags.

The real worker is tests/live_worker.py's, loaded for the whole run.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.live_worker import WorkerTracker

__all__ = ["Cards", "WorkerTracker", "srcset_urls"]


@pytest.fixture(autouse=True)
def _services(services: None) -> None:
    """Skip (or, services required, fail) every test here when Redis or the database is down."""


class Cards(HTMLParser):
    """A demo page read back: each photo's state, and the `<picture>` markup of each photo.

    `states`: data-photo -> data-state of the elements carrying both (a gallery card, the
    detail page's section). `sources`: data-photo -> [(type, srcset)] of the `<source>`s in
    its `<picture>`. `images`: data-photo -> attributes of its `<img>`.
    """

    def __init__(self, html: str) -> None:
        super().__init__()
        self.states: dict[str, str] = {}
        self.sources: dict[str, list[tuple[str, str]]] = {}
        self.images: dict[str, dict[str, str]] = {}
        self.links: list[str] = []
        self._photo: str | None = None
        self._in_picture = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "data-photo" in values and "data-state" in values:
            self._photo = values["data-photo"]
            self.states[self._photo] = values["data-state"]
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        if tag == "picture":
            self._in_picture = True
        elif tag == "source" and self._in_picture and self._photo is not None:
            self.sources.setdefault(self._photo, []).append(
                (values.get("type", ""), values.get("srcset", ""))
            )
        elif tag == "img" and "data-photo" in values:
            self.images[values["data-photo"]] = values

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture":
            self._in_picture = False


def srcset_urls(srcset: str) -> list[str]:
    """The URLs of a `srcset` attribute (`URL 480w, URL 960w`)."""
    return [candidate.split()[0] for candidate in srcset.split(",") if candidate.strip()]
