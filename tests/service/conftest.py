"""Fixtures of the service tests: processes in their own groups, logs, waits and HTTP.

These tests run what an operator runs (gunicorn, `celery worker`, `beat`, `flower`,
`django-admin`) as subprocesses of the demo site, each in a process group of its own with
its output in a log file; a failed wait shows the end of every log. Every group is killed
in a finalizer. Without a service they need (PostgreSQL, the redis-server binary) they skip,
saying why; with RENDITION_WORKER_REQUIRE_SERVICES=1 they fail instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

SERVICES_REQUIRED = os.environ.get("RENDITION_WORKER_REQUIRE_SERVICES") == "1"
ROOT = Path(__file__).resolve().parents[2]
# The console scripts (celery, gunicorn, django-admin) of the interpreter running the tests,
# whether or not the caller put the virtualenv on PATH.
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
POLL_SECONDS = 0.2
# Generous: a cold start of Django and Celery on a busy shared machine can take a while.
START_TIMEOUT = 90
LOG_TAIL = 2500

# Saves a demo Photo with a generated 640x480 JPEG and prints its primary key: what a user's
# upload does, run the way an operator runs a one-off command in a service's environment.
SAVE_PHOTO = """
import io
from django.core.files.base import ContentFile
from PIL import Image
from rendition_worker.demo.models import Photo
buffer = io.BytesIO()
Image.new("RGB", (640, 480), (40, 120, 200)).save(buffer, "JPEG", quality=90)
photo = Photo.objects.create(title="service test", image=ContentFile(buffer.getvalue(), "s.jpg"))
print(photo.pk)
"""


def unavailable(reason: str) -> NoReturn:
    """Skip, saying why; fail instead when RENDITION_WORKER_REQUIRE_SERVICES=1."""
    if SERVICES_REQUIRED:
        pytest.fail(f"{reason} (RENDITION_WORKER_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def require_binaries(*names: str) -> None:
    """Skip (or fail, see `unavailable`) unless every named program is on PATH."""
    missing = [name for name in names if shutil.which(name, path=search_path()) is None]
    if missing:
        unavailable(f"not on PATH: {', '.join(missing)} (the service tests run them)")


def search_path() -> str:
    """PATH of the started processes: this virtualenv's scripts, then the system's."""
    return f"{VENV_BIN}{os.pathsep}{SYSTEM_PATH}"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Process:
    """A started process: its name, its Popen (pid = process group id) and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything it wrote so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self) -> str:
        """The end of its log, for failure messages."""
        return f"--- {self.name} (log {self.log}):\n{self.log_text()[-LOG_TAIL:]}"


class Processes:
    """Starts processes in their own groups and kills every group at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Process:
        """Start `argv` with exactly `env`; output to <directory>/<name>-<n>.log."""
        log = self.directory / f"{name}-{len(self.started)}.log"
        with log.open("wb") as output:
            # A session of its own: killing the group also kills gunicorn's and the
            # worker's children, which a kill of the main process would leave behind.
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd or self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.started.append(process)
        return process

    def stop(self, process: Process, timeout: float = 30) -> int:
        """SIGTERM, wait up to `timeout` for a clean exit, then kill the group; the status."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout)
        _kill_group(process)
        return process.popen.wait()

    def tails(self) -> str:
        """The end of every log, for failure messages."""
        return "\n".join(process.tail() for process in self.started)

    def close(self) -> None:
        """Kill every group that was started, and reap the main processes."""
        for process in self.started:
            _kill_group(process)
            process.popen.wait()


def _kill_group(process: Process) -> None:
    # Also after a clean exit of the main process: its children may still run.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.popen.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """The module's processes, every group killed when the module is done."""
    started = Processes(tmp_path_factory.mktemp("logs"))
    try:
        yield started
    finally:
        started.close()


def wait_until(
    condition: Callable[[], Any],
    what: str,
    processes: Processes,
    watch: Sequence[Process] = (),
    timeout: float = START_TIMEOUT,
) -> Any:
    """Poll `condition` until it is truthy; fail with every log if a watched process exits
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for process in watch:
            if not process.alive():
                pytest.fail(
                    f"{process.name} exited with {process.popen.returncode} while waiting "
                    f"for {what}\n{processes.tails()}",
                    pytrace=False,
                )
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}\n{processes.tails()}",
                pytrace=False,
            )
        time.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, headers, body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def http_get(
    url: str, *, credentials: str | None = None, host: str | None = None, timeout: float = 10
) -> Response:
    """GET `url`, with basic auth `user:password` and a Host header if given; any status."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(credentials.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read())


def answers(url: str, **options: Any) -> bool:
    """Whether `url` answers 200 right now (a refused or slow connection is a no)."""
    try:
        return http_get(url, **options).status == 200
    except OSError:
        return False


def run_once(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = START_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a one-off command to completion, its output captured; killed, group and all, and
    reported with status -9 if it takes longer than `timeout` seconds."""
    with subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A group of its own: a shell's children (CMD-SHELL checks) die with it on a timeout.
        start_new_session=True,
    ) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            out, err = popen.communicate()
            return subprocess.CompletedProcess(
                list(argv), -signal.SIGKILL, out, f"{err}\n(killed after {timeout} s)"
            )
        return subprocess.CompletedProcess(list(argv), popen.returncode, out, err)


def save_photo(env: Mapping[str, str], cwd: Path) -> int:
    """Save a demo Photo through `django-admin shell` in `env`; its primary key."""
    done = run_once(["django-admin", "shell", "-c", SAVE_PHOTO], env, cwd)
    assert done.returncode == 0, f"saving a photo failed:\n{done.stdout}\n{done.stderr}"
    return int(done.stdout.strip().splitlines()[-1])
