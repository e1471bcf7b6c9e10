"""Delete many files of one storage: S3's DeleteObjects, 1,000 keys a request; else one by one.

Every batch of stale or orphan files goes through `files_delete`. On django-storages'
`S3Storage` (its own `delete`, not a subclass's) the names become keys the way the storage
makes them (`location` prefixed, normalised, names outside it refused) and are deleted with
DeleteObjects: one request per 1,000 keys instead of one per file. DeleteObjects answers
200 even when some keys were not deleted, listing them as `Errors` (AccessDenied from a
bucket policy, InternalError, SlowDown): those keys are asked again, and the ones still
failing are returned to the caller, which keeps them known (a tombstone stays due, an
orphan is listed again by the next reconciliation). Any other storage gets its own
`delete` per file, whose errors propagate as before (the task retries with backoff).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.core.files.storage import Storage

logger = logging.getLogger(__name__)

# DeleteObjects takes at most this many keys per request (S3's limit).
MAX_KEYS = 1_000
# Requests per key in one call: the first and two retries of the keys S3 reported.
ATTEMPTS = 3
# Seconds before retry n (times n): S3 reports SlowDown when a prefix is deleted too fast.
RETRY_PAUSE = 0.2
# Failed names quoted in the log line; the count covers the rest.
LOGGED_NAMES = 5


@dataclass
class Deletion:
    """What became of a batch: names deleted, failed (name -> error) and refused."""

    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    requests: int = 0  # delete requests sent (DeleteObjects, or one per file)


def files_delete(
    storage: Storage, names: Iterable[str], outcome: Deletion | None = None
) -> Deletion:
    """Delete `names` from `storage`, batched on S3; refused and still-failing names returned.

    `outcome`, when given, is filled as the deletes go, so that a caller whose storage
    raised midway still knows which files are gone (and need not be deleted again).
    """
    outcome = Deletion() if outcome is None else outcome
    wanted = list(dict.fromkeys(name for name in names if name))
    if not wanted:
        return outcome
    s3 = _s3_target(storage)
    if s3 is None:
        _delete_one_by_one(storage, wanted, outcome)
    else:
        _delete_batched(s3, wanted, outcome)
    if outcome.failed:
        examples = "; ".join(
            f"{name}: {error}" for name, error in list(outcome.failed.items())[:LOGGED_NAMES]
        )
        logger.warning(
            "could not delete %d of %d files from %s after %d attempts (kept, to retry): %s",
            len(outcome.failed),
            len(wanted),
            _describe(storage),
            ATTEMPTS,
            examples,
        )
    for name in outcome.refused:
        # A name outside the storage or one it cannot hold (a row's name forged by raw SQL).
        logger.warning("refused to delete %r: not a valid name in its storage", name)
    return outcome


@dataclass(frozen=True)
class _S3Target:
    client: Any  # boto3 ships no types
    bucket: str
    key: Any  # the storage's own name -> key function


def _s3_target(storage: Storage) -> _S3Target | None:
    """The client and bucket of a plain S3Storage; None for any other storage."""
    # __class__, not type(): default_storage is a lazy proxy that reports its target's class.
    cls = storage.__class__
    # Only loaded when a storage uses it: without the s3 extra no storage can be one.
    module = sys.modules.get("storages.backends.s3")
    s3_class = getattr(module, "S3Storage", None)
    if s3_class is None or not issubclass(cls, s3_class) or cls.delete is not s3_class.delete:
        return None
    target: Any = storage
    # The module's own clean_name: the very function S3Storage.delete calls.
    clean_name = module.clean_name  # type: ignore[union-attr]

    def key(name: str) -> str:
        # Exactly what S3Storage.delete does to a name (and SuspiciousOperation if outside).
        return str(target._normalize_name(clean_name(name)))

    # The bucket resource is shared by the storage's threads; its client is thread-safe.
    return _S3Target(target.bucket.meta.client, str(target.bucket_name), key)


def _delete_one_by_one(storage: Storage, names: list[str], outcome: Deletion) -> None:
    for name in names:
        outcome.requests += 1
        try:
            storage.delete(name)
        except (SuspiciousOperation, ValueError):
            outcome.refused.append(name)
        else:
            outcome.deleted.append(name)


def _delete_batched(s3: _S3Target, names: list[str], outcome: Deletion) -> None:
    by_key: dict[str, list[str]] = {}
    for name in names:
        try:
            by_key.setdefault(s3.key(name), []).append(name)
        except (SuspiciousOperation, ValueError):
            outcome.refused.append(name)
    keys = list(by_key)
    for start in range(0, len(keys), MAX_KEYS):
        errors = _delete_chunk(s3, keys[start : start + MAX_KEYS], outcome)
        for key in keys[start : start + MAX_KEYS]:
            for name in by_key[key]:
                if key in errors:
                    outcome.failed[name] = errors[key]
                else:
                    outcome.deleted.append(name)


def _delete_chunk(s3: _S3Target, keys: list[str], outcome: Deletion) -> dict[str, str]:
    """Delete up to 1,000 keys, asking again for those S3 reports; key -> last error."""
    errors: dict[str, str] = {}
    pending = keys
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_PAUSE * attempt)
        # Quiet: the answer lists only the keys that failed. A missing key counts as
        # deleted (S3 does not report it). A failed request raises: the caller's task retries.
        response = s3.client.delete_objects(
            Bucket=s3.bucket,
            Delete={"Objects": [{"Key": key} for key in pending], "Quiet": True},
        )
        outcome.requests += 1
        errors = {
            str(error["Key"]): f"{error.get('Code', '?')}: {error.get('Message', '')}"
            for error in response.get("Errors", ())
        }
        pending = [key for key in pending if key in errors]
        if not pending:
            return {}
    return errors


def _describe(storage: Storage) -> str:
    bucket = getattr(storage, "bucket_name", None)
    return f"bucket {bucket!r}" if bucket else storage.__class__.__name__
