"""Benchmark: deleting orphans on S3, one DeleteObject per file against batched DeleteObjects.

Data. moto's S3 server (`ThreadedMotoServer`) on a loopback port, one bucket, django-storages'
`S3Storage` with `location="media"` as a site configures it. Each round uploads N small
objects named as this app names renditions (one shard folder), then deletes them:

- before: `storage.delete(name)` per file, what reconciliation and the delete task did;
- after: `services.deletion.files_delete(storage, names)`, what they do now.

Requests are counted from the storage's own boto3 client (its event hooks), seconds with
perf_counter around the delete alone; the bucket is listed after each side to check that
everything went. Figures are per 1,000 orphans. Loopback has no network latency: on real
S3 a request costs some 20-50 ms, so there the seconds follow the requests even more.

Targets: at most one request per 1,000 orphans after, every object deleted on both sides,
and the batched side faster. Prints PASS or FAIL per target and exits 1 on a FAIL.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import django
from django.conf import settings

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"
LOCATION = "media"


@dataclass
class Side:
    """One way of deleting, measured over the rounds (the fastest round counts)."""

    name: str
    requests: int = 0
    seconds: float = float("inf")
    left: int = 0


def main() -> None:
    """Measure both sides and print them side by side with their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orphans", type=int, default=3_000, help="objects per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per side")
    args = parser.parse_args()
    settings.configure(USE_TZ=True)
    django.setup()
    from moto.server import ThreadedMotoServer
    from storages.backends.s3 import S3Storage

    from rendition_worker.services.deletion import files_delete

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = f"rw-bench-{uuid.uuid4().hex[:12]}"
    try:
        storage = S3Storage(
            bucket_name=bucket,
            endpoint_url=endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region_name=REGION,
            location=LOCATION,
        )
        client: Any = storage.bucket.meta.client
        client.create_bucket(Bucket=bucket)
        requests = [0]

        def count(**kwargs: Any) -> None:
            requests[0] += 1

        for operation in ("DeleteObject", "DeleteObjects"):
            client.meta.events.register(f"before-call.s3.{operation}", count)

        def per_file(names: list[str]) -> None:
            for name in names:
                storage.delete(name)

        def batched(names: list[str]) -> None:
            outcome = files_delete(storage, names)
            if outcome.failed or outcome.refused:
                raise SystemExit(f"batched delete left {outcome.failed or outcome.refused}")

        sides = [Side("before: per file"), Side("after: batched")]
        ways: list[Callable[[list[str]], None]] = [per_file, batched]
        names = [
            f"renditions/ab/ab{index:014x}/stray.width-640.format-avif.1a2b3c4d.avif"
            for index in range(args.orphans)
        ]
        for _ in range(args.repeat):
            for side, way in zip(sides, ways, strict=True):
                _upload(client, bucket, names)
                requests[0] = 0
                started = time.perf_counter()
                way(names)
                side.seconds = min(side.seconds, time.perf_counter() - started)
                side.requests = requests[0]
                side.left = _count(client, bucket)
    finally:
        server.stop()
    sys.exit(_report(sides, args.orphans, args.repeat))


def _upload(client: Any, bucket: str, names: list[str]) -> None:
    def put(name: str) -> None:
        client.put_object(Bucket=bucket, Key=f"{LOCATION}/{name}", Body=b"x")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, names))


def _count(client: Any, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(len(page.get("Contents", ())) for page in pages)


def _report(sides: list[Side], orphans: int, repeat: int) -> int:
    before, after = sides
    per = 1_000 / orphans
    print(f"{orphans} orphans per round on moto's S3 server (loopback), best of {repeat}")
    print(f"{'':<20}{'requests/1k':>12}{'seconds/1k':>12}{'left':>6}")
    for side in sides:
        print(
            f"{side.name:<20}{side.requests * per:>12.1f}{side.seconds * per:>12.3f}{side.left:>6}"
        )
    request_ratio = before.requests / max(after.requests, 1)
    time_ratio = before.seconds / after.seconds
    print(f"{'ratio before/after':<20}{request_ratio:>11.0f}x{time_ratio:>11.1f}x")
    checks = [
        (
            f"after: at most 1 request per 1,000 orphans ({after.requests * per:.1f})",
            after.requests * per <= 1,
        ),
        (
            f"every object deleted (left: {before.left}, {after.left})",
            before.left == after.left == 0,
        ),
        (f"after faster than before ({time_ratio:.1f}x)", after.seconds < before.seconds),
    ]
    for text, passed in checks:
        print(f"{text}: {'PASS' if passed else 'FAIL'}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    main()
