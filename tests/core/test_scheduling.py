"""BudgetPool: jobs run, errors reach the caller, running costs never exceed the budget."""

from __future__ import annotations

import functools
import gc
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, wait

import pytest

from rendition_worker.core.scheduling import BudgetPool

# Waits that only a bug (a deadlock, a job that never starts) would exhaust.
TIMEOUT = 5.0


class Recorder:
    """Jobs that note the total cost running at once; the peak is what the budget bounds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self.peak = 0
        self.started: list[str] = []

    def job(self, name: str, cost: int, seconds: float = 0.005) -> Callable[[], str]:
        """A job of `cost` that holds it for `seconds`."""

        def run() -> str:
            with self._lock:
                self._running += cost
                self.peak = max(self.peak, self._running)
                self.started.append(name)
            time.sleep(seconds)
            with self._lock:
                self._running -= cost
            return name

        return run


def test_jobs_run_and_return_their_results() -> None:
    with BudgetPool(workers=2, budget=100) as pool:
        futures = [pool.submit(lambda n=n: n * n, cost=10) for n in range(20)]
        assert [future.result(TIMEOUT) for future in futures] == [n * n for n in range(20)]


def test_an_exception_reaches_the_caller_and_the_pool_goes_on() -> None:
    def fail() -> None:
        raise ValueError("no such pixel")

    with BudgetPool(workers=2, budget=100) as pool:
        failed = pool.submit(fail)
        with pytest.raises(ValueError, match="no such pixel"):
            failed.result(TIMEOUT)
        assert pool.submit(lambda: "still working").result(TIMEOUT) == "still working"


@pytest.mark.parametrize("workers", [2, 4])
def test_running_costs_never_exceed_the_budget(workers: int) -> None:
    recorder = Recorder()
    costs = [60, 30, 60, 10, 60, 30, 45, 60, 10, 55, 60, 30]
    with BudgetPool(workers=workers, budget=100) as pool:
        futures = [
            pool.submit(recorder.job(f"job{i}", cost), cost=cost) for i, cost in enumerate(costs)
        ]
        wait(futures, timeout=TIMEOUT)
    assert all(future.done() and future.exception() is None for future in futures)
    # That jobs do run side by side is shown by test_jobs_that_fit_together_run_together.
    assert recorder.peak <= 100


def test_jobs_that_fit_together_run_together() -> None:
    # Each job waits for the other: they pass the barrier only if both run at once.
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    with BudgetPool(workers=2, budget=100) as pool:
        futures = [pool.submit(barrier.wait, cost=50) for _ in range(2)]
        assert sorted(future.result(TIMEOUT) for future in futures) == [0, 1]


def test_a_cheap_job_overtakes_one_that_does_not_fit() -> None:
    # The first heavy job waits for the cheap one, queued behind a second heavy job: it only
    # finishes in time if the idle worker skips the heavy job that does not fit.
    cheap_ran = threading.Event()
    recorder = Recorder()
    with BudgetPool(workers=2, budget=100) as pool:
        first = pool.submit(lambda: cheap_ran.wait(TIMEOUT), cost=80)
        second = pool.submit(recorder.job("heavy", 80), cost=80)
        cheap = pool.submit(lambda: (recorder.started.append("cheap"), cheap_ran.set()), cost=10)
        assert first.result(TIMEOUT) is True
        wait([second, cheap], timeout=TIMEOUT)
    assert recorder.started == ["cheap", "heavy"]


def test_a_job_over_the_whole_budget_runs_alone() -> None:
    recorder = Recorder()
    with BudgetPool(workers=2, budget=100) as pool:
        jobs = [("small0", 1), ("huge", 500), ("small1", 1), ("small2", 1), ("small3", 1)]
        futures = [pool.submit(recorder.job(name, cost, 0.01), cost=cost) for name, cost in jobs]
        assert [future.result(TIMEOUT) for future in futures] == [name for name, _ in jobs]
    # Anything beside the huge job would have pushed the peak above its own cost.
    assert recorder.peak == 500


def test_jobs_of_one_lane_never_run_at_once() -> None:
    recorder = Recorder()
    with BudgetPool(workers=4, budget=100) as pool:
        futures = [pool.submit(recorder.job(f"avif{i}", 1, 0.01), lane="avif") for i in range(6)]
        wait(futures, timeout=TIMEOUT)
    assert all(future.done() and future.exception() is None for future in futures)
    assert recorder.peak == 1


def test_a_busy_lane_lets_other_jobs_go_first() -> None:
    # The second lane job is queued before the free one; the free one must not wait for it.
    release = threading.Event()
    with BudgetPool(workers=2, budget=100) as pool:
        first = pool.submit(lambda: release.wait(TIMEOUT), lane="avif")
        second = pool.submit(lambda: "second", lane="avif")
        free = pool.submit(release.set)
        assert first.result(TIMEOUT) is True
        assert free.done()
        assert second.result(TIMEOUT) == "second"


def test_shutdown_cancels_what_has_not_started_and_waits_for_what_runs() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []
    pool = BudgetPool(workers=1, budget=100)
    running = pool.submit(lambda: (started.set(), release.wait(TIMEOUT))[1])
    assert started.wait(TIMEOUT)
    pending = [pool.submit(lambda n=n: ran.append(n)) for n in range(3)]
    closer = threading.Thread(target=pool.shutdown)
    closer.start()
    # result() wakes up on cancellation (concurrent.futures.wait() would not: the pool only
    # calls Future.cancel(), which does not notify waiters).
    for future in pending:
        with pytest.raises(CancelledError):
            future.result(TIMEOUT)
    assert not running.done()
    release.set()
    closer.join(TIMEOUT)
    assert not closer.is_alive()
    assert running.result(0) is True
    assert ran == []


def test_a_shut_down_pool_refuses_jobs() -> None:
    pool = BudgetPool(workers=1, budget=100)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_shutdown_notifies_waiters_of_cancelled_jobs() -> None:
    started, release = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(5)

    pool = BudgetPool(1, budget=10)
    running = pool.submit(block)
    assert started.wait(5)  # the one worker is busy: the next jobs stay queued
    queued = [pool.submit(lambda: 1) for _ in range(3)]
    closer = threading.Thread(target=pool.shutdown)
    closer.start()
    done, pending = wait(queued, timeout=5)
    release.set()
    closer.join(timeout=5)
    assert not pending and all(future.cancelled() for future in done)
    assert running.result(timeout=5) is True


class Payload:
    """Something a job's callable holds, as an encode holds a resized copy."""


@pytest.mark.parametrize("workers", [1, 2])
def test_an_idle_worker_lets_go_of_the_job_it_ran(workers: int) -> None:
    # The pipeline's band jobs hold the decoded source; a worker waiting for its next job
    # must not keep it alive while the other worker's encoder allocates.
    payload = Payload()
    released = threading.Event()
    weakref.finalize(payload, released.set)
    with BudgetPool(workers, 100) as pool:
        pool.submit(functools.partial(id, payload)).result(TIMEOUT)
        del payload
        gc.collect()
        assert released.wait(TIMEOUT), "a worker still holds a finished job's callable"
