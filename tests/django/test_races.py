"""Races, against the real worker on Redis and real files: what DESIGN.md promises under load.

Rapid replacements from threads and processes, many rows saved at once, late and
duplicated tasks, and a storage that overwrites a name in place. Renders are counted where
they start: the worker opens a source once per render, after winning its claim and before
decoding (`race_support.CountingStorage` counts the opens per name and content).
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from rendition_worker import tasks
from rendition_worker.conf import get_settings
from rendition_worker.core.naming import parse_rendition_name, source_key
from rendition_worker.core.planner import SourceRef
from rendition_worker.models import Rendition, Source, State, Tombstone
from rendition_worker.services.generation import TransientError, source_generate
from tests import live_worker
from tests.django.race_support import (
    READS,
    ROOT,
    FinishingStorage,
    TaskLog,
    run_writer,
    storages_setting,
    version_bytes,
    writer_command,
    writer_environment,
)
from tests.live_worker import WorkerTracker, digest, media_files, upload, wait_for, wait_idle
from tests.testapp.models import Photo

HERO_AND_THUMB = 7  # hero: 2 widths x 3 formats, thumb: 1 spec
WRITER_PROCESSES = 3
WRITER_THREADS = 2
REPLACEMENTS_PER_WRITER = 4  # 5 writers x 4 = 20 replacements


@pytest.fixture
def counted(worker: WorkerTracker, settings: Any) -> Iterator[TaskLog]:
    """Sources read through `CountingStorage`; the generate tasks' arguments and summaries."""
    settings.STORAGES = storages_setting()
    READS.clear()
    log = TaskLog().connect()
    yield log
    log.disconnect()


def key_of(photo: Photo, content_digest: str) -> str:
    """The key naming every rendition of `photo`'s image with that content."""
    return source_key(SourceRef("testapp.photo", str(photo.pk), "image").identity, content_digest)


def rendition_files(root: str) -> set[str]:
    return media_files(root, "renditions/")


def keys_on_storage(root: str) -> set[str | None]:
    """The source key of every file under renditions/ (None: not a name of ours)."""
    parsed = (parse_rendition_name(name, "renditions") for name in rendition_files(root))
    return {name.source_key if name is not None else None for name in parsed}


def ready_version(photo: Photo, content: bytes, count: int = HERO_AND_THUMB) -> list[Rendition]:
    """Wait until `photo` is ready with `count` renditions made from exactly `content`."""
    return live_worker.ready_version(photo, content, count)


def drained(worker: WorkerTracker) -> None:
    """Wait until no stale file waits for deletion and the worker is idle."""
    wait_for(lambda: not Tombstone.objects.exists(), what="the stale files to be deleted")
    wait_idle(worker)


def reconcile(*flags: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("renditions", "reconcile", "--json", *flags, stdout=out)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def in_threads(jobs: list[Callable[[], Any]], go: Path | None = None) -> list[Any]:
    """Run the jobs in threads started together (with the processes waiting for `go`).

    Returns their results; raises the first error.
    """
    start = threading.Event()
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[], Any]) -> None:
        try:
            start.wait(60)
            results[index] = job()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection; PostgreSQL must drop the db

    threads = [threading.Thread(target=run, args=item) for item in enumerate(jobs)]
    for thread in threads:
        thread.start()
    if go is not None:
        go.touch()
    start.set()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), "a writer thread hangs"
    return results


