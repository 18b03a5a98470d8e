"""Celeriac, a plain function on the worker's thread pool:
`celeriac -A peers_tasks.celeriac_threads worker --loglevel=warning --concurrency 8`."""

from celeriac import AsyncResult, Celeriac, shared_task

from . import URL, incr

DIST = "celeriac"
app = Celeriac("peers", broker=URL)  # results go to the same Redis by default


@shared_task(name="peers.incr")
def incr_task() -> None:
    incr()


def send() -> AsyncResult[None]:
    return incr_task.delay()


def send_many(n: int) -> None:
    incr_task.delay_many([() for _ in range(n)])


def wait(result: AsyncResult[None], timeout: float) -> None:
    result.get(timeout=timeout)
