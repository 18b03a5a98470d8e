"""Celery with its broker on RabbitMQ (py-amqp) and the Redis result backend, Celery's
defaults otherwise (acks on receipt, prefetch 4 per pool process, a classic durable queue):
`celery -A peers_tasks.celery_amqp_tasks worker -P prefork -c N --loglevel=WARNING`."""

from celery import Celery
from celery.result import AsyncResult

from . import AMQP_URL, URL, incr

DIST = "celery"
QUEUE = "peers_bench_celery"  # its own queue (and exchange) on the RabbitMQ vhost
app = Celery("peers", broker=AMQP_URL, backend=URL)
app.conf.task_default_queue = QUEUE


@app.task
def incr_task() -> None:
    incr()


def connect() -> None:
    app.control.purge()  # the default queue: nothing left over from an interrupted run


def send() -> AsyncResult:
    return incr_task.delay()


def wait(result: AsyncResult, timeout: float) -> None:
    result.get(timeout=timeout)
