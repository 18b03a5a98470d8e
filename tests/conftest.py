"""Fixtures shared by every test directory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.worker.worker import Worker
from polling import wait_until
from services import delete_test_keys, delete_test_queues, drop_test_schemas


@pytest.fixture(scope="session", autouse=True)
def _clean_test_servers() -> Iterator[None]:
    """Leave no test keys behind on the shared Redis server, no schemas on PostgreSQL, no
    queues on RabbitMQ."""
    yield
    delete_test_keys()
    drop_test_schemas()
    delete_test_queues()


@pytest.fixture
def app() -> Iterator[Celeriac]:
    """An app with everything in this process's memory."""
    application = Celeriac("tests", broker="memory://")
    yield application
    application.close()


@pytest.fixture
def sqlite_app(tmp_path: Any) -> Iterator[Celeriac]:
    application = Celeriac("tests", broker=f"sqlite:///{tmp_path}/celeriac.db")
    yield application
    application.close()


@contextmanager
def running_worker(app: Celeriac, **options: Any) -> Iterator[Worker]:
    """A worker on its own event loop in a thread of this process, stopped on exit."""
    worker = Worker(app, **options)
    ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    errors: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            loops.append(asyncio.get_running_loop())
            await worker.main(ready=ready.set)

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    assert ready.wait(10), "worker did not start"
    if errors:
        raise errors[0]
    try:
        yield worker
    finally:
        loops[0].call_soon_threadsafe(worker.request_stop)
        thread.join(15)
        assert not thread.is_alive(), "worker did not stop"
        if errors:
            raise errors[0]


@pytest.fixture
def worker_for() -> Callable[..., Any]:
    return running_worker


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """`wait_until(predicate, timeout=10, what=...)`: poll with a deadline."""
    return wait_until
