"""`rendition-worker demo`: the demo site, a real Celery worker and beat, on embedded defaults.

Everything lives under one home folder: SQLite, Celery's filesystem transport, a file
cache, media, the admin password and each process's log. The web server (Django's
runserver, threaded, no autoreload), the worker (prefork) and beat each run in their own
process and process group; this process migrates, imports photos and supervises them. A
signal (Ctrl-C, SIGTERM, hang-up) stops them all; one of them dying stops the others.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from rendition_worker.demo import environment

SETTINGS_MODULE = "rendition_worker.demo.settings"
CELERY_APP = "rendition_worker.demo.celery"
ADMIN_USER = "admin"
# A worker finishing its current task on SIGTERM may take this long (a large AVIF encode);
# after it, or at a second Ctrl-C, whatever is left is killed.
STOP_SECONDS = 15
# How long the web server may take to answer its first request.
START_SECONDS = 60
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 20
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class DemoOptions:
    """What `rendition-worker demo` was asked for."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    images: Path | None = None
    workers: int = 2


class Interrupted(Exception):
    """A stop signal arrived."""


class DemoFailed(Exception):
    """The demo cannot go on; the message says why."""


class ChildExited(DemoFailed):
    """A process the demo started exited without being asked to."""

    def __init__(self, child: Child) -> None:
        super().__init__(f"the {child.name} (pid {child.pid}) exited unexpectedly")
        self.child = child


@dataclass
class Child:
    """A started process: its role, its Popen and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its pid, which is also its process group id."""
        return self.process.pid

    def describe_exit(self) -> str:
        """'with status 1' or 'killed by SIGKILL'."""
        code = self.process.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"with status {code}"


