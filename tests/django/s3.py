"""A real S3 API for the tests: moto's server on a free loopback port, for the whole session.

The code under test talks HTTP to it through boto3 and django-storages' real `S3Storage`;
nothing is patched (moto's in-process `mock_aws` is never started). Import the fixtures
into a test module: `from tests.django.s3 import s3_bucket, s3_endpoint`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

SERVICES_REQUIRED = os.environ.get("RENDITION_WORKER_REQUIRE_SERVICES") == "1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of moto's S3 server on 127.0.0.1 (skips without moto, boto3, django-storages)."""
    try:
        import boto3  # noqa: F401
        import storages.backends.s3  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        reason = (
            f"{exc.name} is not installed: the S3 tests need the `s3` and `test` extras "
            "(django-storages[s3], boto3, moto[server])"
        )
        if SERVICES_REQUIRED:
            pytest.fail(f"{reason} (RENDITION_WORKER_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    # One access-log line per request would bury a failure's report under a thousand PUTs.
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    # Port 0: the OS picks a free port, so parallel runs on one machine never collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        access_log.setLevel(level)


def s3_client(endpoint: str) -> Any:
    """A plain boto3 S3 client for the server at `endpoint` (boto3 ships no types)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the session's server; its name."""
    name = f"rw-test-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_options(endpoint: str, bucket: str, location: str = "media") -> dict[str, Any]:
    """`S3Storage` options for `bucket` on the loopback S3, every name under `location`."""
    return {
        "bucket_name": bucket,
        "endpoint_url": endpoint,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "region_name": REGION,
        "location": location,
        # django-storages' default, stated for the reader: rendition names are
        # content-addressed, so a name never needs a free variant.
        "file_overwrite": True,
    }


def s3_storage(endpoint: str, bucket: str, location: str = "media") -> Any:
    """A real django-storages `S3Storage` on `bucket`, with every name under `location`."""
    from storages.backends.s3 import S3Storage

    return S3Storage(**s3_options(endpoint, bucket, location))


def s3_storages(endpoint: str, bucket: str, location: str = "media") -> dict[str, Any]:
    """A STORAGES setting whose default storage is `bucket` on the loopback S3."""
    return {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": s3_options(endpoint, bucket, location),
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
