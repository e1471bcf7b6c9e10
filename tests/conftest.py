"""Fixtures shared by every test: where the image corpus is and what its manifest says."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

# The real Celery worker and its helpers, registered once for the whole run (see that module).
pytest_plugins = ("tests.live_worker",)

CORPUS_ENV = "RENDITION_WORKER_CORPUS"
REQUIRE_SERVICES_ENV = "RENDITION_WORKER_REQUIRE_SERVICES"


def corpus_path() -> Path:
    """The corpus folder: `$RENDITION_WORKER_CORPUS`, else `../shared/corpus` beside the project."""
    override = os.environ.get(CORPUS_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


def read_manifest(corpus: Path) -> list[dict[str, str]]:
    """The rows of the corpus's MANIFEST.csv, one dict per file."""
    with (corpus / "MANIFEST.csv").open(newline="", encoding="utf-8") as manifest:
        return list(csv.DictReader(manifest))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The image corpus folder; skips the test without it (fails if services are required)."""
    path = corpus_path()
    if not (path / "MANIFEST.csv").is_file():
        reason = (
            f"../shared/corpus is not there: no MANIFEST.csv in {path} (put the shared image "
            f"corpus beside the project or point {CORPUS_ENV} at it)"
        )
        if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_SERVICES_ENV}=1 makes it required", pytrace=False)
        pytest.skip(reason)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the corpus, so that `-m "not corpus"` leaves them out."""
    for item in items:
        if "corpus" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.corpus)
