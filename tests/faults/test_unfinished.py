"""kill -9 after the last rendition is recorded and before the source is marked done.

The kill lands in that window by a lock, not by a hook in the code: the test holds
`LOCK TABLE ... IN SHARE MODE` on the state table. Reading and locking rows (`SELECT ... FOR
UPDATE`, the foreign key checks of the rendition rows) go on under it; an UPDATE of the
table waits. Taken once the job is under way (claimed, its analysis recorded), the lock lets
the worker write and record every rendition and stops it at the one UPDATE left, the one
that marks the source ready. The test then kills the worker with SIGKILL. PostgreSQL ends
the orphaned statement itself (`client_connection_check_interval`) before the lock is given
back, so that the UPDATE never runs, as when the worker died before sending it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from django.core.files.base import ContentFile
from django.core.management import call_command

from rendition_worker.models import Rendition, Source, State
from tests.faults.conftest import (
    POSTGRES,
    Stage,
    WorkerProcess,
    claims_lapsed,
    original,
    postgres_admin,
    record_fault,
    stray_files,
    wait_until,
)
from tests.testapp.models import Photo

PHOTO = "photos/photo-iphone7-4032x3024.jpg"
# The README's hero set: about 1.6 s from the claim to the last rendition of PHOTO, a window
# the test's lock lands in well after the job is under way.
SETS = {
    "hero": {"widths": [640, 1280, 1920, 2560], "formats": ["avif", "webp", "jpeg"]},
    "thumb": {"specs": ["fill-64x64|format-webp"]},
}
SPECS = 13
FINISH = 'UPDATE "rendition_worker_source" SET "state" = \'ready\'%'
ATTEMPTS = 5


def state_of(photo: Photo) -> Source:
    """The state row of `photo`'s image."""
    return Source.objects.get(object_id=str(photo.pk), field="image")


def waiting_finish(database: str) -> list[int]:
    """The backends of `database` whose UPDATE marking a source ready waits on a lock."""
    rows = postgres_admin(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
        "AND query LIKE %s",
        database,
        FINISH,
    )
    return [pid for (pid,) in rows]


def kill_before_done(
    stage: Stage, worker: WorkerProcess, photo: Photo, under_way: Callable[[], bool]
) -> bool:
    """Lock the state table once `under_way()`, kill -9 the worker at the final UPDATE.

    False when the worker had marked the source ready before the lock was taken.
    """
    wait_until(under_way, "the worker to be rendering the source")
    with psycopg.connect(**{**POSTGRES, "dbname": stage.database}) as lock:
        lock.execute('LOCK TABLE "rendition_worker_source" IN SHARE MODE')
        blocked = wait_until(
            lambda: waiting_finish(stage.database) or state_of(photo).state == State.READY,
            "the worker to finish its renditions",
        )
        if blocked is True:
            lock.rollback()
            return False
        worker.kill()
        wait_until(
            lambda: not set(blocked) & set(waiting_finish(stage.database)),
            "PostgreSQL to end the killed worker's statement",
        )
        lock.rollback()
    return True


def status() -> dict[str, Any]:
    """`renditions status --json`."""
    out = io.StringIO()
    call_command("renditions", "status", "--json", stdout=out)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def test_kill_9_after_the_last_rendition_before_done_is_finished_by_the_next_run(
    stage: Stage, corpus: Path
) -> None:
    # Checked every 100 ms by the server, not only when a statement ends.
    postgres_admin(f'ALTER DATABASE "{stage.database}" SET client_connection_check_interval = 100')
    stage.configure(rendition_worker={"SETS": SETS})
    worker = stage.worker(concurrency=1)
    data = (corpus / PHOTO).read_bytes()
    photos: list[Photo] = []
    attempts = landed = 0
    notes = []

    # 1. A new source: its worker had recorded every rendition, not its digest.
    while not landed:
        attempts += 1
        assert attempts <= ATTEMPTS, f"no kill of {attempts - 1} landed before done"
        photo = Photo.objects.create(image=ContentFile(data, f"new{attempts}.jpg"))
        photos.append(photo)

        def analysed(photo: Photo = photo) -> bool:
            # Recorded under the claim before the first rendition: the last UPDATE but one.
            return (
                Source.objects.filter(object_id=str(photo.pk))
                .exclude(placeholder_color="")
                .exists()
            )

        if kill_before_done(stage, worker, photo, analysed):
            landed += 1
    new = state_of(photo)
    report = unfinished(stage, new, notes, "new")
    # Without a digest the names cannot be checked: every spec counts as missing.
    assert (report["missing"], report["enqueued"]) == (SPECS, 1)
    finish(worker, len(photos))

    # 2. A forced regenerate (`renditions generate --force`, the admin's regenerate) of a
    # ready source whose files were lost: the digest stays, so nothing counts as missing.
    for _ in range(ATTEMPTS):
        attempts += 1
        for name in Rendition.objects.filter(source=new).values_list("name", flat=True):
            (stage.media_root / name).unlink()
        call_command("renditions", "generate", "--force", stdout=io.StringIO())

        def claimed() -> bool:
            return state_of(photo).claim != ""

        if kill_before_done(stage, worker, photo, claimed):
            landed += 1
            break
        assert state_of(photo).state == State.READY
    else:
        raise AssertionError(f"no forced regenerate was killed before done in {ATTEMPTS}")
    report = unfinished(stage, state_of(photo), notes, "forced")
    assert (report["missing"], report["enqueued"]) == (0, 1)
    finish(worker, len(photos))

    originals = {original(photo) for photo in photos}
    leaked = stray_files(stage.media_root, originals)
    assert leaked == set()
    record_fault(
        "kill -9 after the last rendition, before done",
        injected=attempts,
        landed=landed,
        lost=0,
        leaked=len(leaked),
        note="; ".join(notes),
    )


def unfinished(stage: Stage, source: Source, notes: list[str], case: str) -> dict[str, Any]:
    """Check what a killed job left: every rendition ready, the source pending; reconcile."""
    source.refresh_from_db()
    assert source.state == State.PENDING and source.claim != ""
    rows = Rendition.objects.filter(source=source, source_name=source.name, state=State.READY)
    assert rows.count() == SPECS
    for name in rows.values_list("name", flat=True):
        assert (stage.media_root / name).is_file(), name
    assert status()["sources"]["pending"] == 1
    # No worker runs: nobody takes the reconciliation's task, nor the redelivered message.
    wait_until(claims_lapsed, "the killed worker's claim to lapse")
    report = stage.reconcile()
    notes.append(
        f"{case}: status pending 1, reconcile {report['missing']} missing, "
        f"{report['enqueued']} enqueued"
    )
    return report


def finish(worker: WorkerProcess, photos: int) -> None:
    """Start the worker again and wait until every source is ready with every rendition."""
    worker.start()
    wait_until(
        lambda: (
            Source.objects.filter(state=State.READY).count() == photos
            and Rendition.objects.filter(state=State.READY).count() == photos * SPECS
        ),
        "the next run to finish the source",
    )
    assert status()["sources"]["pending"] == 0
