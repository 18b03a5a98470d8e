"""Celery with its Redis broker and Redis result backend:
`celery -A peers_tasks.celery_tasks worker -P prefork|threads -c N --loglevel=WARNING`."""

from celery import Celery
from celery.result import AsyncResult

from . import URL, incr

DIST = "celery"
app = Celery("peers", broker=URL, backend=URL)


@app.task
def incr_task() -> None:
    incr()


def send() -> AsyncResult:
    return incr_task.delay()


def wait(result: AsyncResult, timeout: float) -> None:
    result.get(timeout=timeout)
