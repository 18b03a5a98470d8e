"""A worker running in this process (its own loop in a thread) on memory and SQLite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, TaskFailed, TimeoutError, states
from celeriac.brokers import Outgoing


@pytest.fixture(params=["memory", "sqlite"])
def any_app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Celeriac]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/w.db"
    app = Celeriac("tests", broker=url)
    yield app
    app.close()


def test_sync_and_async_tasks_return_results(any_app: Celeriac, worker_for: Any) -> None:
    @any_app.task
    def add(a: int, b: int) -> int:
        return a + b

    @any_app.task
    async def fetch_rate(currency: str) -> float:
        await asyncio.sleep(0)
        return {"EUR": 1.1}[currency]

    with worker_for(any_app):
        assert add.delay(2, 3).get(timeout=10) == 5
        assert fetch_rate.delay("EUR").get(timeout=10) == 1.1
        results = [add.delay(i, i) for i in range(50)]
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]


def test_async_tasks_run_on_the_worker_loop(app: Celeriac, worker_for: Any) -> None:
    @app.task
    async def where() -> str:
        return threading.current_thread().name

    @app.task
    def where_sync() -> str:
        return threading.current_thread().name

    with worker_for(app):
        assert where.delay().get(timeout=10) == "test-worker"
        assert where_sync.delay().get(timeout=10).startswith("celeriac-task")


def test_bound_task_sees_its_request(any_app: Celeriac, worker_for: Any) -> None:
    @any_app.task(bind=True)
    def whoami(self: Any, x: int) -> list[Any]:
        return [self.request.id, self.request.args, self.request.retries]

    with worker_for(any_app):
        result = whoami.delay(7)
        assert result.get(timeout=10) == [result.id, [7], 0]


def test_failure_stores_type_message_and_traceback(any_app: Celeriac, worker_for: Any) -> None:
    @any_app.task
    def boom() -> None:
        raise ValueError("no stock")

    with worker_for(any_app):
        result = boom.delay()
        with pytest.raises(TaskFailed, match="ValueError: no stock") as info:
            result.get(timeout=10)
        assert info.value.exc_type == "ValueError"
        assert "raise ValueError" in (info.value.traceback or "")
        assert result.state == states.FAILURE
        assert result.failed() and result.ready() and not result.successful()
        assert isinstance(result.get(propagate=False), TaskFailed)
        assert isinstance(result.result, TaskFailed)
        assert "ValueError" in (result.traceback or "")


def test_retry_runs_again_with_the_retry_count(any_app: Celeriac, worker_for: Any) -> None:
    @any_app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry(countdown=0.01)
        return self.request.retries

    @any_app.task(bind=True, max_retries=1)
    def hopeless(self: Any) -> None:
        raise self.retry(exc=KeyError("gone"), countdown=0)

    with worker_for(any_app):
        assert flaky.delay().get(timeout=10) == 2
        with pytest.raises(TaskFailed, match="KeyError"):
            hopeless.delay().get(timeout=10)


def test_progress_is_visible_while_running(
    any_app: Celeriac, worker_for: Any, wait_until: Any
) -> None:
    release = threading.Event()

    @any_app.task(bind=True)
    def export(self: Any) -> str:
        self.update_progress(3, 10, "rows")
        release.wait(10)
        return "done"

    with worker_for(any_app):
        result = export.delay()
        progress = wait_until(lambda: result.progress, what="progress")
        assert progress == {"current": 3, "total": 10, "message": "rows"}
        assert result.state == states.STARTED
        release.set()
        assert result.get(timeout=10) == "done"
        assert result.progress is None


def test_result_that_is_not_json_is_a_failure(app: Celeriac, worker_for: Any) -> None:
    @app.task
    def bad() -> object:
        return object()

    with worker_for(app), pytest.raises(TaskFailed, match="EncodeError"):
        bad.delay().get(timeout=10)


def test_bad_messages_are_dead_lettered_and_the_worker_goes_on(
    any_app: Celeriac, worker_for: Any, wait_until: Any
) -> None:
    @any_app.task
    def one(x: int) -> int:
        return x

    with worker_for(any_app):
        any_app.broker.publish([Outgoing("raw", "celeriac", b"\x00not json")])
        any_app.send_task("no.such.task", task_id="unknown")
        one.apply_async(args=[1, 2, 3], task_id="badargs")
        assert one.delay(5).get(timeout=10) == 5
        wait_until(lambda: len(any_app.broker.dead_letters()) == 3, what="three dead letters")
    dead = {d.id: d for d in any_app.broker.dead_letters()}
    assert "DecodeError" in dead["raw"].reason
    assert dead["raw"].body == b"\x00not json"
    assert "not registered" in dead["unknown"].reason
    assert "arguments do not match" in dead["badargs"].reason


def test_expired_task_is_not_run(any_app: Celeriac, worker_for: Any) -> None:
    ran = []

    @any_app.task
    def f() -> None:
        ran.append(1)

    result = f.apply_async(expires=-1)
    with worker_for(any_app), pytest.raises(TaskFailed, match="EXPIRED"):
        result.get(timeout=10)
    assert ran == []
    assert result.state == states.EXPIRED


def test_ignore_result(any_app: Celeriac, worker_for: Any, wait_until: Any) -> None:
    @any_app.task(ignore_result=True)
    def quiet() -> int:
        return 1

    with worker_for(any_app):
        result = quiet.delay()
        wait_until(lambda: not any_app.broker.stats(), what="the queue to drain")
    assert result.state == states.PENDING


def test_get_times_out_and_forget_deletes(app: Celeriac, worker_for: Any) -> None:
    @app.task
    def f() -> int:
        return 1

    result = f.delay()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.05)
    with worker_for(app):
        assert result.get(timeout=10) == 1
    result.forget()
    assert result.state == states.PENDING


def test_track_started(app: Celeriac, worker_for: Any, wait_until: Any) -> None:
    app.conf.update({"task_track_started": True})
    release = threading.Event()

    @app.task
    def slow() -> None:
        release.wait(10)

    with worker_for(app):
        result = slow.delay()
        wait_until(lambda: result.state == states.STARTED, what="STARTED")
        release.set()
        result.get(timeout=10)


def test_priorities_run_highest_first(app: Celeriac, worker_for: Any) -> None:
    order: list[int] = []

    @app.task
    def record(p: int) -> None:
        order.append(p)

    for p in [0, 5, 9, 1]:
        record.apply_async(args=[p], priority=p)
    with worker_for(app, concurrency=1, prefetch_multiplier=1):
        record.apply_async(args=[-1], priority=0).get(timeout=10)
    assert order == [9, 5, 1, 0, -1]


def test_stop_hands_back_unstarted_messages(
    app: Celeriac, worker_for: Any, wait_until: Any
) -> None:
    started = threading.Event()
    release = threading.Event()

    @app.task
    def block() -> None:
        started.set()
        release.wait(10)

    for _ in range(5):
        block.delay()
    worker_cm = worker_for(app, concurrency=1, prefetch_multiplier=5)
    worker = worker_cm.__enter__()
    assert started.wait(10)
    assert len(worker.held) == 5
    threading.Timer(0.2, release.set).start()
    worker_cm.__exit__(None, None, None)
    stats = app.broker.stats()["celeriac"]
    assert (stats.ready, stats.leased) == (4, 0)


def test_a_result_over_the_size_limit_is_a_failure(app: Celeriac, worker_for: Any) -> None:
    app.conf.update({"result_max_bytes": 100})

    @app.task
    def big() -> str:
        return "x" * 1000

    with worker_for(app), pytest.raises(TaskFailed, match="ResultTooLarge: the result is 1002"):
        big.delay().get(timeout=10)


def test_autoretry_for_retries_then_succeeds_or_fails(any_app: Celeriac, worker_for: Any) -> None:
    attempts: list[int] = []

    @any_app.task(bind=True, autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
    def flaky(self: Any, fail_times: int) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < fail_times:
            raise ConnectionError("service down")
        return self.request.retries

    @any_app.task(autoretry_for=(ConnectionError,))
    def other_error() -> None:
        raise KeyError("not retried")

    with worker_for(any_app):
        assert flaky.delay(2).get(timeout=10) == 2
        assert attempts == [0, 1, 2]
        attempts.clear()
        with pytest.raises(TaskFailed, match="ConnectionError: service down") as info:
            flaky.delay(5).get(timeout=10)
        assert attempts == [0, 1, 2]  # the first run and max_retries=2 retries
        assert "raise ConnectionError" in (info.value.traceback or "")
        with pytest.raises(TaskFailed, match="KeyError"):
            other_error.delay().get(timeout=10)
