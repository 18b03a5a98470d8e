"""taskiq with taskiq-redis's stream broker and result backend:
`taskiq worker peers_tasks.taskiq_tasks:broker -w N --max-async-tasks 8`."""

from taskiq import AsyncTaskiqTask
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from . import URL, aincr

DIST = "taskiq"
broker = RedisStreamBroker(url=URL).with_result_backend(RedisAsyncResultBackend(redis_url=URL))


@broker.task
async def incr_task() -> None:
    await aincr()


async def connect() -> None:
    await broker.startup()


async def close() -> None:
    await broker.shutdown()


async def send() -> AsyncTaskiqTask[None]:
    return await incr_task.kiq()


async def wait(task: AsyncTaskiqTask[None], timeout: float) -> None:
    result = await task.wait_result(timeout=timeout)
    result.raise_for_error()
