"""Every hostile corpus file uploaded through the ORM and handled by the real worker.

For each file of ../shared/corpus/hostile/ the test saves it in a registered field, lets the
real Celery worker (real Redis, real database) process it, and holds the outcome to the
file's MANIFEST.csv row, read as tests/core/test_corpus.py reads it: `ok*` files become
ready with every rendition, the others are recorded as failed with a message naming the
problem and leave no rendition behind. After each, the worker must still render a normal
photo, no task may have crashed or been retried, and the original must be byte for byte
what was uploaded. The outcomes are tabled in pytest's terminal summary.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from celery import signals
from PIL import Image

from rendition_worker.core.specs import parse_spec
from rendition_worker.models import Rendition, Source, State
from tests.core.test_corpus import (
    REJECTIONS,
    expectation,
    expected_size,
    hostile_rows,
    upright_source_size,
)
from tests.live_worker import WorkerTracker, jpeg_bytes, media_files, upload, wait_idle
from tests.testapp.models import Photo

HERO_AND_THUMB = 7  # hero: 2 widths x 3 formats, thumb: 1 spec
# A 100 MP JPEG or a 12 MP AVIF takes seconds on a busy machine; this only bounds a hang.
SETTLE_TIMEOUT = 180
GENERATE = "rendition_worker.generate"
T = TypeVar("T")


@dataclass
class Outcome:
    """What happened to one hostile file, for the summary table."""

    file: str
    expected: str
    observed: str
    alive: bool
    intact: bool
    problems: list[str]


class OutcomeTable:
    """A pytest plugin object: collects outcomes and prints them in the terminal summary."""

    NAME = "rendition-worker-hostile-outcomes"

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print one line per file and the count per expected outcome."""
        if not self.outcomes:
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("-", "hostile uploads through the worker")
        width = max(len(outcome.file) for outcome in self.outcomes)
        for outcome in self.outcomes:
            verdict = "as expected" if not outcome.problems else "; ".join(outcome.problems)
            write(
                f"{outcome.file:<{width}}  {outcome.expected:<24}  {outcome.observed[:60]:<60}"
                f"  alive={'yes' if outcome.alive else 'NO'}"
                f"  intact={'yes' if outcome.intact else 'NO'}  {verdict}"
            )
        tried: Counter[str] = Counter(outcome.expected for outcome in self.outcomes)
        handled: Counter[str] = Counter(
            outcome.expected for outcome in self.outcomes if not outcome.problems
        )
        for expected in sorted(tried):
            write(f"{expected}: {handled[expected]}/{tried[expected]} handled as expected")
        write(f"total: {sum(handled.values())}/{sum(tried.values())} handled as expected")


@pytest.fixture(scope="module")
def outcome_table(request: pytest.FixtureRequest) -> OutcomeTable:
    """The session's outcome table, registered as a plugin so that it prints at the end."""
    plugins = request.config.pluginmanager
    table = plugins.get_plugin(OutcomeTable.NAME)
    if table is None:
        table = OutcomeTable()
        plugins.register(table, OutcomeTable.NAME)
    assert isinstance(table, OutcomeTable)
    return table


class TaskEvents:
    """The generate tasks the worker ran, retried or saw fail, by the row they were for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, str]] = []

    def connect(self) -> None:
        """Start recording."""
        signals.task_postrun.connect(self._postrun, weak=False)
        signals.task_retry.connect(self._retry, weak=False)
        signals.task_failure.connect(self._failure, weak=False)

    def disconnect(self) -> None:
        """Stop recording."""
        signals.task_postrun.disconnect(self._postrun)
        signals.task_retry.disconnect(self._retry)
        signals.task_failure.disconnect(self._failure)

    def _add(self, kind: str, kwargs: Any, detail: str) -> None:
        with self.lock:
            self.events.append((kind, str((kwargs or {}).get("object_id")), detail))

    def _postrun(
        self, task: Any = None, kwargs: Any = None, retval: Any = None, state: Any = None, **_: Any
    ) -> None:
        if getattr(task, "name", "") == GENERATE and state == "SUCCESS":
            self._add("ran", kwargs, str(retval.get("status")))

    def _retry(self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        if getattr(sender, "name", "") == GENERATE:
            self._add("retried", getattr(request, "kwargs", None), repr(reason))

    def _failure(
        self, sender: Any = None, kwargs: Any = None, exception: Any = None, **_: Any
    ) -> None:
        if getattr(sender, "name", "") == GENERATE:
            self._add("crashed", kwargs, repr(exception))

    def of(self, object_id: object) -> list[tuple[str, str]]:
        """(kind, detail) of every event for the row `object_id`."""
        with self.lock:
            return [(kind, detail) for kind, row, detail in self.events if row == str(object_id)]


@pytest.fixture
def task_events() -> Iterator[TaskEvents]:
    """Record the worker's generate runs, retries and crashes during one test."""
    events = TaskEvents()
    events.connect()
    yield events
    events.disconnect()


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def stored_name(photo: Photo) -> str:
    """The storage name of `photo`'s saved image."""
    name = photo.image.name
    assert name, f"photo {photo.pk} has no image"
    return name


