"""Celeriac on the PostgreSQL broker (the counter the benchmark watches stays in Redis):
`celeriac -A peers_tasks.celeriac_postgres worker --loglevel=warning --concurrency 8`."""

import os

from celeriac import AsyncResult, Celeriac, shared_task

from . import incr

DIST = "celeriac"
URL = os.environ.get("PEERS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
app = Celeriac("peers", broker=URL, broker_key_prefix="peers_bench")  # results there too


@shared_task(name="peers.incr")
def incr_task() -> None:
    incr()


def connect() -> None:
    app.broker.purge("celeriac")  # nothing left over from an interrupted run


def send() -> AsyncResult[None]:
    return incr_task.delay()


def send_many(n: int) -> None:
    incr_task.delay_many([() for _ in range(n)])


def wait(result: AsyncResult[None], timeout: float) -> None:
    result.get(timeout=timeout)
