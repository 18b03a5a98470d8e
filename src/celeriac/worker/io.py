"""How the worker's event loop talks to the broker and the result backend.

The hot path — fetch, renew, wait for messages, store outcomes, ack — goes through a
`LoopIO`. A broker with an asyncio client of its own (Redis) provides one with
`Broker.on_loop()`, so those calls run on the loop with no thread hop. For the others,
`ThreadedIO` runs the synchronous calls in I/O threads: one fetches, one stores and acks
(so neither waits for the other's round trips), one waits for messages, and one renews
leases, so that a heartbeat never queues behind a slow fetch or batch and a live worker
does not lose its leases. Rare calls (nack, dead-letter, release) go through the fetching
thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ..backends.base import ResultBackend, TaskMeta
from ..brokers.base import Broker, Delivery

T = TypeVar("T")


class LoopIO(Protocol):
    async def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]: ...
    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]: ...
    async def wait(self, queues: Sequence[str], timeout: float) -> None: ...
    async def store_and_ack(
        self, metas: Sequence[TaskMeta], deliveries: Sequence[Delivery]
    ) -> list[bool]: ...
    async def close(self) -> None: ...


class ThreadedIO:
    """`LoopIO` over a synchronous broker and backend, in I/O threads."""

    def __init__(self, broker: Broker, backend: ResultBackend | None) -> None:
        self.broker = broker
        self.backend = backend
        self.fetcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="celeriac-io")
        self.acker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="celeriac-ack")
        self.waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="celeriac-wait")
        self.renewer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="celeriac-renew")

    async def call(
        self, fn: Callable[..., T], *args: Any, thread: concurrent.futures.Executor | None = None
    ) -> T:
        """Run a synchronous broker or backend call in an I/O thread (the fetcher's)."""
        return await asyncio.get_running_loop().run_in_executor(thread or self.fetcher, fn, *args)

    async def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        return await self.call(self.broker.fetch, queues, limit, lease)

    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        return await self.call(self.broker.renew, deliveries, lease, thread=self.renewer)

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        await self.call(self.broker.wait, queues, timeout, thread=self.waiter)

    def _store_and_ack(
        self, metas: Sequence[TaskMeta], deliveries: Sequence[Delivery]
    ) -> list[bool]:
        if metas and self.backend is not None:
            self.backend.store(metas)
        return self.broker.ack(deliveries)

    async def store_and_ack(
        self, metas: Sequence[TaskMeta], deliveries: Sequence[Delivery]
    ) -> list[bool]:
        """Store outcomes, then ack their messages: never the other way round."""
        return await self.call(self._store_and_ack, metas, deliveries, thread=self.acker)

    async def close(self) -> None:
        self.waiter.shutdown(wait=False)  # may be blocked in a wait; nothing to lose there
        self.acker.shutdown(wait=True)
        self.renewer.shutdown(wait=True)
        self.fetcher.shutdown(wait=True)
