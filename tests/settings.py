"""Django settings of the test project: real SQLite or PostgreSQL, real Redis, temp media."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

SECRET_KEY = "tests-only"
USE_TZ = True
DEBUG = False
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rendition_worker",
    "rendition_worker.demo",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
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

# One folder per process, removed when it exits (every pytest and mypy run imports this).
_RUN_DIR = Path(tempfile.mkdtemp(prefix="rendition-worker-tests-"))
atexit.register(shutil.rmtree, _RUN_DIR, ignore_errors=True)
MEDIA_ROOT = str(_RUN_DIR / "media")
MEDIA_URL = "/media/"

# RENDITION_WORKER_TEST_DB=postgres runs the suite on PostgreSQL (127.0.0.1, trust auth).
if os.environ.get("RENDITION_WORKER_TEST_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "test",
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "TEST": {"NAME": f"test_rendition_worker_{os.getpid()}"},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_RUN_DIR / "db.sqlite3"),
            # A file, not memory: the worker thread needs its own connection to the data,
            # and IMMEDIATE transactions queue writers instead of failing with "locked".
            "TEST": {"NAME": str(_RUN_DIR / "test.sqlite3")},
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    }

REDIS_URL = os.environ.get("RENDITION_WORKER_TEST_REDIS", "redis://127.0.0.1:6379")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"{REDIS_URL}/3",
        "KEY_PREFIX": f"rw-tests-{os.getpid()}",
    }
}

# One queue per lane per test run, so that parallel runs on one Redis never take each
# other's tasks.
TEST_QUEUE = f"renditions-test-{os.getpid()}"
TEST_BULK_QUEUE = f"{TEST_QUEUE}.bulk"
CELERY_BROKER_URL = f"{REDIS_URL}/2"
CELERY_RESULT_BACKEND = f"{REDIS_URL}/2"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = TEST_QUEUE
# Interactive work first: BRPOP the queues in the order the worker was given them.
CELERY_BROKER_TRANSPORT_OPTIONS = {"queue_order_strategy": "priority"}

RENDITION_WORKER = {
    "SETS": {
        "hero": {"widths": [160, 320], "formats": ["avif", "webp", "jpeg"]},
        "thumb": {"specs": ["fill-64x64|format-webp"]},
    },
    "FIELDS": {
        "testapp.Photo.image": ["hero", "thumb"],
        "testapp.Photo.cover": ["thumb"],
        "testapp.Poster.image": ["hero"],
        "demo.Photo.image": ["hero", "thumb"],
    },
    "QUEUE": TEST_QUEUE,
    "BULK_QUEUE": TEST_BULK_QUEUE,
}

# The fault tests (tests/faults) run Celery workers in subprocesses that must share a
# database, a media folder, a queue and settings with the test process; these variables,
# set only by those tests, point them there. Unset, nothing above changes.
if _db_name := os.environ.get("RENDITION_WORKER_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = _db_name
if _media_root := os.environ.get("RENDITION_WORKER_TEST_MEDIA_ROOT"):
    MEDIA_ROOT = _media_root
if _queue := os.environ.get("RENDITION_WORKER_TEST_QUEUE"):
    TEST_QUEUE = CELERY_TASK_DEFAULT_QUEUE = RENDITION_WORKER["QUEUE"] = _queue
    TEST_BULK_QUEUE = RENDITION_WORKER["BULK_QUEUE"] = f"{_queue}.bulk"
# JSON object of settings to replace (STORAGES, CELERY_*, RENDITION_WORKER keys merged in).
if _overrides := os.environ.get("RENDITION_WORKER_TEST_SETTINGS_JSON"):
    _values = json.loads(_overrides)
    RENDITION_WORKER = {**RENDITION_WORKER, **_values.pop("RENDITION_WORKER", {})}
    globals().update(_values)
