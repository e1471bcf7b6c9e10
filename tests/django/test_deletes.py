"""Batched deletes: DeleteObjects on moto's real S3 server, per-file deletes elsewhere.

The default storage is django-storages' `S3Storage` on a fresh bucket of moto's server
(no worker: the services run in the test process, so that the requests their boto3 client
sends can be counted from its own event hooks). Keys fail for real: a bucket policy that
denies s3:DeleteObject on a prefix makes DeleteObjects list those keys under `Errors`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.core.management import call_command
from django.utils import timezone

from rendition_worker.models import Tombstone
from rendition_worker.services import deletion
from rendition_worker.services.deletion import files_delete
from rendition_worker.services.tombstones import RETRY_FAILED_AFTER, tombstones_delete
from tests.django.s3 import s3_bucket, s3_client, s3_endpoint, s3_storages

# The S3 fixtures are imported for pytest to find; exported so linters see them used.
__all__ = ["s3_bucket", "s3_endpoint"]

LOCATION = "media"
SHARD = "ab"
RETIRED = 3_000


@dataclass
class Bucket:
    """The default storage's bucket, and every delete request its client sent."""

    name: str
    client: Any
    batches: list[list[str]] = field(default_factory=list)  # keys of each DeleteObjects
    singles: list[str] = field(default_factory=list)  # key of each DeleteObject

    def keys(self, prefix: str = "") -> set[str]:
        """Every key under `prefix` (location included)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return {str(entry["Key"]) for page in pages for entry in page.get("Contents", ())}

    def put_many(self, names: list[str]) -> None:
        """One small object per storage name, concurrently (boto3 clients are thread-safe)."""

        def put(name: str) -> None:
            self.client.put_object(Bucket=self.name, Key=f"{LOCATION}/{name}", Body=b"x")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, names))

    def deny_deletes(self, prefix: str) -> None:
        """A bucket policy: nobody may delete the keys under `prefix` (location included)."""
        statement = {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:DeleteObject",
            "Resource": f"arn:aws:s3:::{self.name}/{prefix}*",
        }
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        self.client.put_bucket_policy(Bucket=self.name, Policy=json.dumps(policy))

    def allow_deletes(self) -> None:
        """Remove the bucket policy."""
        self.client.delete_bucket_policy(Bucket=self.name)


@pytest.fixture
def bucket(settings: Any, s3_endpoint: str, s3_bucket: str) -> Iterator[Bucket]:
    """Make a fresh bucket the default storage; observe the storage's delete requests."""
    settings.STORAGES = s3_storages(s3_endpoint, s3_bucket, LOCATION)
    observed = Bucket(s3_bucket, s3_client(s3_endpoint))

    def batch(params: dict[str, Any], **kwargs: Any) -> None:
        observed.batches.append([str(entry["Key"]) for entry in params["Delete"]["Objects"]])

    def single(params: dict[str, Any], **kwargs: Any) -> None:
        observed.singles.append(str(params["Key"]))

    # The storage's Bucket resource is shared by its threads: its client sends every request.
    events = _client(default_storage).meta.events
    events.register("before-parameter-build.s3.DeleteObjects", batch)
    events.register("before-parameter-build.s3.DeleteObject", single)
    yield observed
    events.unregister("before-parameter-build.s3.DeleteObjects", batch)
    events.unregister("before-parameter-build.s3.DeleteObject", single)


def _client(storage: Any) -> Any:
    return storage.bucket.meta.client


def rendition_names(count: int, shard: str = SHARD, stem: str = "stray") -> list[str]:
    """Names this app's naming scheme could have made, all in one shard folder."""
    return [
        f"renditions/{shard}/{shard}{index:014x}/{stem}.width-640.format-avif.1a2b3c4d.avif"
        for index in range(count)
    ]


def tombstone(names: list[str], kind: str = Tombstone.Kind.RENDITION) -> None:
    """Tombstones of `names` in the default storage, due now."""
    due = timezone.now() - timedelta(seconds=1)
    Tombstone.objects.bulk_create(
        Tombstone(storage="default", name=name, kind=kind, delete_after=due) for name in names
    )


def delete_all_due() -> list[dict[str, int]]:
    """Run the delete task's service until nothing is due, as its re-enqueued runs do."""
    summaries = [tombstones_delete()]
    while summaries[-1]["more"]:
        summaries.append(tombstones_delete())
    return summaries


