"""Fixtures of the browser tests: the demo site on loopback, headless Chromium, the demo's sets.

The site is the demo's own URLconf, served by Django's threaded live server on 127.0.0.1,
media included: the demo's `media` view serves them, as `rendition-worker demo` does. The
renditions are made by the real Celery worker of tests/live_worker.py. The browser is
Debian's Chromium (installed by .ci/run), never Playwright's own download.
"""

from __future__ import annotations

import runpy
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test.testcases import LiveServerThread
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.live_worker import SERVICES_REQUIRED, WorkerTracker

T = TypeVar("T")
# Debian's package puts it at /usr/bin/chromium.
CHROMIUM = "chromium"
# Headless and quiet: no GPU, no first-run UI, nothing fetched from the network besides the
# pages under test (no QUIC, updates, sync or background requests).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Chromium:
    """Headless Chromium driven from a thread of its own.

    Playwright's sync API keeps an asyncio loop running in the thread that uses it, and
    Django refuses ORM calls in a thread with a running loop; so the test's thread never
    touches Playwright: it hands functions of the browser to `run`.
    """

    def __init__(self, path: str) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._thread.submit(self._launch, path).result()

    def _launch(self, path: str) -> None:
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(browser, *args)` in the browser's thread; its result or its exception."""
        assert self._browser is not None
        return self._thread.submit(function, self._browser, *args).result()

    def close(self) -> None:
        """Close the browser and stop Playwright, in their thread."""

        def stop() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        try:
            self._thread.submit(stop).result()
        finally:
            self._thread.shutdown()


@pytest.fixture(autouse=True)
def _services(services: None) -> None:
    """Skip (or, services required, fail) every test here when Redis or the database is down."""


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Headless Debian Chromium for the session; skips without it (fails if CI requires it)."""
    path = shutil.which(CHROMIUM)
    if path is None:
        reason = "no `chromium` on PATH (apt-get install chromium, as .ci/run does)"
        if SERVICES_REQUIRED:
            pytest.fail(f"{reason}; RENDITION_WORKER_REQUIRE_SERVICES=1 makes it required")
        pytest.skip(reason)
    browser = Chromium(path)
    try:
        yield browser
    finally:
        browser.close()


class DemoHandler(WSGIHandler):
    """Django alone, for LiveServerThread's `static_handler`: every URL goes to the URLconf.

    LiveServerThread hands it Django wrapped in a handler that serves MEDIA_URL from
    MEDIA_ROOT by itself; that wrapper is dropped so that the demo's own `media` view (and
    its Cache-Control) serves the files, as it does in `rendition-worker demo`.
    """

    def __init__(self, wrapped: object) -> None:
        super().__init__()


@pytest.fixture(scope="session")
def demo_server(django_db_setup: None) -> Iterator[str]:
    """Django's threaded live server on 127.0.0.1 for the session; yields its base URL."""
    thread = LiveServerThread("127.0.0.1", static_handler=DemoHandler)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    try:
        yield f"http://127.0.0.1:{thread.port}"
    finally:
        thread.terminate()


@pytest.fixture(scope="session")
def demo_renditions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's own RENDITION_WORKER setting, read from rendition_worker.demo.settings.

    The module is run in a namespace of its own (it is not imported: tests.settings stays the
    settings) with its environment pointing into a temporary folder, so that reading it
    creates no demo home, secret or broker folders in the working directory.
    """
    variables = {
        "RENDITION_WORKER_DEMO_HOME": str(tmp_path_factory.mktemp("demo-home")),
        "DJANGO_SECRET_KEY": "tests-only",
        "CELERY_BROKER_URL": "memory://",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        namespace = runpy.run_module("rendition_worker.demo.settings")
    setting: dict[str, Any] = namespace["RENDITION_WORKER"]
    return setting


@pytest.fixture
def demo_site(
    worker: WorkerTracker,
    demo_server: str,
    demo_renditions: dict[str, Any],
    settings: Any,
) -> str:
    """The demo site with the demo's sets, rendered by the test worker; returns its base URL."""
    from django.conf import settings as django_settings

    settings.ROOT_URLCONF = "rendition_worker.demo.urls"
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.RENDITION_WORKER = {
        **django_settings.RENDITION_WORKER,
        "SETS": demo_renditions["SETS"],
        "FIELDS": demo_renditions["FIELDS"],
    }
    return demo_server


@pytest.fixture
def photo_file(corpus: Path) -> Path:
    """A real camera photo wider than the demo's widest rendition (2725 x 2225 JPEG)."""
    return corpus / "photos" / "photo-flickr-2725x2225.jpg"
