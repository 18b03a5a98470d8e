"""streaQ: `streaq run peers_tasks.streaq_tasks:worker -w N`."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from streaq import Worker

from . import LOG_LEVEL, URL, aincr

DIST = "streaq"
stack = AsyncExitStack()


@asynccontextmanager
async def quiet() -> AsyncIterator[None]:
    logging.getLogger("streaq").setLevel(LOG_LEVEL)  # its CLI has no log-level option
    yield


worker = Worker(redis_url=URL, concurrency=8, lifespan=quiet)


@worker.task
async def incr_task() -> None:
    await aincr()


async def connect() -> None:
    await stack.enter_async_context(worker)


async def close() -> None:
    await stack.aclose()


async def send() -> Any:
    return await incr_task.enqueue()


async def send_many(n: int) -> None:
    await worker.enqueue_many([incr_task.enqueue() for _ in range(n)])


async def wait(task: Any, timeout: float) -> None:
    result = await task.result(timeout=timeout)
    if not result.success:
        raise RuntimeError(f"task {task.id}: {result}")
