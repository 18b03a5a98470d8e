"""Task semantics with a worker in this process on the memory broker (the e2e tests run
the same on SQLite and Redis with worker processes): time limits, revoke, rate limits,
idempotency and dead-lettering a final failure."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from celeriac import Celeriac, TaskFailed, states
from celeriac.backends.base import TaskMeta
from celeriac.exceptions import SoftTimeLimitExceeded


def _error(result: Any) -> TaskFailed:
    error = result.get(timeout=10, propagate=False)
    assert isinstance(error, TaskFailed), error
    return error


def test_time_limits_of_async_and_thread_tasks(app: Celeriac, worker_for: Any) -> None:
    cleaned: list[str] = []

    @app.task(soft_time_limit=0.2)
    async def soft() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            cleaned.append("async")
            return "cleaned"
        return "slept"

    @app.task(time_limit=0.2)
    def hard() -> None:
        while True:
            time.sleep(0.01)

    with worker_for(app):
        assert soft.delay().get(timeout=10) == "cleaned"
        assert _error(hard.delay()).exc_type == "TimeLimitExceeded"
    assert cleaned == ["async"]


def test_revoke_queued_and_terminate_running(app: Celeriac, worker_for: Any) -> None:
    started = threading.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await asyncio.sleep(30)

    @app.task
    def mark() -> str:
        return "ran"

    queued = mark.delay()
    queued.revoke()
    assert queued.state == states.REVOKED
    with worker_for(app):
        running = forever.delay()
        assert started.wait(10)
        app.control.revoke(running.id, terminate=True)
        assert _error(running).exc_type == "TaskRevokedError"
        assert running.state == states.REVOKED
        assert mark.delay().get(timeout=10) == "ran"
    assert app.broker.stats() == {}


def test_rate_limit_spaces_starts(app: Celeriac, worker_for: Any) -> None:
    starts: list[float] = []

    @app.task(rate_limit="10/s")
    def limited() -> None:
        starts.append(time.monotonic())

    with worker_for(app):
        for result in [limited.delay() for _ in range(4)]:
            result.get(timeout=10)
    starts.sort()
    assert starts[-1] - starts[0] > 0.25  # 3 gaps of 0.1 s, less a poll interval of slack


def test_an_idempotent_redelivery_that_succeeded_is_not_run(
    app: Celeriac, worker_for: Any, wait_until: Any
) -> None:
    runs: list[int] = []

    @app.task(idempotent=True)
    def charge(order: int) -> int:
        runs.append(order)
        return order

    result = charge.delay(5)
    assert charge.delay(5).id == result.id
    # A worker ran it, stored its success, and died before the ack:
    app.broker.fetch(["celeriac"], 1, 0.01)
    assert app.backend is not None
    app.backend.store([TaskMeta(result.id, states.SUCCESS, charge.name, 5)])
    with worker_for(app):
        assert charge.delay(6).get(timeout=10) == 6
        wait_until(lambda: app.broker.stats() == {}, 10, "the redelivery acked")
    assert result.get(timeout=1) == 5
    assert runs == [6]


def test_dead_letter_on_failure_keeps_the_failure_and_can_be_replayed(
    app: Celeriac, worker_for: Any, wait_until: Any
) -> None:
    attempts: list[int] = []

    @app.task(
        dead_letter_on_failure=True, max_retries=1, autoretry_for=(KeyError,), default_retry_delay=0
    )
    def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) < 3:
            raise KeyError(n)
        return n

    with worker_for(app):
        result = flaky.apply_async((7,))
        error = _error(result)
        assert (error.exc_type, error.traceback is not None) == ("KeyError", True)
        [letter] = wait_until(app.broker.dead_letters, 10, "the dead letter")
        assert letter.id == result.id
        assert letter.reason == "KeyError: 7 (after 1 retries)"
        assert app.broker.replay([result.id]) == 1
        wait_until(lambda: result.state == states.SUCCESS, 10, "the replayed task")
    assert attempts == [7, 7, 7]
