"""The environment variables the demo site reads, and how it reads each kind of value.

Every variable the settings read is declared in `VARIABLES`: `rendition-worker demo` clears
them all from its children's environment, so that the embedded defaults apply whatever the
user's shell exports (a DATABASE_URL meant for another project must not be migrated).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

HOME = "RENDITION_WORKER_DEMO_HOME"
DEFAULT_HOME = "rendition-worker-demo"

# Name -> what it sets; README's settings table of the demo is written from this.
VARIABLES: dict[str, str] = {
    HOME: "folder of every embedded default (default ./rendition-worker-demo)",
    "DJANGO_SECRET_KEY": "secret key (default: generated once, kept in <home>/secret-key)",
    "DJANGO_DEBUG": "Django's DEBUG: 1/true/yes/on or 0/false/no/off (default off)",
    "DJANGO_ALLOWED_HOSTS": "comma-separated ALLOWED_HOSTS (default localhost,127.0.0.1,[::1])",
    "DATABASE_URL": "database URL (default sqlite:///<home>/db.sqlite3)",
    "CELERY_BROKER_URL": "broker URL (default filesystem://, folders under <home>/broker)",
    "CELERY_RESULT_BACKEND": "result backend URL (default none: the tasks store no results)",
    "CACHE_URL": "redis:// or rediss:// URL of the shared cache (default: files, <home>/cache)",
    "REDIS_URL": "used for the cache when CACHE_URL is not set",
    "MEDIA_ROOT": "folder of uploads and renditions (default <home>/media)",
    "MEDIA_URL": "URL prefix of media files (default /media/)",
    "STATIC_ROOT": "collectstatic's folder (default <home>/static)",
    "STATIC_URL": "URL prefix of static files (default /static/)",
    "DEMO_SERVE_MEDIA": "serve MEDIA_URL from MEDIA_ROOT in Django (default on)",
    "DEMO_SERVE_STATIC": "serve STATIC_URL (admin CSS) in Django (default on)",
    "RENDITION_WORKER_QUEUE": "the interactive lane's Celery queue (default renditions)",
    "RENDITION_WORKER_BULK_QUEUE": "the bulk lane's Celery queue (default renditions.bulk)",
    "CELERY_BEAT_SCHEDULE_FILENAME": "beat's schedule file (default <home>/celerybeat-schedule)",
    "AWS_STORAGE_BUCKET_NAME": "store media on S3 in this bucket (default: local files)",
    "AWS_S3_ENDPOINT_URL": "S3 endpoint, for S3-compatible stores (MinIO, Ceph)",
    "AWS_S3_REGION_NAME": "S3 region",
    "AWS_S3_CUSTOM_DOMAIN": "domain of the media URLs (a CDN); makes them unsigned",
    "AWS_LOCATION": "key prefix of every media file in the bucket",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def value(name: str, default: str = "") -> str:
    """The variable's value, or `default` when it is unset or empty."""
    if name not in VARIABLES:
        # Keeps VARIABLES complete: the launcher clears only what is declared there.
        raise KeyError(f"{name} is not declared in rendition_worker.demo.environment.VARIABLES")
    return os.environ.get(name) or default


def flag(name: str, default: bool) -> bool:
    """A yes/no variable; anything else is an error naming the variable."""
    raw = value(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: use 1/true/yes/on or 0/false/no/off")


def items(name: str, default: str) -> list[str]:
    """A comma-separated list variable, without blanks."""
    return [item.strip() for item in value(name, default).split(",") if item.strip()]


def home() -> Path:
    """The demo's home folder, absolute, created if missing."""
    path = Path(value(HOME, DEFAULT_HOME)).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def persistent_secret(path: Path) -> str:
    """The secret kept in `path`, generated there by whichever process asks first."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secrets.token_urlsafe(50))
    try:
        # A hard link publishes the complete file atomically and fails if another process
        # (the worker starting beside the web server) published first: both then read one key.
        os.link(candidate, path)
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    return path.read_text(encoding="ascii").strip()
