"""arq (in its own venv, bench/.venvs/arq: it needs redis-py < 6):
`arq peers_tasks.arq_tasks.WorkerSettings`."""

import logging
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

from . import LOG_LEVEL, URL, aincr

DIST = "arq"
pool: ArqRedis


async def incr_task(ctx: dict[str, Any]) -> None:
    await aincr()


async def quiet(ctx: dict[str, Any]) -> None:
    logging.getLogger("arq").setLevel(LOG_LEVEL)  # its CLI has no log-level option


class WorkerSettings:
    functions = (incr_task,)
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 8
    on_startup = quiet


async def connect() -> None:
    global pool
    pool = await create_pool(WorkerSettings.redis_settings)


async def close() -> None:
    await pool.aclose()


async def send() -> Job:
    job = await pool.enqueue_job("incr_task")
    assert job is not None
    return job


async def wait(job: Job, timeout: float) -> None:
    await job.result(timeout=timeout)