@dataclass
class Supervisor:
    """Starts the demo's processes, watches them, and stops them all."""

    environ: dict[str, str]
    home: Path
    children: list[Child] = field(default_factory=list)
    signals: int = 0

    def install_signal_handlers(self) -> None:
        """Turn SIGINT, SIGTERM and SIGHUP into a stop request (checked by `check`)."""
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self.signals += 1

    def start(self, name: str, argv: Sequence[str]) -> Child:
        """Start `argv` in its own process group, its output appended to <home>/logs/<name>.log."""
        log = self.home / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            output.write(f"==== {stamp} {' '.join(argv)}\n".encode())
            output.flush()
            # A process group of its own: the terminal's Ctrl-C reaches only this process,
            # which stops the children in order, and a group is what can be killed whole
            # (the worker's pool processes are in the worker's group).
            process = subprocess.Popen(
                argv,
                env=self.environ,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise `Interrupted` after a stop signal, `ChildExited` if a child has exited."""
        if self.signals:
            raise Interrupted
        for child in self.children:
            if child.process.poll() is not None:
                raise ChildExited(child)

    def stop_all(self) -> None:
        """SIGTERM every child, wait up to STOP_SECONDS, then kill what is left, group and all."""
        running = [child for child in self.children if child.process.poll() is None]
        if running:
            say(f"stopping {', '.join(child.name for child in running)} ...")
        for child in running:
            _signal_process(child.pid, signal.SIGTERM)
        signals_before = self.signals
        deadline = time.monotonic() + STOP_SECONDS
        while any(child.process.poll() is None for child in running):
            if time.monotonic() > deadline or self.signals > signals_before:
                break
            time.sleep(POLL_SECONDS)
        for child in self.children:
            if child.process.poll() is None:
                say(f"killing the {child.name} (pid {child.pid})")
            # Also after a clean exit: a killed worker leaves its pool processes behind.
            _signal_group(child.pid, signal.SIGKILL)
            child.process.wait()


def _signal_process(pid: int, number: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _signal_group(pgid: int, number: signal.Signals) -> None:
    # Nobody left in the group (or its id is no longer ours): nothing to do.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, number)


def say(message: str) -> None:
    """One line of the command's output, flushed at once (the output is often a pipe)."""
    print(message, flush=True)


def demo_environment(options: DemoOptions) -> dict[str, str]:
    """This process's environment with every demo setting cleared, then the launcher's own."""
    environ = {
        name: value for name, value in os.environ.items() if name not in environment.VARIABLES
    }
    if options.host in _WILDCARD_HOSTS:
        allowed = "*"  # reachable under any of the machine's names
    else:
        allowed = ",".join(dict.fromkeys([_url_host(options.host), "localhost", "127.0.0.1"]))
    environ.update(
        {
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            environment.HOME: str(options.home),
            "DJANGO_ALLOWED_HOSTS": allowed,
            # Log lines reach the log files as they happen, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environ


def run_demo(options: DemoOptions) -> int:
    """Run the demo until a signal (exit status 0) or until a child dies (status 1)."""
    home = options.home.expanduser().absolute()
    options = DemoOptions(home, options.host, options.port, options.images, options.workers)
    home.mkdir(parents=True, exist_ok=True)
    if not _port_free(options.host, options.port):
        say(f"error: {options.host}:{options.port} is in use; choose another port with --port")
        return 1
    environ = demo_environment(options)
    os.environ.clear()
    os.environ.update(environ)
    supervisor = Supervisor(environ, home)
    supervisor.install_signal_handlers()
    try:
        return _run(options, supervisor)
    except Interrupted:
        return 0
    except ChildExited as exc:
        say(f"error: {exc} {exc.child.describe_exit()}; stopping the others")
        _print_tail(exc.child)
        return 1
    except DemoFailed as exc:
        say(f"error: {exc}")
        return 1
    finally:
        supervisor.stop_all()


def _run(options: DemoOptions, supervisor: Supervisor) -> int:
    import django  # noqa: PLC0415  # only `demo` needs Django set up, and only from here on

    django.setup()
    from django.core.management import call_command  # noqa: PLC0415

    from rendition_worker import tasks  # noqa: PLC0415
    from rendition_worker.conf import get_settings  # noqa: PLC0415

    home = options.home
    url = f"http://{_url_host(options.host)}:{options.port}/"
    say(f"rendition-worker demo, home {home} (database, media, broker, logs)")
    call_command("migrate", interactive=False, verbosity=0)
    supervisor.check()
    password = _ensure_admin(home)
    settings = get_settings()
    # Both lanes, interactive first: a fresh upload never waits behind a backfill.
    lanes = f"{settings.queue},{settings.bulk_queue}"
    python = sys.executable
    web = ["runserver", "--noreload", "--skip-checks", f"{_url_host(options.host)}:{options.port}"]
    if ":" in options.host:
        web.insert(1, "--ipv6")
    commands = {
        "web": [python, "-m", "django", *web],
        "worker": [
            python, "-m", "celery", "-A", CELERY_APP, "worker", "--queues", lanes,
            "--pool", "prefork", "--concurrency", str(options.workers), "--loglevel", "INFO",
            # One worker on one folder: nobody to synchronise with at start or to gossip to.
            "--without-mingle", "--without-gossip",
        ],
        "beat": [python, "-m", "celery", "-A", CELERY_APP, "beat", "--loglevel", "INFO"],
    }  # fmt: skip
    for name, argv in commands.items():
        child = supervisor.start(name, argv)
        say(f"started {name}: pid {child.pid}, log {child.log}")
    _wait_until_serving(url, supervisor)
    # Catch up with whatever an interrupted earlier run left pending now, not at beat's
    # first tick an hour from now.
    tasks.reconcile.apply_async(queue=settings.bulk_queue)
    say(f"admin: {url}admin/ user {ADMIN_USER}, " + _password_line(home, password))
    if options.images is not None:
        _import(options.images, supervisor)
    say(f"gallery: {url}")
    say("Press Ctrl-C to stop.")
    while True:
        supervisor.check()
        time.sleep(POLL_SECONDS)


def _import(folder: Path, supervisor: Supervisor) -> None:
    from rendition_worker.demo.photos import (  # noqa: PLC0415
        image_files,
        photos_follow,
        photos_import,
    )

    files = image_files(folder)
    photos, created = photos_import(files, supervisor.check)
    say(f"imported {created} photos from {folder} ({len(files) - created} were there already)")
    failed = photos_follow(photos, supervisor.check)
    say(f"{len(photos)} photos: {len(photos) - len(failed)} ready, {len(failed)} failed")
    titles = {photo.pk: photo.title for photo in photos}
    for pk, error in failed.items():
        say(f"  failed: {titles[pk]}: {error}")


def _ensure_admin(home: Path) -> str | None:
    """Create the `admin` superuser with a generated password kept in home; that password."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415

    path = home / "admin-password"
    if get_user_model().objects.filter(username=ADMIN_USER).exists():
        return path.read_text(encoding="ascii").strip() if path.is_file() else None
    password = secrets.token_urlsafe(12)
    # Written before the user exists, so that a crash in between never hides the password.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(password + "\n")
    get_user_model().objects.create_superuser(ADMIN_USER, "", password)
    return password


def _password_line(home: Path, password: str | None) -> str:
    if password is None:
        return (
            "password set by you (reset it: DJANGO_SETTINGS_MODULE="
            f"{SETTINGS_MODULE} {environment.HOME}={home} django-admin changepassword admin)"
        )
    return f"password {password} (kept in {home / 'admin-password'})"


def _wait_until_serving(url: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        supervisor.check()
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError as exc:
            say(f"warning: {url} answers {exc.code}; see {supervisor.home / 'logs' / 'web.log'}")
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                log = supervisor.home / "logs" / "web.log"
                raise DemoFailed(f"{url} did not answer in {START_SECONDS} s; see {log}") from None
            time.sleep(POLL_SECONDS)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server will: a port in TIME_WAIT after the last run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    if host in _WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _print_tail(child: Child) -> None:
    try:
        lines = child.log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    say(f"last lines of {child.log}:")
    for line in lines[-LOG_TAIL_LINES:]:
        say(f"  {line}")