def reconcile() -> tuple[dict[str, Any], str]:
    """`renditions reconcile --json` as an operator runs it: its report and its stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command("renditions", "reconcile", "--json", stdout=out, stderr=err)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report, err.getvalue()


def in_the_past(bucket: Bucket) -> None:
    """Wait until every object is older than now (S3 keeps whole seconds)."""
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    newest = max(entry["LastModified"] for page in pages for entry in page.get("Contents", ()))
    while datetime.now(UTC) <= newest:
        time.sleep(0.05)


@pytest.mark.django_db
def test_retiring_3000_files_takes_three_delete_requests(bucket: Bucket) -> None:
    names = rendition_names(RETIRED)
    bucket.put_many(names)
    tombstone(names)
    started = time.perf_counter()

    summaries = delete_all_due()
    seconds = time.perf_counter() - started
    print(f"{RETIRED} files retired in {len(bucket.batches)} requests, {seconds:.2f} s")

    assert len(bucket.batches) <= 3 and bucket.singles == []
    assert [len(keys) for keys in bucket.batches] == [1_000, 1_000, 1_000]
    # Every key once, with the storage's location applied.
    sent = [key for keys in bucket.batches for key in keys]
    assert sorted(sent) == sorted(f"{LOCATION}/{name}" for name in names)
    assert sum(summary["deleted"] for summary in summaries) == RETIRED
    assert sum(summary["failed"] for summary in summaries) == 0
    assert bucket.keys() == set()
    assert not Tombstone.objects.exists()


@pytest.mark.django_db
def test_reconcile_deletes_3000_orphans_of_one_folder_in_three_requests(
    bucket: Bucket, settings: Any
) -> None:
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "ORPHAN_GRACE": 0}
    orphans = rendition_names(RETIRED)
    bucket.put_many(orphans)
    in_the_past(bucket)

    report, _ = reconcile()

    assert report["orphans"] == report["deleted_files"] == RETIRED, report
    assert len(bucket.batches) <= 3 and bucket.singles == []
    assert bucket.keys() == set()


@pytest.mark.django_db
def test_keys_s3_refuses_are_retried_reported_and_kept_until_deleted(
    bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    free = rendition_names(990)
    locked = rendition_names(10, shard="cd", stem="locked")
    bucket.put_many(free + locked)
    bucket.deny_deletes(f"{LOCATION}/renditions/cd/")
    tombstone(free + locked)
    locked_keys = sorted(f"{LOCATION}/{name}" for name in locked)

    with caplog.at_level(logging.WARNING, logger=deletion.__name__):
        summary = tombstones_delete()

    # One request for the batch, then the refused keys alone, twice, before giving up.
    assert [len(keys) for keys in bucket.batches] == [1_000, 10, 10]
    assert sorted(bucket.batches[1]) == sorted(bucket.batches[2]) == locked_keys
    assert (summary["deleted"], summary["failed"], summary["more"]) == (990, 10, 0), summary
    assert bucket.keys() == set(locked_keys)
    # Still known: their tombstones stay, due again later (not at once, which would loop).
    kept = Tombstone.objects.all()
    assert sorted(kept.values_list("name", flat=True)) == sorted(locked)
    assert all(row.delete_after > timezone.now() for row in kept)
    later = timezone.now() + timedelta(seconds=RETRY_FAILED_AFTER)
    assert all(row.delete_after <= later for row in kept)
    warning = next(record for record in caplog.records if "could not delete" in record.message)
    assert "10 of 1000 files" in warning.message and "AccessDenied" in warning.message

    # The next run after the policy is lifted deletes them.
    bucket.allow_deletes()
    Tombstone.objects.update(delete_after=timezone.now() - timedelta(seconds=1))
    bucket.batches.clear()
    again = tombstones_delete()

    assert (again["deleted"], again["failed"]) == (10, 0), again
    assert [sorted(keys) for keys in bucket.batches] == [locked_keys]
    assert bucket.keys() == set()
    assert not Tombstone.objects.exists()


@pytest.mark.django_db
def test_a_key_refused_once_is_deleted_by_the_retry_of_the_same_call(bucket: Bucket) -> None:
    names = rendition_names(20)
    bucket.put_many(names)
    bucket.deny_deletes(f"{LOCATION}/renditions/{SHARD}/{SHARD}0000000000000")  # the first 16

    def lift(**kwargs: Any) -> None:
        # After the first answer, as a transient error would clear before the retry.
        if len(bucket.batches) == 1:
            bucket.allow_deletes()

    events = _client(default_storage).meta.events
    events.register("after-call.s3.DeleteObjects", lift)
    try:
        outcome = files_delete(default_storage, names)
    finally:
        events.unregister("after-call.s3.DeleteObjects", lift)

    assert [len(keys) for keys in bucket.batches] == [20, 16]
    assert (len(outcome.deleted), outcome.failed, outcome.requests) == (20, {}, 2)
    assert bucket.keys() == set()


@pytest.mark.django_db
def test_reconcile_reports_orphans_it_could_not_delete_and_the_next_run_deletes_them(
    bucket: Bucket, settings: Any
) -> None:
    settings.RENDITION_WORKER = {**settings.RENDITION_WORKER, "ORPHAN_GRACE": 0}
    free = rendition_names(30)
    locked = rendition_names(5, shard="cd", stem="locked")
    bucket.put_many(free + locked)
    bucket.deny_deletes(f"{LOCATION}/renditions/cd/")
    in_the_past(bucket)

    report, err = reconcile()

    assert (report["orphans"], report["deleted_files"]) == (35, 30), report
    assert "5 files could not be deleted" in err
    assert bucket.keys() == {f"{LOCATION}/{name}" for name in locked}

    bucket.allow_deletes()
    again, err = reconcile()

    assert (again["orphans"], again["deleted_files"]) == (5, 5), again
    assert err == ""
    assert bucket.keys() == set()


@pytest.mark.django_db
def test_a_name_outside_the_location_is_refused_without_a_request(bucket: Bucket) -> None:
    inside = rendition_names(2)
    bucket.put_many(inside)
    bucket.client.put_object(Bucket=bucket.name, Key="outside.txt", Body=b"keep")
    tombstone([*inside, "../outside.txt"], kind=Tombstone.Kind.ORIGINAL)

    summary = tombstones_delete()

    assert (summary["deleted"], summary["refused"], summary["failed"]) == (2, 1, 0), summary
    assert bucket.batches == [[f"{LOCATION}/{name}" for name in inside]]
    assert bucket.keys() == {"outside.txt"}
    assert not Tombstone.objects.exists()  # a refused name is dropped, never retried


def test_other_storages_delete_one_file_at_a_time(tmp_path: Path) -> None:
    storage = FileSystemStorage(location=tmp_path)
    names = [f"renditions/{SHARD}/{index}.webp" for index in range(3)]
    for name in names:
        storage.save(name, ContentFile(b"x"))
    (tmp_path.parent / "outside.txt").write_bytes(b"keep")

    outcome = files_delete(storage, [*names, "../outside.txt", names[0]])

    assert (outcome.deleted, outcome.refused, outcome.requests) == (names, ["../outside.txt"], 4)
    assert not any(storage.exists(name) for name in names)
    assert (tmp_path.parent / "outside.txt").exists()


class OneBadFileStorage(FileSystemStorage):
    """Local files whose delete of `bad.webp` fails (a disk error); every delete noted."""

    calls: list[str] = []

    def delete(self, name: str) -> None:
        """Note the call; fail for the bad file, else delete."""
        self.calls.append(name)
        if name.endswith("bad.webp"):
            raise OSError(f"injected delete failure: {name}")
        super().delete(name)


@pytest.mark.django_db
def test_a_storage_error_midway_keeps_what_was_deleted_done(settings: Any, tmp_path: Path) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "flaky": {
            "BACKEND": f"{__name__}.OneBadFileStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    names = [f"renditions/{SHARD}/{stem}.webp" for stem in ("a", "b", "bad", "c")]
    storage = OneBadFileStorage(location=tmp_path)
    for name in names:
        storage.save(name, ContentFile(b"x"))
    due = timezone.now() - timedelta(seconds=10)
    Tombstone.objects.bulk_create(  # due one after the other, in the order of `names`
        Tombstone(
            storage="flaky",
            name=name,
            kind=Tombstone.Kind.RENDITION,
            delete_after=due + timedelta(seconds=index),
        )
        for index, name in enumerate(names)
    )
    OneBadFileStorage.calls = []

    with pytest.raises(OSError, match="injected delete failure"):
        tombstones_delete()  # the task retries it with backoff

    assert OneBadFileStorage.calls == names[:3]
    assert sorted(Tombstone.objects.values_list("name", flat=True)) == names[2:]
    assert [storage.exists(name) for name in names] == [False, False, True, True]
    # The retry goes on from the failed file: the deleted ones are not asked again.
    OneBadFileStorage.calls = []
    with pytest.raises(OSError):
        tombstones_delete()
    assert OneBadFileStorage.calls == [names[2]]
