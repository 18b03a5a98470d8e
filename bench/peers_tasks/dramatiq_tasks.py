"""Dramatiq with its Redis broker and the Results middleware on Redis:
`dramatiq peers_tasks.dramatiq_tasks -p N -t 8`."""

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from . import LOG_LEVEL, URL, incr

DIST = "dramatiq"
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)
logging.getLogger("dramatiq").setLevel(LOG_LEVEL)  # its CLI has no log-level option


@dramatiq.actor(store_results=True)
def incr_task() -> None:
    incr()


def send() -> dramatiq.Message:
    return incr_task.send()


def wait(message: dramatiq.Message, timeout: float) -> None:
    message.get_result(block=True, timeout=int(timeout * 1000))
