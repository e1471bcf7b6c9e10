"""A tiny thread pool that runs memory-heavy jobs one at a time and light ones beside them.

Two SVT-AV1 encodes of a 2560 px picture at once cost 70 MB, more than the decoded source;
with a plain pool both workers can pick one. Here a worker skips a heavy job while another
heavy job runs and takes the next light one instead, so both cores stay busy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")


class HeavyLightPool:
    """Run submitted callables on `workers` threads, at most one `heavy` job at a time."""

    def __init__(self, workers: int) -> None:
        self._jobs: list[tuple[bool, Future[Any], Callable[[], Any]]] = []
        self._ready = threading.Condition()
        self._heavy_running = False
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"rendition-encoder-{index}", daemon=True)
            for index in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], T], *, heavy: bool = False) -> Future[T]:
        """Queue `job`; jobs start in submission order, heavy ones never two at a time."""
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._jobs.append((heavy, future, job))
            self._ready.notify()
        return future

    def shutdown(self) -> None:
        """Cancel what has not started, wait for what runs, stop the threads."""
        with self._ready:
            self._closed = True
            for _, future, _ in self._jobs:
                future.cancel()
            self._jobs.clear()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def _next(self) -> tuple[bool, Future[Any], Callable[[], Any]] | None:
        with self._ready:
            while True:
                for index, (heavy, _, _) in enumerate(self._jobs):
                    if not (heavy and self._heavy_running):
                        entry = self._jobs.pop(index)
                        self._heavy_running = self._heavy_running or heavy
                        return entry
                if self._closed:
                    return None
                self._ready.wait()

    def _work(self) -> None:
        while (entry := self._next()) is not None:
            heavy, future, job = entry
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # handed to whoever waits on the future
                    future.set_exception(exc)
            if heavy:
                with self._ready:
                    self._heavy_running = False
                    self._ready.notify_all()
