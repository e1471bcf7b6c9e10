"""A tiny thread pool that starts a job only when its memory fits beside the running ones.

One SVT-AV1 encode of a 2560 px picture needs about 120 MB, more than three times a decoded
12 MP source at 3 bytes a pixel; with a plain pool both workers may pick one. Here a job
whose estimated memory does not fit the budget beside the running jobs waits, and the idle
worker takes the next job that fits, so both cores stay busy on cheaper work. Jobs of one
lane (AVIF encodes, which must not run two at once in a process) run one at a time without
holding a worker idle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    cost: int
    future: Future[Any]
    call: Callable[[], Any]
    lane: str | None


class BudgetPool:
    """Run callables on `workers` threads while the costs of the running ones fit `budget`.

    A job costlier than the whole budget still runs, alone. Jobs start in submission order
    except that a job that does not fit, or whose lane is busy, lets later ones go first.
    """

    def __init__(self, workers: int, budget: int) -> None:
        self._budget = budget
        self._queue: list[_Job] = []
        self._running: list[int] = []
        self._busy_lanes: set[str] = set()
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"rendition-encoder-{index}", daemon=True)
            for index in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], T], *, cost: int = 0, lane: str | None = None) -> Future[T]:
        """Queue `call` with its estimated memory `cost` in bytes; returns its future.

        Jobs given the same `lane` never run at the same time.
        """
        future: Future[T] = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._queue.append(_Job(cost, future, call, lane))
            self._changed.notify()
        return future

    def shutdown(self) -> None:
        """Cancel what has not started, wait for what runs, stop the threads."""
        with self._changed:
            self._closed = True
            for job in self._queue:
                # cancel() alone leaves concurrent.futures.wait() and as_completed() waiting;
                # the notify call tells them, as ThreadPoolExecutor's workers do.
                job.future.cancel()
                job.future.set_running_or_notify_cancel()
            self._queue.clear()
            self._changed.notify_all()
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

    def _take(self) -> _Job | None:
        with self._changed:
            while True:
                in_use = sum(self._running)
                for index, job in enumerate(self._queue):
                    if job.lane in self._busy_lanes:
                        continue
                    if not self._running or in_use + job.cost <= self._budget:
                        self._running.append(job.cost)
                        if job.lane is not None:
                            self._busy_lanes.add(job.lane)
                        return self._queue.pop(index)
                if self._closed:
                    return None
                self._changed.wait()

    def _work(self) -> None:
        while self._run_next():
            pass

    def _run_next(self) -> bool:
        # A job of its own frame: a worker that waits for the next job must not hold the last
        # one's callable, which may hold the decoded source (384 MB for a 100 MP PNG) while
        # the other worker's AVIF encode allocates beside it.
        job = self._take()
        if job is None:
            return False
        if job.future.set_running_or_notify_cancel():
            try:
                job.future.set_result(job.call())
            except BaseException as exc:  # handed to whoever waits on the future
                job.future.set_exception(exc)
        with self._changed:
            self._running.remove(job.cost)
            if job.lane is not None:
                self._busy_lanes.discard(job.lane)
            self._changed.notify_all()
        return True
