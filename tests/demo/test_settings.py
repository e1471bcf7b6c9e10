"""The demo's settings as a deployment gives them: read from the environment, in a subprocess.

Each case imports `rendition_worker.demo.settings` in a fresh interpreter whose environment
holds none of the demo's variables but the ones under test, as a container or a shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rendition_worker.demo.environment import HOME, VARIABLES

# What the settings module ends up with, as JSON on stdout.
SETTINGS_PROBE = """
import json
import rendition_worker.demo.settings as s
print(json.dumps({
    "DATABASE": s.DATABASES["default"],
    "CACHE": s.CACHES["default"],
    "BROKER_URL": s.CELERY_BROKER_URL,
    "BROKER_TRANSPORT": getattr(s, "CELERY_BROKER_TRANSPORT", None),
    "BROKER_OPTIONS": getattr(s, "CELERY_BROKER_TRANSPORT_OPTIONS", None),
    "RESULT_BACKEND": s.CELERY_RESULT_BACKEND,
    "MEDIA_ROOT": s.MEDIA_ROOT,
    "SECRET_KEY": s.SECRET_KEY,
    "DEBUG": s.DEBUG,
    "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
    "QUEUE": s.RENDITION_WORKER["QUEUE"],
    "BEAT_FILE": s.CELERY_BEAT_SCHEDULE_FILENAME,
}, default=str))
"""

# GET /healthz through the whole demo site (Django set up on the demo settings).
HEALTHZ_PROBE = """
import json
import django
django.setup()
from django.test import Client
response = Client().get("/healthz")
print(json.dumps({"status": response.status_code, "body": response.content.decode()}))
"""


def run_demo_python(
    code: str, cwd: Path, variables: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `code` with the demo's settings module and only `variables` of the demo's set."""
    environ = {name: value for name, value in os.environ.items() if name not in VARIABLES}
    environ |= {"DJANGO_SETTINGS_MODULE": "rendition_worker.demo.settings", **variables}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def demo_settings(cwd: Path, variables: dict[str, str]) -> dict[str, Any]:
    """The demo settings read in a subprocess with `variables` set."""
    done = run_demo_python(SETTINGS_PROBE, cwd, variables)
    assert done.returncode == 0, done.stderr
    values: dict[str, Any] = json.loads(done.stdout)
    return values


def test_embedded_defaults_live_under_the_home_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    values = demo_settings(tmp_path, {HOME: str(home)})
    assert values["DATABASE"]["ENGINE"] == "django.db.backends.sqlite3"
    assert values["DATABASE"]["NAME"] == str(home / "db.sqlite3")
    # Several processes share the file: writers queue instead of failing with "locked".
    assert values["DATABASE"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert values["CACHE"]["BACKEND"].endswith("FileBasedCache")
    assert values["CACHE"]["LOCATION"] == str(home / "cache")
    assert values["BROKER_URL"] == "filesystem://"
    assert values["BROKER_TRANSPORT"] == "rendition_worker.demo.broker:Transport"
    options = values["BROKER_OPTIONS"]
    assert options["data_folder_in"] == options["data_folder_out"] == str(home / "broker/queue")
    for folder in ("queue", "staging", "processed", "control"):
        assert (home / "broker" / folder).is_dir()
    assert values["RESULT_BACKEND"] is None
    assert values["MEDIA_ROOT"] == str(home / "media")
    assert values["BEAT_FILE"] == str(home / "celerybeat-schedule")
    assert values["DEBUG"] is False
    assert values["QUEUE"] == "renditions"
    # A secret generated once, private, and the same for every later process.
    secret_file = home / "secret-key"
    assert secret_file.read_text().strip() == values["SECRET_KEY"]
    assert len(values["SECRET_KEY"]) >= 50
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert demo_settings(tmp_path, {HOME: str(home)})["SECRET_KEY"] == values["SECRET_KEY"]
    # Nothing was written outside the home folder.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["home"]


def test_a_deployment_configures_it_from_the_environment(tmp_path: Path) -> None:
    values = demo_settings(
        tmp_path,
        {
            HOME: str(tmp_path / "home"),
            "DATABASE_URL": "postgres://gallery:s3cret@db.internal:6543/gallery",
            "CELERY_BROKER_URL": "redis://:pw@broker.internal:6379/0",
            "CACHE_URL": "redis://:pw@cache.internal:6379/1",
            "DJANGO_SECRET_KEY": "from-the-environment",
            "DJANGO_DEBUG": "yes",
            "DJANGO_ALLOWED_HOSTS": "photos.example, 127.0.0.1",
            "MEDIA_ROOT": str(tmp_path / "media"),
            "RENDITION_WORKER_QUEUE": "images",
        },
    )
    database = values["DATABASE"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["NAME"], database["USER"], database["PASSWORD"]) == (
        "gallery",
        "gallery",
        "s3cret",
    )
    assert (database["HOST"], database["PORT"]) == ("db.internal", 6543)
    assert database["CONN_HEALTH_CHECKS"] is True
    assert values["BROKER_URL"] == "redis://:pw@broker.internal:6379/0"
    assert values["BROKER_TRANSPORT"] is None
    # On Redis a worker given both lanes takes the interactive one first.
    assert values["BROKER_OPTIONS"] == {"queue_order_strategy": "priority"}
    assert values["CACHE"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert values["CACHE"]["LOCATION"] == "redis://:pw@cache.internal:6379/1"
    assert values["SECRET_KEY"] == "from-the-environment"
    assert values["DEBUG"] is True
    assert values["ALLOWED_HOSTS"] == ["photos.example", "127.0.0.1"]
    assert values["MEDIA_ROOT"] == str(tmp_path / "media")
    assert values["QUEUE"] == "images"
    # A given secret key is used as it is: none is generated, no broker folders are made.
    assert not (tmp_path / "home" / "secret-key").exists()
    assert not (tmp_path / "home" / "broker").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG='maybe': use 1/true/yes/on or 0/false/no/off"),
        ("CACHE_URL", "memcached://:pw@cache:11211", "CACHE_URL/REDIS_URL: expected a redis://"),
        (
            "DATABASE_URL",
            "nosuchdb://u:pw@host/name",
            "DATABASE_URL: Scheme 'nosuchdb://' is unknown",
        ),
        (
            "DATABASE_URL",
            "postgres://u:pw@host:port/name",
            "DATABASE_URL: This string is not a valid url",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_it(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    done = run_demo_python(SETTINGS_PROBE, tmp_path, {HOME: str(tmp_path), variable: value})
    assert done.returncode == 1
    assert f"ImproperlyConfigured: {message}" in done.stderr
    assert "pw" not in done.stderr.splitlines()[-1]  # a URL's password is never echoed
    assert done.stdout == ""


def test_healthz_names_what_does_not_answer(tmp_path: Path) -> None:
    # Ports nobody listens on: PostgreSQL and Redis refuse the connection at once.
    done = run_demo_python(
        HEALTHZ_PROBE,
        tmp_path,
        {
            HOME: str(tmp_path),
            "DATABASE_URL": "postgres://nobody@127.0.0.1:9/nothing?connect_timeout=5",
            "CACHE_URL": "redis://127.0.0.1:9/0",
            "DJANGO_ALLOWED_HOSTS": "testserver",
        },
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["status"] == 503
    lines = answer["body"].splitlines()
    assert [line.split(":")[0] for line in lines] == ["database", "cache"]
    assert "OperationalError" in lines[0]
    assert "ConnectionError" in lines[1]
