"""Celeriac, an `async def` task on the worker's event loop:
`celeriac -A peers_tasks.celeriac_async worker --loglevel=warning --concurrency 8`."""

from celeriac import AsyncResult, Celeriac, shared_task

from . import URL, aincr

DIST = "celeriac"
app = Celeriac("peers", broker=URL)  # results go to the same Redis by default


@shared_task(name="peers.aincr")
async def aincr_task() -> None:
    await aincr()


def send() -> AsyncResult[None]:
    return aincr_task.delay()


def send_many(n: int) -> None:
    aincr_task.delay_many([() for _ in range(n)])


def wait(result: AsyncResult[None], timeout: float) -> None:
    result.get(timeout=timeout)