def poll(condition: Callable[[], T | None], timeout: float = SETTLE_TIMEOUT) -> T | None:
    """Poll `condition` until it returns something truthy; None after `timeout` seconds.

    Unlike `wait_for`, a time-out returns, so that the outcome table still gets the row.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return value


def settled(photo: Photo, events: TaskEvents) -> Source | None:
    """`photo`'s state row once ready or failed, or once its task crashed or was retried."""
    source = Source.objects.filter(object_id=str(photo.pk), field="image").first()
    if source is not None and source.state in {State.READY, State.FAILED}:
        return source
    if any(kind != "ran" for kind, _ in events.of(photo.pk)):
        return source or Source(state=State.PENDING, error="no state row")
    return None


def follower_ready(photo: Photo) -> list[Rendition] | None:
    """The normal photo's renditions once every one is ready."""
    rows = list(
        Rendition.objects.filter(
            source__object_id=str(photo.pk), source__state=State.READY, state=State.READY
        )
    )
    return rows if len(rows) == HERO_AND_THUMB else None


def observed(source: Source, rows: list[Rendition]) -> str:
    """A short description of where the source ended up."""
    if source.state == State.READY:
        return f"ready, {len(rows)} renditions"
    if source.state == State.FAILED:
        return f"failed: {source.error}"
    return f"{source.state}: {source.error or 'no outcome'}"


def rendered_problems(
    path: Path, row: dict[str, str], source: Source, rows: list[Rendition], root: Path
) -> list[str]:
    """What is wrong with an `ok*` file's outcome: ready, every rendition right and stored."""
    if source.state != State.READY:
        return [f"expected ready, got {source.state}: {source.error}"]
    problems = []
    upright = upright_source_size(path, row)
    if (source.width, source.height) != upright:
        problems.append(f"source recorded {source.width}x{source.height}, not {upright}")
    if len(rows) != HERO_AND_THUMB or any(rendition.state != State.READY for rendition in rows):
        problems.append(f"{len(rows)} renditions, not {HERO_AND_THUMB} ready ones")
    for rendition in rows:
        want_width, want_height = expected_size(parse_spec(rendition.spec), upright)
        height = rendition.height or 0
        if rendition.width != want_width or not (height >= 1 and abs(height - want_height) <= 1):
            problems.append(
                f"{rendition.spec} is {rendition.width}x{height}, not {want_width}x{want_height}"
            )
        file = root / rendition.name
        if not file.is_file():
            problems.append(f"{rendition.spec}: {rendition.name} is not stored")
            continue
        with Image.open(file) as image:
            image.load()
            got = (str(image.format).lower(), image.size)
        if got != (rendition.format, (rendition.width, rendition.height)):
            problems.append(f"{rendition.spec}: the file is {got}, its row says otherwise")
    return problems


def refused_problems(expected: str, source: Source, rows: list[Rendition]) -> list[str]:
    """What is wrong with a `reject-*` file's outcome: failed, saying why, nothing rendered."""
    _, word = REJECTIONS[expected]
    problems = []
    if source.state != State.FAILED:
        problems.append(f"expected failed ({word}), got {source.state}")
    elif word not in source.error:
        problems.append(f"the error does not say {word!r}: {source.error!r}")
    if rows:
        problems.append(f"{len(rows)} rendition rows recorded for a refused source")
    return problems


@pytest.mark.parametrize("row", hostile_rows())
def test_hostile_upload_is_handled_and_the_worker_carries_on(
    corpus: Path,
    row: dict[str, str],
    worker: WorkerTracker,
    settings: Any,
    task_events: TaskEvents,
    outcome_table: OutcomeTable,
) -> None:
    path = corpus / row["file"]
    expected = expectation(row)
    data = path.read_bytes()
    assert sha256(data) == row["sha256"], "the corpus file is not the one the manifest lists"
    root = Path(settings.MEDIA_ROOT)

    photo = Photo.objects.create(image=upload(data, path.name))
    name = stored_name(photo)
    source = poll(lambda: settled(photo, task_events))
    # The worker still works: a normal photo uploaded afterwards gets every rendition.
    follower = Photo.objects.create(image=upload(jpeg_bytes(), "after-hostile.jpg"))
    follower_rows = poll(lambda: follower_ready(follower)) or []
    alive = bool(follower_rows)
    if source is not None and alive:
        wait_idle(worker)
    else:  # a hung worker: the table still gets this row, the fixture reports the hang
        source = source or Source(state=State.PENDING, error=f"not settled in {SETTLE_TIMEOUT} s")

    rows = list(Rendition.objects.filter(source__object_id=str(photo.pk)))
    stored = root / name
    intact = stored.is_file() and sha256(stored.read_bytes()) == row["sha256"]
    if expected in REJECTIONS:
        problems = refused_problems(expected, source, rows)
    else:
        problems = rendered_problems(path, row, source, rows, root)
    if not intact:
        problems.append(f"the original {name} was changed or deleted")
    if not alive:
        problems.append("the worker did not render the next photo")
    # Nothing half-made: exactly the files the rows of both photos record.
    expected_files = {rendition.name for rendition in [*rows, *follower_rows]}
    if media_files(root, "renditions/") != expected_files:
        problems.append("the renditions folder holds files no row records")
    runs = task_events.of(photo.pk)
    if runs != [("ran", "ready" if source.state == State.READY else "failed")]:
        problems.append(f"the generate task ran as {runs}, not once without retry or crash")
    outcome_table.outcomes.append(
        Outcome(path.name, expected, observed(source, rows), alive, intact, problems)
    )

    assert not problems, f"{path.name} ({expected}): {'; '.join(problems)}"
