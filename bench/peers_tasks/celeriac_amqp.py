"""Celeriac on the amqp:// broker (RabbitMQ; the counter and the results stay in Redis,
which is also the broker's state store):
`celeriac -A peers_tasks.celeriac_amqp worker --loglevel=warning --concurrency 8`."""

from celeriac import AsyncResult, Celeriac, shared_task

from . import AMQP_URL, URL, incr

DIST = "celeriac"
app = Celeriac("peers", broker=AMQP_URL, result_backend=URL, broker_key_prefix="peers_bench")


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
