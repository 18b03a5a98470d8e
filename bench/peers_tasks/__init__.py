"""One small module per system benchmarked by `bench/peers.py`, with the same task in each:
INCR of one Redis counter, which the benchmark watches to time a drain.

Each module defines the task, its app/broker, and the client calls the runner
(`python -m peers_tasks MODULE PHASE N`, see `__main__.py`) times:

    DIST            the distribution name, for the version column
    send()          enqueue one task, return a handle
    send_many(n)    optional: enqueue n tasks with the system's own bulk API
    wait(handle, timeout)  block until that task's result is stored
    connect(), close()     optional set-up and tear-down of the client

All of them are `async def` for the asyncio-only systems. Nothing here may import a peer
package: arq runs in its own venv (bench/.venvs/arq) that holds only arq and redis-py.
The `*amqp*` modules put only their broker on RabbitMQ (AMQP_URL); the counter and the
results stay on this Redis.
"""

from __future__ import annotations

import os
from typing import Any

URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("PEERS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")  # RabbitMQ
KEY = "peers:counter"
LOG_LEVEL = "WARNING"

_clients: dict[tuple[str, int], Any] = {}


def _client(kind: str) -> Any:
    """One client per process (a prefork or forked worker gets its own after the fork)."""
    key = (kind, os.getpid())
    if key not in _clients:
        if kind == "sync":
            import redis
        else:
            import redis.asyncio as redis  # type: ignore[no-redef]
        _clients[key] = redis.Redis.from_url(URL)
    return _clients[key]


def incr() -> None:
    """The task body of the thread and process pools."""
    _client("sync").incr(KEY)


async def aincr() -> None:
    """The task body of the event-loop workers."""
    await _client("async").incr(KEY)
