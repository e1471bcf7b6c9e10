"""`rendition-worker demo` end to end, run as a user runs it: the installed console script.

Each run is a real launcher in a session of its own, with its real children (Django's
runserver, a prefork Celery worker and beat on the filesystem transport, SQLite) under a
home folder in tmp_path, served on a free loopback port. Ctrl-C is SIGINT to the launcher's
process group, as a terminal sends it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from rendition_worker.demo.views import IMMUTABLE
from tests.demo.conftest import Cards, srcset_urls

# Generous: a loaded CI machine imports Django and Celery in four processes at once.
START_TIMEOUT = 180
STOP_TIMEOUT = 60
STARTED = re.compile(r"^started (\w+): pid (\d+), log ")
PHOTO_COLORS = {"dunes.jpg": (210, 170, 90), "fjord.jpg": (40, 90, 160), "moss.jpg": (60, 140, 60)}


def console_script() -> str:
    """The installed `rendition-worker`, beside the interpreter running the tests."""
    executable = shutil.which("rendition-worker", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail("the rendition-worker console script is not installed: pip install -e .")
    return executable


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def group_alive(pgid: int, seconds: float = 10.0) -> bool:
    """Whether a live process (not a zombie init has yet to reap) stays in the group.

    A SIGKILLed pool process is a zombie until init reaps it, and the signal itself takes
    a moment to land on a loaded machine: give it `seconds`.
    """
    deadline = time.monotonic() + seconds
    while True:
        if not any(_live_in_group(entry, pgid) for entry in Path("/proc").iterdir()):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def _live_in_group(entry: Path, pgid: int) -> bool:
    try:
        # /proc/PID/stat: "pid (comm) state ppid pgrp ...", comm may hold spaces.
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False  # not a process, or gone while we read
    return fields[0] != "Z" and int(fields[2]) == pgid


class DemoRun:
    """A running `rendition-worker demo`: its stdout lines as they come, its stderr in a file."""

    def __init__(self, args: list[str], cwd: Path, environ: dict[str, str]) -> None:
        self.stderr_path = cwd / "launcher-stderr.txt"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [console_script(), "demo", *args],
                cwd=cwd,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                # A session of its own, like a shell's job: Ctrl-C goes to this group only.
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> str:
        """The first output line matching `pattern`; fails if the launcher exits first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                if not self._reader.is_alive():
                    pytest.fail(f"the launcher exited before printing {pattern!r}:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no line matching {pattern!r} in {timeout} s:\n{self.output}")
                self._changed.wait(left)

    @property
    def output(self) -> str:
        """Everything printed so far, stdout then stderr."""
        stderr = self.stderr_path.read_text(errors="replace").replace("\r", "\n")
        return "\n".join(self.lines) + "\n--- stderr:\n" + stderr

    @property
    def children(self) -> dict[str, int]:
        """name -> pid of each process the launcher said it started."""
        with self._changed:
            return {
                match[1]: int(match[2]) for line in self.lines if (match := STARTED.match(line))
            }

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The launcher's exit status, once it has exited and its output is read."""
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        return status

    def kill_everything(self) -> None:
        """Whatever is left of the launcher and its children: killed (a failed test's cleanup)."""
        for pgid in (self.process.pid, *self.children.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[list[DemoRun]]:
    """Start launchers with `runs.append(DemoRun(...))`; every one is gone after the test."""
    runs: list[DemoRun] = []
    yield runs
    for run in runs:
        run.kill_everything()


def demo_environment(tmp_path: Path) -> dict[str, str]:
    """The test's environment, plus a production configuration the demo must ignore."""
    return {
        **os.environ,
        "DATABASE_URL": "postgres://nobody@127.0.0.1:9/not-this-one",
        "CELERY_BROKER_URL": "redis://127.0.0.1:9/0",
        "CACHE_URL": "redis://127.0.0.1:9/1",
        "MEDIA_ROOT": str(tmp_path / "not-this-media"),
        "DJANGO_DEBUG": "maybe",
    }


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET `url`: status, headers and body."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def test_demo_imports_serves_and_stops_everything_on_ctrl_c(
    tmp_path: Path, launch: list[DemoRun]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, color in PHOTO_COLORS.items():
        Image.new("RGB", (640, 480), color).save(photos / name, quality=85)
    (photos / "README.txt").write_text("not a photo: not imported")
    home = tmp_path / "home"
    port = free_port()
    args = ["--home", str(home), "--port", str(port), "--images", str(photos), "--workers", "1"]
    run = DemoRun(args, tmp_path, demo_environment(tmp_path))
    launch.append(run)

    gallery_line = run.wait_for_line(r"^gallery: ")
    base = f"http://127.0.0.1:{port}/"
    assert gallery_line == f"gallery: {base}"
    assert set(run.children) == {"web", "worker", "beat"}
    run.wait_for_line(rf"^imported 3 photos from {re.escape(str(photos))} \(0 were there")
    run.wait_for_line(r"^3 photos: 3 ready, 0 failed$")
    run.wait_for_line(r"^Press Ctrl-C to stop\.$")
    # tqdm's bar on stderr reached the end.
    assert re.search(r"rendering: 100%.*3/3", run.output), run.output

    status, _, html = get(base)
    assert status == 200
    page = Cards(html.decode())
    assert sorted(page.states.values()) == ["ready"] * 3
    assert len(page.sources) == 3
    avif_urls = []
    for sources in page.sources.values():
        assert {media_type for media_type, _ in sources} == {"image/avif", "image/webp"}
        avif_urls += [url for kind, srcset in sources if kind == "image/avif"
                      for url in srcset_urls(srcset)]  # fmt: skip
    status, headers, data = get(base.rstrip("/") + avif_urls[0])
    assert status == 200
    assert headers["Content-Type"] == "image/avif"
    assert headers["Cache-Control"] == IMMUTABLE
    assert data[4:12] == b"ftypavif"
    # Everything in the home folder, nothing from the production variables it was given.
    assert (home / "db.sqlite3").is_file()
    assert Path(home, "media", avif_urls[0].removeprefix("/media/")).is_file()
    assert not (tmp_path / "not-this-media").exists()
    assert get(base + "healthz")[2] == b"ok"
    assert get(base + "static/admin/css/base.css")[0] == 200
    password = run.wait_for_line(r"^admin: ").split("password ")[1].split()[0]
    assert (home / "admin-password").read_text().strip() == password

    children = run.children
    assert all(group_alive(pid) for pid in children.values())
    os.killpg(run.process.pid, signal.SIGINT)
    assert run.wait() == 0, run.output
    left = [name for name, pid in children.items() if group_alive(pid)]
    assert left == [], f"still running after Ctrl-C: {left}\n{run.output}"
    assert not group_alive(run.process.pid)
    assert "Warm shutdown" in (home / "logs" / "worker.log").read_text()


def test_a_dead_worker_stops_the_demo_with_status_1(tmp_path: Path, launch: list[DemoRun]) -> None:
    port = free_port()
    run = DemoRun(
        ["--home", str(tmp_path / "home"), "--port", str(port), "--workers", "1"],
        tmp_path,
        demo_environment(tmp_path),
    )
    launch.append(run)
    run.wait_for_line(r"^Press Ctrl-C to stop\.$")
    children = run.children
    os.kill(children["worker"], signal.SIGKILL)
    assert run.wait() == 1, run.output
    assert (
        f"error: the worker (pid {children['worker']}) exited unexpectedly killed by SIGKILL; "
        "stopping the others" in run.lines
    ), run.output
    left = [name for name, pid in children.items() if group_alive(pid)]
    assert left == [], f"still running after the worker died: {left}\n{run.output}"


def test_images_must_be_a_folder(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "photo.jpg"
    not_a_folder.write_bytes(b"")
    done = subprocess.run(
        [console_script(), "demo", "--home", str(tmp_path / "home"), "--images", str(not_a_folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"--images {not_a_folder}: not a folder" in done.stderr
    assert not (tmp_path / "home").exists()


def test_a_port_in_use_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [console_script(), "demo", "--home", str(tmp_path / "home"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert done.stdout.strip() == (
        f"error: 127.0.0.1:{port} is in use; choose another port with --port"
    )
    assert not (tmp_path / "home" / "logs").exists()  # nothing was started
