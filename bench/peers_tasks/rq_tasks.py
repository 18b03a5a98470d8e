"""RQ (its default worker forks a work horse per job): `rq worker --url URL`."""

from redis import Redis
from rq import Queue, get_current_job
from rq.job import Job

from . import KEY, URL

DIST = "rq"
queue: Queue


def incr_task() -> None:
    get_current_job().connection.incr(KEY)  # the job's own connection, made after the fork


def connect() -> None:
    global queue
    queue = Queue(connection=Redis.from_url(URL))


def send() -> Job:
    return queue.enqueue(incr_task)


def send_many(n: int) -> None:
    queue.enqueue_many([Queue.prepare_data(incr_task) for _ in range(n)])


def wait(job: Job, timeout: float) -> None:
    result = job.latest_result(timeout=int(timeout))
    if result is None or result.type != result.Type.SUCCESSFUL:
        raise RuntimeError(f"job {job.id}: {result}")