def test_rapid_replacements_from_threads_and_processes(
    worker: WorkerTracker, counted: TaskLog, settings: Any, tmp_path: Path
) -> None:
    first_bytes = version_bytes(4000)
    photo = Photo.objects.create(image=upload(first_bytes, "first.jpg"))
    first = photo.image.name
    # Writer processes reach this test's database, media folder, queue and cache.
    environment = writer_environment(
        database=str(connection.settings_dict["NAME"]),
        media_root=settings.MEDIA_ROOT,
        queue=django_settings.TEST_QUEUE,
        overrides={"CACHES": django_settings.CACHES},
    )
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{writer}" for writer in range(WRITER_PROCESSES)]
    processes = [
        subprocess.Popen(
            writer_command(photo.pk, writer, REPLACEMENTS_PER_WRITER, ready[writer], go),
            env=environment,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for writer in range(WRITER_PROCESSES)
    ]
    try:

        def processes_ready() -> bool:
            for process in processes:
                if process.poll() is not None:
                    _, err = process.communicate()
                    pytest.fail(f"a writer process exited early: {err.decode()[-2000:]}")
            return all(path.exists() for path in ready)

        wait_for(processes_ready, what="the writer processes to start")
        jobs: list[Callable[[], list[str]]] = [
            lambda writer=writer: run_writer(photo.pk, writer, REPLACEMENTS_PER_WRITER)
            for writer in range(WRITER_PROCESSES, WRITER_PROCESSES + WRITER_THREADS)
        ]
        thread_names = in_threads(jobs, go)
        process_names = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err.decode()[-2000:]
            process_names.append(json.loads(out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    written = [name for names in thread_names + process_names for name in names]
    assert len(written) == len(set(written)) == 20
    photo.refresh_from_db()
    last = photo.image.name
    assert last in written
    last_bytes = (Path(settings.MEDIA_ROOT) / last).read_bytes()
    rows = ready_version(photo, last_bytes)
    drained(worker)

    # Only the last image's renditions exist, as rows and as files, and nothing else does.
    assert {row.source_name for row in rows} == {last}
    assert Rendition.objects.count() == HERO_AND_THUMB and Source.objects.count() == 1
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    assert keys_on_storage(settings.MEDIA_ROOT) == {key_of(photo, digest(last_bytes))}
    # Every replaced original is gone (and no temporary file of any writer is left).
    assert media_files(settings.MEDIA_ROOT) == {last} | {row.name for row in rows}
    assert not {first, *written} - {last} & media_files(settings.MEDIA_ROOT)
    # Each version rendered at most once; the last exactly once.
    reads = READS.snapshot()
    assert max(reads.values()) == 1, reads
    assert READS.of(last) == 1
    assert counted.statuses(last).count("ready") == 1, counted.statuses(last)
    rendered = sorted(name for name, _ in reads)
    print(f"\nraces: 21 versions, {len(rendered)} rendered (once each), last {last}: {rendered}")


def test_many_rows_saved_at_once_all_reach_ready_once(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    threads, per_thread, bulk = 2, 10, 10
    contents = {seed: version_bytes(seed) for seed in range(threads * per_thread + bulk)}

    def create(writer: int) -> list[str]:
        seeds = range(writer * per_thread, (writer + 1) * per_thread)
        return [
            Photo.objects.create(image=upload(contents[seed], f"t{seed}.jpg")).image.name
            for seed in seeds
        ]

    def bulk_create() -> list[str]:
        # bulk_create sends no signal: only the reconciliation finds these rows.
        names = [
            default_storage.save(f"photos/bulk{seed}.jpg", ContentFile(contents[seed]))
            for seed in range(threads * per_thread, threads * per_thread + bulk)
        ]
        Photo.objects.bulk_create([Photo(image=name) for name in names])
        return names

    def reconcile_meanwhile() -> list[dict[str, Any]]:
        return [reconcile() for _ in range(3)]

    jobs: list[Callable[[], Any]] = [lambda w=w: create(w) for w in range(threads)]
    jobs += [bulk_create, reconcile_meanwhile]
    results = in_threads(jobs)
    originals = {name for names in results[: threads + 1] for name in names}
    assert len(originals) == threads * per_thread + bulk
    reconcile()  # as beat would, after the bulk rows committed

    total = len(originals) * HERO_AND_THUMB
    wait_for(
        lambda: (
            Source.objects.filter(state=State.READY).count() == len(originals)
            and Rendition.objects.filter(state=State.READY).count() == total
        ),
        what=f"{len(originals)} sources with {total} renditions",
    )
    drained(worker)

    names = list(Rendition.objects.values_list("name", flat=True))
    assert len(names) == len(set(names)) == total
    assert rendition_files(settings.MEDIA_ROOT) == set(names)
    assert media_files(settings.MEDIA_ROOT, "photos/") == originals
    assert sorted(Source.objects.values_list("name", flat=True)) == sorted(originals)
    # Every row rendered exactly once, whichever of its tasks (signal or reconcile) won.
    reads = READS.snapshot()
    assert sorted(name for name, _ in reads) == sorted(originals)
    assert set(reads.values()) == {1}, reads
    assert all(counted.statuses(name).count("ready") == 1 for name in originals)
    # And the reconciliation now finds nothing to do.
    report = reconcile("--dry-run")
    assert report["sources"] == len(originals)
    nothing_to_do = ("missing", "obsolete", "broken", "orphans", "enqueued")
    assert {key: report[key] for key in nothing_to_do} == dict.fromkeys(nothing_to_do, 0)
    tasks_run = sum(len(counted.statuses(name)) for name in originals)
    print(f"\nraces: {len(originals)} rows, {tasks_run} generate tasks, {len(reads)} renders")


def send_generate(photo: Photo, name: str, **flags: bool) -> None:
    """Publish `rendition_worker.generate` through Redis, with its real signature."""
    kwargs: dict[str, Any] = {
        "model": "testapp.photo",
        "object_id": str(photo.pk),
        "field": "image",
        "name": name,
        "force": False,
        "retry_failed": False,
        "overwritten": False,
        "retired_original": False,
        **flags,
    }
    tasks.generate.apply_async(kwargs=kwargs, queue=get_settings().queue)


def test_late_and_duplicate_tasks_write_nothing_old_and_render_new_once(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    older_bytes, newer_bytes = version_bytes(1), version_bytes(2)
    photo = Photo.objects.create(image=upload(older_bytes, "older.jpg"))
    older_rows = ready_version(photo, older_bytes)
    older = photo.image.name
    photo.image = upload(newer_bytes, "newer.jpg")  # type: ignore[assignment]
    photo.save()
    newer = photo.image.name
    # Redeliveries and a slow queue: the older version's task after the newer one's,
    # duplicates of both, one of them forced (as `renditions generate --force` sends).
    for name in (older, newer, older, newer, older, newer):
        send_generate(photo, name)
    send_generate(photo, older, force=True)
    rows = ready_version(photo, newer_bytes)
    drained(worker)

    assert counted.statuses(older) == ["ready"] + ["stale"] * 4
    newer_statuses = counted.statuses(newer)
    assert len(newer_statuses) == 4 and newer_statuses.count("ready") == 1, newer_statuses
    assert set(newer_statuses) <= {"ready", "done", "claimed"}
    # Nothing rendered again. The save's own task says the file is a new upload: when a
    # duplicate pointed the state at it first, that task reads it once to compare the bytes.
    assert READS.of(older) == 1 and READS.of(newer) in {1, 2}
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    assert keys_on_storage(settings.MEDIA_ROOT) == {key_of(photo, digest(newer_bytes))}
    assert not {row.name for row in older_rows} & media_files(settings.MEDIA_ROOT)
    assert media_files(settings.MEDIA_ROOT, "photos/") == {newer}
    assert not Rendition.objects.exclude(source_name=newer).exists()


def test_same_name_overwritten_in_place_is_rendered_again(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    settings.STORAGES = storages_setting(allow_overwrite=True)
    before, after = version_bytes(10), version_bytes(11)
    photo = Photo.objects.create(image=upload(before, "same.jpg"))
    name = photo.image.name
    old_rows = ready_version(photo, before)
    photo.image = upload(after, "same.jpg")  # type: ignore[assignment]
    photo.save()
    assert photo.image.name == name  # overwritten in place, as with S3's file_overwrite
    rows = ready_version(photo, after)
    drained(worker)

    assert (Path(settings.MEDIA_ROOT) / name).read_bytes() == after  # never deleted
    assert media_files(settings.MEDIA_ROOT, "photos/") == {name}
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    assert not {row.name for row in old_rows} & {row.name for row in rows}
    assert keys_on_storage(settings.MEDIA_ROOT) == {key_of(photo, digest(after))}
    assert READS.of(name, digest(before)) == 1 and READS.of(name, digest(after)) == 1


def overwritten_twice(
    worker: WorkerTracker, counted: TaskLog, settings: Any, seed: int
) -> tuple[Photo, bytes]:
    """A photo whose image was overwritten in place, ready; then its task delivered again."""
    settings.STORAGES = storages_setting(allow_overwrite=True)
    before, after = version_bytes(seed), version_bytes(seed + 1)
    photo = Photo.objects.create(image=upload(before, "again.jpg"))
    name = photo.image.name
    ready_version(photo, before)
    photo.image = upload(after, "again.jpg")  # type: ignore[assignment]
    photo.save()
    assert photo.image.name == name
    ready_version(photo, after)
    drained(worker)
    # acks_late: a worker lost after it finished, before the ack, gets the task again.
    delivered = len(counted.statuses(photo.image.name))
    send_generate(photo, photo.image.name, overwritten=True)
    wait_for(
        lambda: len(counted.statuses(photo.image.name)) > delivered,
        timeout=10,
        what=f"the redelivered task (after {counted.statuses(photo.image.name)})",
    )
    drained(worker)
    return photo, after


def rendition_names(source: Source) -> set[str]:
    """The file names of every rendition row of `source`."""
    return set(Rendition.objects.filter(source=source).values_list("name", flat=True))


def overwrite_task(photo: Photo, name: str) -> dict[str, Any]:
    """Run, in this process, the generate task a new upload of `name` sends (overwritten)."""
    return source_generate("testapp.photo", str(photo.pk), "image", name, overwritten=True)


def test_redelivered_overwrite_task_deletes_no_referenced_file(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    photo, after = overwritten_twice(worker, counted, settings, seed=30)
    rows = list(Rendition.objects.filter(state=State.READY))
    assert len(rows) == HERO_AND_THUMB
    assert {row.source_name for row in rows} == {photo.image.name}
    # Every ready rendition's file is there: a page may reference each of them.
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    assert keys_on_storage(settings.MEDIA_ROOT) == {key_of(photo, digest(after))}


def test_redelivered_overwrite_task_renders_nothing(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    photo, after = overwritten_twice(worker, counted, settings, seed=40)
    # Done at once: nothing retired, decoded or written again.
    assert counted.summaries(photo.image.name)[-1] == {"status": "done", "retired": 0}
    # The file is read once more, to compare its bytes: a redelivered task cannot tell an
    # upload of new bytes under the same name from its own first delivery otherwise.
    assert READS.of(photo.image.name, digest(after)) == 2


def test_a_storage_error_comparing_an_overwritten_file_is_retried(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    photo, after = overwritten_twice(worker, counted, settings, seed=50)
    settings.STORAGES = storages_setting("UnreadableStorage", allow_overwrite=True)
    # Retried with backoff like every storage error, never failed or left half-done.
    with pytest.raises(TransientError, match="injected read error"):
        overwrite_task(photo, photo.image.name)
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    assert (source.state, source.digest) == (State.READY, digest(after))
    assert Rendition.objects.filter(source=source, state=State.READY).count() == HERO_AND_THUMB


def test_an_overwrite_task_whose_bytes_were_finished_while_it_read_them_renders_nothing(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    photo, after = overwritten_twice(worker, counted, settings, seed=60)
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    ready = rendition_names(source)
    # A duplicate of the same upload is rendering when this task looks at the state, and
    # records it ready while this task reads the file to compare its bytes (CI saw this:
    # the version rendered twice, its first renditions retired).
    Source.objects.filter(pk=source.pk).update(state=State.PENDING)

    def duplicate_finishes() -> None:
        Source.objects.filter(pk=source.pk).update(state=State.READY)

    settings.STORAGES = storages_setting("FinishingStorage", allow_overwrite=True)
    FinishingStorage.when_opened = duplicate_finishes
    try:
        summary = overwrite_task(photo, photo.image.name)
    finally:
        FinishingStorage.when_opened = None
    assert summary == {"status": "done", "retired": 0}
    assert rendition_names(source) == ready
    assert rendition_files(settings.MEDIA_ROOT) == ready
    assert READS.of(photo.image.name, digest(after)) == 3  # the two tasks', and this compare


def test_an_overwrite_task_whose_bytes_were_finished_after_its_look_renders_nothing(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    older_bytes, newer_bytes = version_bytes(70), version_bytes(71)
    photo = Photo.objects.create(image=upload(older_bytes, "older.jpg"))
    ready_version(photo, older_bytes)
    drained(worker)
    # A new upload that no signal announced yet (update() sends none): the state row still
    # follows the older file when the save's task (overwritten) takes its look.
    newer = default_storage.save("photos/newer.jpg", ContentFile(newer_bytes))
    Photo.objects.filter(pk=photo.pk).update(image=newer)
    duplicate: dict[str, Any] = {}

    def duplicate_runs_after_the_look(execute: Any, sql: str, *args: Any) -> Any:
        # Right after the task's first look at the state row, a duplicate of the same
        # upload points the state at it and renders it to the end (once: the duplicate's
        # own queries pass through).
        result = execute(sql, *args)
        looks = sql.lstrip().upper().startswith("SELECT") and '"rendition_worker_source"' in sql
        if looks and not duplicate:
            duplicate["status"] = "running"
            duplicate.update(source_generate("testapp.photo", str(photo.pk), "image", newer))
        return result

    with connection.execute_wrapper(duplicate_runs_after_the_look):
        summary = overwrite_task(photo, newer)
    assert duplicate["status"] == "ready"
    assert summary == {"status": "done", "retired": 0}
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    rows = {row.name for row in Rendition.objects.filter(source=source, state=State.READY)}
    assert len(rows) == HERO_AND_THUMB and rendition_files(settings.MEDIA_ROOT) >= rows
    assert READS.of(newer) == 2  # this task's compare and the duplicate's render


def test_an_overwrite_task_keeps_what_a_duplicate_rendering_its_bytes_recorded(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    photo, after = overwritten_twice(worker, counted, settings, seed=80)
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    rows = rendition_names(source)
    # A duplicate of the same upload is mid-render: it pointed the state at the file (no
    # digest yet), holds the claim, and has recorded its renditions so far.
    Source.objects.filter(pk=source.pk).update(
        state=State.PENDING,
        digest="",
        claim="duplicate",
        claimed_until=timezone.now() + timedelta(minutes=5),
    )
    reads = READS.of(photo.image.name, digest(after))
    summary = overwrite_task(photo, photo.image.name)
    # Nothing retired: those names are what this render makes again, and a tombstone on
    # them deleted the files written after it (CI: ready rows whose files were gone).
    assert summary["retired"] == 0 and summary["renditions"] == 0, summary
    assert not Tombstone.objects.exists()
    assert rendition_names(source) == rows
    assert rendition_files(settings.MEDIA_ROOT) == rows
    assert READS.of(photo.image.name, digest(after)) == reads + 1  # the compare, reused


def test_same_name_back_before_the_worker_saw_the_change(
    worker: WorkerTracker, counted: TaskLog, settings: Any
) -> None:
    settings.STORAGES = storages_setting(allow_overwrite=True)
    first, other, again = version_bytes(20), version_bytes(21), version_bytes(22)
    photo = Photo.objects.create(image=upload(first, "same.jpg"))
    name = photo.image.name
    old_rows = ready_version(photo, first)
    # Replaced, then the same name uploaded again with new bytes, both committed before
    # the worker takes the first task (a busy queue): the old file's deletion is queued
    # while the name already holds the new upload.
    with transaction.atomic():
        photo.image = upload(other, "other.jpg")  # type: ignore[assignment]
        photo.save()
        other_name = photo.image.name
        photo.image = upload(again, "same.jpg")  # type: ignore[assignment]
        photo.save()
    assert photo.image.name == name
    drained(worker)  # both tasks ran: the worker has seen everything there is to see

    assert (Path(settings.MEDIA_ROOT) / name).read_bytes() == again  # the tombstone kept it
    source = Source.objects.get(object_id=str(photo.pk), field="image")
    assert (source.name, source.state, source.digest) == (name, State.READY, digest(again))
    rows = list(Rendition.objects.filter(source=source, state=State.READY))
    assert len(rows) == HERO_AND_THUMB
    assert media_files(settings.MEDIA_ROOT, "photos/") == {name}
    assert other_name not in media_files(settings.MEDIA_ROOT)
    assert rendition_files(settings.MEDIA_ROOT) == {row.name for row in rows}
    assert not {row.name for row in old_rows} & {row.name for row in rows}
    assert keys_on_storage(settings.MEDIA_ROOT) == {key_of(photo, digest(again))}
    assert READS.of(name, digest(again)) == 1
