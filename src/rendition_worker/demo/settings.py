"""Django settings of the demo site, read from the environment (names in `environment`).

Without any variable set, everything lives under one home folder (RENDITION_WORKER_DEMO_HOME,
default ./rendition-worker-demo): a SQLite database, Celery's filesystem transport, a file
cache and local media. That is what `rendition-worker demo` runs; Docker Compose sets
DATABASE_URL, CELERY_BROKER_URL, REDIS_URL and DJANGO_SECRET_KEY instead.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from rendition_worker.demo import environment as env

DEMO_HOME = env.home()

SECRET_KEY = env.value("DJANGO_SECRET_KEY") or env.persistent_secret(DEMO_HOME / "secret-key")
DEBUG = env.flag("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.items("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rendition_worker",
    "rendition_worker.demo",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "rendition_worker.demo.urls"
WSGI_APPLICATION = "rendition_worker.demo.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database() -> dict[str, Any]:
    url = env.value("DATABASE_URL", f"sqlite:///{DEMO_HOME / 'db.sqlite3'}")
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_health_checks=True))
    except ValueError as exc:
        # The parser's message names the scheme or the malformed part, never the password.
        raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from None
    if config.get("ENGINE") == "django.db.backends.sqlite3":
        # The web server, the worker's processes and beat share the file: WAL lets pages read
        # while a worker writes, IMMEDIATE transactions queue writers instead of failing with
        # "database is locked", and the timeout covers a render's burst of writes.
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL;",
            **config.get("OPTIONS", {}),
        }
    return config


DATABASES = {"default": _database()}


def _cache() -> dict[str, Any]:
    url = env.value("CACHE_URL") or env.value("REDIS_URL")
    if not url:
        # A cache in files, not in memory: the worker invalidates the lookups that the web
        # process caches, so both must see one cache.
        return {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DEMO_HOME / "cache"),
            "OPTIONS": {"MAX_ENTRIES": 10_000},
        }
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        # The scheme only: the URL may carry a password.
        raise ImproperlyConfigured(
            f"CACHE_URL/REDIS_URL: expected a redis://, rediss:// or unix:// URL, not "
            f"{urlsplit(url).scheme}://"
        )
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": url,
        "KEY_PREFIX": "rendition-worker-demo",
    }


CACHES = {"default": _cache()}

MEDIA_ROOT = env.value("MEDIA_ROOT", str(DEMO_HOME / "media"))
MEDIA_URL = env.value("MEDIA_URL", "/media/")
STATIC_ROOT = env.value("STATIC_ROOT", str(DEMO_HOME / "static"))
STATIC_URL = env.value("STATIC_URL", "/static/")
DEMO_SERVE_MEDIA = env.flag("DEMO_SERVE_MEDIA", default=True)
DEMO_SERVE_STATIC = env.flag("DEMO_SERVE_STATIC", default=True)

STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if env.value("AWS_STORAGE_BUCKET_NAME"):
    # Credentials come from boto3's usual sources (AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY, a profile, an instance role); needs the `s3` extra.
    _s3_options = {
        "bucket_name": env.value("AWS_STORAGE_BUCKET_NAME"),
        "endpoint_url": env.value("AWS_S3_ENDPOINT_URL") or None,
        "region_name": env.value("AWS_S3_REGION_NAME") or None,
        "custom_domain": env.value("AWS_S3_CUSTOM_DOMAIN") or None,
        "location": env.value("AWS_LOCATION"),
    }
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {key: option for key, option in _s3_options.items() if option is not None},
    }

_queue = env.value("RENDITION_WORKER_QUEUE", "renditions")
_bulk_queue = env.value("RENDITION_WORKER_BULK_QUEUE", "renditions.bulk")
RENDITION_WORKER = {
    "SETS": {
        # The gallery's and the detail page's <picture>: widths for phones to large screens.
        "hero": {"widths": [480, 960, 1440, 1920], "formats": ["avif", "webp", "jpeg"]},
        # The gallery's 4:3 cards, cropped on the subject: a third of a laptop screen at 2x
        # needs the 960 px one, a phone the 320 or 640 px one.
        "thumb": {"widths": [320, 640, 960], "ratio": "4:3", "formats": ["avif", "webp", "jpeg"]},
    },
    "FIELDS": {"demo.Photo.image": ["hero", "thumb"]},
    "QUEUE": _queue,
    "BULK_QUEUE": _bulk_queue,
}

CELERY_BROKER_URL = env.value("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem:"):
    _broker = DEMO_HOME / "broker"
    for _folder in ("queue", "staging", "processed", "control"):
        (_broker / _folder).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, with messages published atomically (see that module).
    CELERY_BROKER_TRANSPORT = "rendition_worker.demo.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # One folder both ways: every process publishes into and consumes from it.
        "data_folder_in": str(_broker / "queue"),
        "data_folder_out": str(_broker / "queue"),
        # Messages are written here, then renamed into the queue folder whole.
        "staging_folder": str(_broker / "staging"),
        # Consumed messages are renamed into this folder on the same file system, which is
        # atomic: two workers can never take one message. Without it they would be moved to
        # /tmp, a copy on most machines. They are kept: ~1 KiB per task.
        "store_processed": True,
        "processed_folder": str(_broker / "processed"),
        # Exchange bindings; kombu's default is a "control" folder in the working directory.
        "control_folder": str(_broker / "control"),
        # An idle worker lists the queue folder this often; the default 1 s adds up to a
        # second to every task's start.
        "polling_interval": 0.1,
    }
else:
    # Redis: a worker given both lanes BRPOPs them in that order, interactive work first.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"queue_order_strategy": "priority"}
CELERY_RESULT_BACKEND = env.value("CELERY_RESULT_BACKEND") or None
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_DEFAULT_QUEUE = _queue
# Flower shows tasks from their events; "sent" events make queued tasks visible too.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# AVIF encodes take seconds: one task at a time per process, acknowledged when done.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = env.value(
    "CELERY_BEAT_SCHEDULE_FILENAME", str(DEMO_HOME / "celerybeat-schedule")
)
# The beat entry itself is added by rendition_worker.demo.celery from
# rendition_worker.beat_schedule(), which reads these settings and so cannot run in them.

# Errors reach the process's stderr (the launcher's log files, the containers' logs)
# whatever DEBUG says; Django's default would mail them to ADMINS only.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
