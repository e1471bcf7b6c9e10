"""Storages that misbehave on purpose, for workers in other processes (set through STORAGES).

FlakyStorage and SlowWriteStorage save their own way, so the worker writes renditions
through their `save` (the path of S3 and of any custom storage), not through the unnamed-file
path it uses for Django's own FileSystemStorage; GatedStorage only holds its opening of a
file. They coordinate across processes through files named by environment variables, and
note the calls they break, stall or hold in a ledger the test reads.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from django.core.files.storage import FileSystemStorage

# A file holding the number of calls so far, shared by every process of a test.
COUNTER_ENV = "RENDITION_WORKER_FAULTS_COUNTER"
# Every how many calls of save() or delete() one raises OSError.
EVERY_ENV = "RENDITION_WORKER_FAULTS_EVERY"
# How many times FlakyStorage fails to delete each original (a name outside renditions/)
# before it deletes it, whatever the count of calls says.
ORIGINAL_DELETE_FAILS_ENV = "RENDITION_WORKER_FAULTS_ORIGINAL_DELETE_FAILS"
# Where FlakyStorage and SlowWriteStorage write one line per call they break or stall.
LEDGER_ENV = "RENDITION_WORKER_FAULTS_LEDGER"
# A folder where the test puts `<file name>.hold` to make GatedStorage hold that file's opening.
GATE_ENV = "RENDITION_WORKER_FAULTS_GATE"
# How long GatedStorage holds at most (a test that failed never opens the gate).
GATE_SECONDS = 60


def _ledger(line: str) -> None:
    if LEDGER_ENV not in os.environ:  # a test in this process that reads no ledger
        return
    # One write() of a short line in append mode: lines of processes never interleave.
    with Path(os.environ[LEDGER_ENV]).open("a", encoding="utf-8") as ledger:
        ledger.write(f"{line}\n")


def ledger_lines(path: Path) -> list[str]:
    """The lines of the ledger at `path` so far (none before its first line)."""
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _next_call() -> int:
    """Count one call, across processes; returns its number (1-based)."""
    with Path(os.environ[COUNTER_ENV]).open("a+", encoding="utf-8") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        number = int(counter.read() or 0) + 1
        counter.seek(0)
        counter.truncate()
        counter.write(str(number))
        return number


class FlakyStorage(FileSystemStorage):
    """Every Nth call of save() or delete() raises OSError before touching anything.

    So does every delete of an original until it has failed ORIGINAL_DELETE_FAILS times.
    Each call is a ledger line: `#<call number> <save|delete> <ok|failed> <name>`.
    """

    def _maybe_fail(self, action: str, name: str) -> None:
        number = _next_call()
        failed = number % int(os.environ.get(EVERY_ENV, "3")) == 0
        original_fails = int(os.environ.get(ORIGINAL_DELETE_FAILS_ENV, "0"))
        if original_fails and action == "delete" and not name.startswith("renditions/"):
            lines = ledger_lines(Path(os.environ[LEDGER_ENV]))
            failures = sum(line.endswith(f" delete failed {name}") for line in lines)
            failed |= failures < original_fails
        _ledger(f"#{number} {action} {'failed' if failed else 'ok'} {name}")
        if failed:
            raise OSError(f"injected storage failure #{number}: {action} {name}")

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        """Save, unless this is a call that fails."""
        self._maybe_fail("save", str(name))
        return super().save(name, content, max_length)

    def delete(self, name: str) -> None:
        """Delete, unless this is a call that fails."""
        self._maybe_fail("delete", name)
        super().delete(name)


class SlowWriteStorage(FileSystemStorage):
    """The first rendition it saves is written in place, half of it, and then stalls.

    As a disk that stalls would: half the bytes are at the final name while the worker
    waits, and a kill then leaves exactly that half-written file behind.
    """

    def _save(self, name: str, content: Any) -> str:
        if not name.startswith("renditions/") or _next_call() > 1:
            return super()._save(name, content)
        data = content.read()
        path = Path(self.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as file:
            file.write(data[: len(data) // 2])
            file.flush()
            _ledger(f"stalled {name} {len(data)}")
            time.sleep(600)  # the test kills this process now
            file.write(data[len(data) // 2 :])
        return name


class GatedStorage(FileSystemStorage):
    """Opening a file waits while the test holds it: a worker stops where the test says.

    The worker opens the source after claiming it and before anything else, so a held
    worker has its claim and an idle database session, the one the test then terminates.
    """

    def _open(self, name: str, mode: str = "rb") -> Any:
        hold = Path(os.environ[GATE_ENV]) / f"{Path(name).name}.hold"
        if hold.exists():
            _ledger(f"held {name}")
            deadline = time.monotonic() + GATE_SECONDS
            while hold.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super()._open(name, mode)
