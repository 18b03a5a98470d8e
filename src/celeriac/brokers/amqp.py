"""`amqp://`, `amqps://` (also Celery's `pyamqp://`): RabbitMQ carries the messages; the
state store (`broker_state_url`: Redis, PostgreSQL or SQLite) keeps what AMQP has no place
for — revocations, rate-limit slots, idempotency keys and the beat's state.

Names on the server (P is `broker_key_prefix`; every queue is a durable quorum queue):

    P.<queue>           a queue's messages of priority 0
    P.<queue>@p<n>      its messages of priority n (1-9): quorum queues have no priorities
                        (before RabbitMQ 3.13), so each level is a queue, made when first used
    P@dead              the dead letters of every queue; reason and queue in their headers
    P@wake              exchange: a publish sends one small transient message per queue,
                        routed to the wake-up queue of each idle worker on that queue (a
                        delayed message wakes them through the delivery exchange)
    celeriac@delay@<k>  k = 0..27: an exchange and a queue whose messages wait 2^k ms
    celeriac@delivery   headers exchange: a message whose wait is over goes to the queue
                        named in its `celeriac-dest` header

How the contract maps to AMQP:
- publish: publisher confirms; a quorum queue confirms once a majority of its nodes wrote
  the message to disk, so a returned `publish` survives a broker restart.
- fetch: ask each priority level's queue (highest first) how many messages it holds, then
  take up to that many with a consumer whose prefetch is that number, cancelled at once:
  a fetch leases exactly what it returns. The lease is the unacked delivery: it lasts as
  long as this broker's connection, so `renew` has nothing to send. A worker that dies
  loses its connection, and one that stops answering misses its heartbeats (every
  `lease / 2` seconds) and is cut off: either way RabbitMQ puts its messages back,
  counting the return in `x-delivery-count`.
  RabbitMQ's own `consumer_timeout` (30 min by default) closes a channel whose delivery
  stays unacked longer: set it above the longest task.
- ack: `basic.ack` on the channel that fetched: a delivery tag means nothing on another
  channel or connection, which is the fencing.
- nack, release, dead_letter: publish a copy (to its queue after a delay, or to P@dead) and
  wait for the confirm, then ack the delivery. A requeue would count as a lost lease, so
  the copy carries the attempt and the lost-lease count in its headers instead.
- lost leases: each queue's `x-delivery-limit` dead-letters (at-least-once) a message to
  P@dead when its lease has been lost `max_lease_expiries` times; a copy that carries
  earlier losses is dead-lettered here, when fetched.
- delays, without the delayed-message plugin: a delayed message is published to level 27
  with a routing key of 28 bits, its delay in ms. Level k's exchange sends it to its queue
  when bit k is set (it waits 2^k ms there, then dead-letters on to level k-1) and
  straight on to level k-1 when not; after level 0 the delivery exchange routes it to its
  queue. One message waits at most 2^28 ms (3.1 days) in one pass; one that arrives
  before its eta (a longer delay) is sent round again when fetched.
- revoke: kept in the state store; a revoked message stays in its queue, and the worker
  that fetches it asks the state store and skips it (`revoke_deletes_queued`).
- dead_letters, replay, purge_dead: read P@dead without acking; closing the channel
  puts back what was not taken.
- not over AMQP: a message id published twice is stored twice; purge leaves delayed
  messages on their way; stats count ready messages and dead letters only, of the queues
  this process has used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..exceptions import BrokerError, ConfigurationError
from .base import MAX_PRIORITY, Broker, DeadLetter, Delivery, Outgoing, QueueStats, redacted

T = TypeVar("T")
log = logging.getLogger("celeriac")

LEVELS = 28  # delay levels: 2^0 .. 2^27 ms
DELAY = "celeriac@delay@{}"
DELIVERY = "celeriac@delivery"
RECHECK = 10.0  # seconds before asking again about a priority queue found missing
TAKE_WAIT = 0.05  # seconds a fetch waits for the messages a queue said it holds
MAX_SCAN = 100_000  # dead letters read at most by one listing
TIMEOUT = 30.0  # seconds a call may take before it fails

# Headers of Celeriac's messages.
H_QUEUE = "celeriac-queue"  # the queue's name, as the app calls it
H_ETA = "celeriac-eta"  # unix time it is due, when delayed
H_DEST = "celeriac-dest"  # the AMQP queue a delayed message goes to
H_ATTEMPT = "celeriac-attempt"  # fetches before this copy was made (nack, release)
H_EXPIRIES = "celeriac-expiries"  # leases lost before this copy was made
H_REASON = "celeriac-reason"  # why a dead letter is dead
H_DEAD_AT = "celeriac-dead-at"
H_NEW_LEVEL = "celeriac-new-level"  # on a wake-up: a priority level queue was just made
# Times travel as text: the client would send a float header as a 32-bit float.


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    """A time or count from a header (text, bytes or a number); None when absent."""
    if value is None:
        return None
    try:
        return float(_text(value))
    except ValueError:
        return None


def _client() -> Any:
    try:
        import aiormq
    except ImportError:
        raise ConfigurationError(
            "the amqp:// broker needs its client: pip install 'celeriac[amqp]'"
        ) from None
    return aiormq


@dataclass(slots=True)
class _Held:
    """A fetched delivery: where to ack it, and what a copy of it needs."""

    channel: Any
    tag: int
    queue: str
    priority: int
    body: bytes
    headers: dict[str, Any]


class _LoopThread:
    """An asyncio loop in a daemon thread of its own, which owns the AMQP connection: every
    thread of the process (Django views, the worker's I/O threads) sends its calls there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="celeriac-amqp", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerError(f"RabbitMQ did not answer within {timeout:.0f}s") from None

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class AmqpBroker(Broker):
    def __init__(
        self, url: str, *, prefix: str = "celeriac", state: Broker, **options: Any
    ) -> None:
        super().__init__(url, **options)
        self.aiormq = _client()
        self.prefix = prefix
        self.state = state
        self.dead_queue = f"{prefix}@dead"
        self.wake_exchange = f"{prefix}@wake"
        self._amqp_url = "amqp" + url[len("pyamqp") :] if url.startswith("pyamqp") else url
        self._thread: _LoopThread | None = None
        self._starting = threading.Lock()
        self._pid = 0
        self._worker_lease: float | None = None  # set by the first fetch: the heartbeat
        self._reset()

    def _reset(self) -> None:
        """Forget the connection and everything that lived on it."""
        self._conn: Any = None
        self._connecting: asyncio.Lock | None = None
        self._channels: dict[str, Any] = {}
        self._probes: list[Any] = []
        self._held: dict[tuple[str, int], _Held] = {}
        self._declared: set[str] = set()  # queues and exchanges known to exist
        self._missing: dict[str, float] = {}  # priority queue -> when to ask again
        self._used: set[str] = set()  # the app's queue names this process used (stats)
        self._wake_bound: set[str] = set()
        self._woken: asyncio.Event | None = None

    # The loop thread and the connection ----------------------------------------------------

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the loop thread and wait for its result (from any thread but
        that one). A forked child makes a loop and a connection of its own."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            with self._starting:  # threads of the process making their first call at once
                if self._thread is None or self._pid != os.getpid():
                    self._reset()
                    self._thread, self._pid = _LoopThread(), os.getpid()
                thread = self._thread
        return thread.run(self._guarded(make), TIMEOUT)

    async def _guarded(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            await self._connect()
            return await make()
        except self.aiormq.exceptions.AMQPError as exc:
            if isinstance(exc, self.aiormq.exceptions.ChannelPreconditionFailed):
                raise ConfigurationError(
                    f"RabbitMQ at {redacted(self.url)} refused a declaration: {exc}. A queue"
                    " keeps the arguments it was made with: every app using it must set the"
                    " same broker_max_lease_expiries, or delete the queue to make it anew"
                ) from None
            raise BrokerError(f"RabbitMQ at {redacted(self.url)}: {exc!r}") from exc
        except (OSError, ConnectionError) as exc:
            raise BrokerError(f"RabbitMQ at {redacted(self.url)}: {exc!r}") from exc
        except ValueError as exc:  # the client checks names before it sends them
            raise ConfigurationError(
                f"RabbitMQ: {exc}: queue names may have letters, digits and - _ . : # , / + only"
            ) from None

    async def _connect(self) -> None:
        if self._conn is not None and not self._conn.is_closed:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed:
                return
            if self._conn is not None:  # lost: its deliveries went back to their queues
                self._held.clear()
                self._wake_bound.clear()
                self._woken = None
            # Made whole before it is shown: other calls take a set `_conn` as ready.
            conn = await self.aiormq.connect(self._connection_url())
            channels = {
                name: await conn.channel(publisher_confirms=name == "publish")
                for name in ("publish", "get", "admin", "signal")
            }
            await channels["admin"].exchange_declare(self.wake_exchange, exchange_type="direct")
            await channels["admin"].queue_declare(
                self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            self._channels, self._probes, self._conn = channels, [], conn

    def _connection_url(self) -> str:
        """The URL with a heartbeat that follows the worker's lease: RabbitMQ closes the
        connection of a worker that stops answering (dead, frozen, cut off) after about
        two heartbeats, and so gives its messages to another worker, as a lease would."""
        if self._worker_lease is None or "heartbeat=" in self._amqp_url:
            return self._amqp_url
        joiner = "&" if "?" in self._amqp_url else "?"
        return f"{self._amqp_url}{joiner}heartbeat={max(1, round(self._worker_lease / 2))}"

    async def _channel(self, name: str) -> Any:
        """One of the connection's channels, opened again if an error closed it."""
        channel = self._channels[name]
        if channel.is_closed:
            channel = self._channels[name] = await self._conn.channel(
                publisher_confirms=name == "publish"
            )
            if name == "signal":  # the wake-up queue went with it
                self._wake_bound.clear()
                self._woken = None
        return channel

    # Names and declarations ----------------------------------------------------------------

    def _queue_name(self, queue: str, priority: int) -> str:
        priority = min(max(priority, 0), MAX_PRIORITY)
        return f"{self.prefix}.{queue}" if priority == 0 else f"{self.prefix}.{queue}@p{priority}"

    def _level_names(self, queue: str) -> list[str]:
        """The queue names of every priority level of a queue, 0 first."""
        return [self._queue_name(queue, p) for p in range(MAX_PRIORITY + 1)]

    async def _declare(self, name: str) -> None:
        """Make a message queue (once per process): quorum, dead-lettering to P@dead after
        `max_lease_expiries` lost leases, and bound to the delivery exchange for delays."""
        if name in self._declared:
            return
        admin = await self._channel("admin")
        if DELIVERY not in self._declared:
            await admin.exchange_declare(DELIVERY, exchange_type="headers", durable=True)
            self._declared.add(DELIVERY)
        arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": max(0, self.max_lease_expiries - 1),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
        }
        await admin.queue_declare(name, durable=True, arguments=arguments)
        await admin.queue_bind(name, DELIVERY, arguments={"x-match": "all", H_DEST: name})
        self._declared.add(name)
        self._missing.pop(name, None)

    async def _declare_delays(self) -> None:
        """The delay levels (see the module doc), shared by every prefix on the server."""
        if DELAY in self._declared:
            return
        admin = await self._channel("admin")
        for k in range(LEVELS):
            name, after = DELAY.format(k), DELAY.format(k - 1) if k else DELIVERY
            await admin.exchange_declare(name, exchange_type="topic", durable=True)
            await admin.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": 2**k,
                    "x-dead-letter-exchange": after,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            skip = "*." * (LEVELS - 1 - k)  # the bits of the levels above this one
            await admin.queue_bind(name, name, routing_key=f"{skip}1.#")
            await admin.exchange_bind(after, name, routing_key=f"{skip}0.#")
        self._declared.add(DELAY)

    async def _ready_counts(self, names: Sequence[str]) -> list[int | None]:
        """How many messages wait in each queue, asked all at once; None for a queue that
        does not exist (a priority level nobody used), remembered for RECHECK seconds.
        Each gets a channel of its own: asking about a missing queue closes the channel."""
        while len(self._probes) < len(names):
            self._probes.append(await self._conn.channel())

        async def count(index: int, name: str) -> int | None:
            loop = asyncio.get_running_loop()
            if name not in self._declared and self._missing.get(name, 0.0) > loop.time():
                return None
            probe = self._probes[index]
            if probe.is_closed:
                probe = self._probes[index] = await self._conn.channel()
            try:
                ok = await probe.queue_declare(name, passive=True)
            except self.aiormq.exceptions.ChannelNotFoundEntity:
                self._missing[name] = loop.time() + RECHECK
                return None
            return int(ok.message_count)

        return list(await asyncio.gather(*(count(i, n) for i, n in enumerate(names))))

    # Sending -------------------------------------------------------------------------------

    def _properties(self, message_id: str, headers: dict[str, Any]) -> Any:
        return self.aiormq.spec.Basic.Properties(
            message_id=message_id, delivery_mode=2, headers=headers
        )

    async def _send(
        self, message_id: str, body: bytes, name: str, headers: dict[str, Any], delay: float
    ) -> Awaitable[Any]:
        """Start publishing one message to queue `name`, through the delay levels when
        `delay` > 0; returns the confirm to wait for."""
        await self._declare(name)
        channel = await self._channel("publish")
        ms = int(delay * 1000)
        if ms <= 0:
            headers.pop(H_ETA, None)
            send = channel.basic_publish(
                body,
                routing_key=name,
                properties=self._properties(message_id, headers),
                mandatory=True,
            )
        else:
            await self._declare_delays()
            headers[H_DEST] = name
            bits = ".".join("1" if ms >> k & 1 else "0" for k in reversed(range(LEVELS)))
            send = channel.basic_publish(
                body,
                exchange=DELAY.format(LEVELS - 1),
                routing_key=bits,
                properties=self._properties(message_id, headers),
                mandatory=True,
            )
        confirm: Awaitable[Any] = asyncio.ensure_future(send)
        return confirm

    @staticmethod
    async def _confirmed(sends: Sequence[Awaitable[Any]]) -> None:
        for confirm in await asyncio.gather(*sends):
            if not type(confirm).__name__ == "Ack":
                raise BrokerError(f"RabbitMQ refused a message: {confirm!r}")

    async def _wake(self, queues: set[str], made: dict[str, str] | None = None) -> None:
        """Tell idle workers of these queues that messages arrived (see `wait`), and of the
        priority level queues just `made` (queue -> its name), which they then ask about
        at once instead of RECHECK seconds later."""
        signal = await self._channel("signal")
        for queue in queues:
            level = (made or {}).get(queue)
            properties = self.aiormq.spec.Basic.Properties(
                headers={H_NEW_LEVEL: level} if level else None
            )
            await signal.basic_publish(
                b"", exchange=self.wake_exchange, routing_key=queue, properties=properties
            )

    def publish(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        if not messages:
            return {}
        taken = self.state.take_keys(messages) if any(m.key for m in messages) else {}
        now = self.clock()
        kept = [m for m in messages if m.id not in taken]

        async def publish() -> None:
            sends, made = [], {}
            for m in kept:
                headers: dict[str, Any] = {H_QUEUE: m.queue}
                if m.eta is not None:
                    headers[H_ETA] = repr(m.eta)
                delay = 0.0 if m.eta is None else m.eta - now
                name = self._queue_name(m.queue, m.priority)
                if m.priority > 0 and name not in self._declared:
                    made[m.queue] = name
                sends.append(await self._send(m.id, m.body, name, headers, delay))
                self._used.add(m.queue)
            await self._confirmed(sends)
            await self._wake({m.queue for m in kept if m.eta is None or m.eta <= now}, made)

        if kept:
            self._run(publish)
        return taken

    # Fetching ------------------------------------------------------------------------------

    def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        if self._worker_lease is None:
            self._worker_lease = lease  # for the heartbeat of the connection made next
        return self._run(lambda: self._fetch(list(dict.fromkeys(queues)), limit))

    async def _fetch(self, queues: list[str], limit: int) -> list[Delivery]:
        for queue in queues:
            await self._declare(self._queue_name(queue, 0))
            self._used.add(queue)
        levels = [(p, q) for p in range(MAX_PRIORITY, -1, -1) for q in queues]
        names = [self._queue_name(q, p) for p, q in levels]
        counts = await self._ready_counts(names)
        channel = await self._channel("get")
        out: list[Delivery] = []
        for (priority, queue), name, count in zip(levels, names, counts, strict=True):
            if not count:
                continue
            for message in await self._take(channel, name, min(count, limit - len(out))):
                delivery = await self._lease(channel, message, queue, priority)
                if delivery is not None:
                    out.append(delivery)
            if len(out) >= limit:
                break
        return out

    async def _take(self, channel: Any, name: str, count: int) -> list[Any]:
        """Up to `count` messages of a queue that holds at least that many: a consumer
        whose prefetch is `count`, cancelled once they came (or after TAKE_WAIT, when
        other workers took some first). One consumer per fetch, not a `basic.get` per
        message: on a quorum queue each get is a write to its log."""
        taken: list[Any] = []
        enough = asyncio.Event()

        async def on_message(message: Any) -> None:
            taken.append(message)
            if len(taken) >= count:
                enough.set()

        await channel.basic_qos(prefetch_count=count)
        ok = await channel.basic_consume(name, on_message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), TAKE_WAIT)
        # Deliveries sent before the cancel reach us before its reply: none comes later.
        await channel.basic_cancel(ok.consumer_tag)
        return taken

    async def _lease(
        self, channel: Any, message: Any, queue: str, priority: int
    ) -> Delivery | None:
        """Record a fetched message as held; None when it is not to be handed out: a copy
        past its lost-lease limit (dead-lettered), or one fetched before its eta (sent
        round the delay levels again)."""
        properties = message.header.properties
        headers = dict(properties.headers or {})
        returns = int(headers.pop("x-delivery-count", 0))
        message_id = properties.message_id or f"no-id-{uuid.uuid4().hex}"
        attempt = int(headers.get(H_ATTEMPT, 0)) + returns + 1
        expiries = int(headers.get(H_EXPIRIES, 0)) + returns
        held = _Held(channel, message.delivery_tag, queue, priority, message.body, headers)
        self._held[(message_id, attempt)] = held
        delivery = Delivery(message_id, queue, message.body, attempt, expiries)
        if expiries >= self.max_lease_expiries:
            reason = f"lease expired {expiries} times: its worker died or hung"
            await self._dead_letter(delivery, reason)
            return None
        eta = _number(headers.get(H_ETA))
        if eta is not None and eta - self.clock() > 0.001:
            await self._copy(delivery, eta - self.clock(), None)
            return None
        return delivery

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Nothing to extend; but ask the server something first, so that a connection it
        closed (this worker was frozen past its heartbeats) is known to be gone."""

        async def owned() -> list[bool]:
            try:
                channel = await self._channel("admin")  # not "get": its qos is the fetch's
                await asyncio.wait_for(channel.basic_qos(prefetch_count=1), TIMEOUT / 6)
            except (self.aiormq.exceptions.AMQPError, ConnectionError, TimeoutError):
                return [False] * len(deliveries)  # its deliveries went back to their queues
            return [self._owned(d) is not None for d in deliveries]

        return self._run(owned)

    def _owned(self, delivery: Delivery) -> _Held | None:
        held = self._held.get((delivery.id, delivery.attempt))
        return held if held is not None and not held.channel.is_closed else None

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []

        async def ack() -> list[bool]:
            return [await self._ack(d) for d in deliveries]

        return self._run(ack)

    async def _ack(self, delivery: Delivery) -> bool:
        held = self._owned(delivery)
        self._held.pop((delivery.id, delivery.attempt), None)
        if held is None:
            return False
        try:
            await held.channel.basic_ack(held.tag)
        except self.aiormq.exceptions.AMQPError:
            return False  # its channel closed meanwhile: RabbitMQ has taken it back
        return True

    async def _copy(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        """Put a held message back as a copy (due after `delay`), then ack the delivery."""
        held = self._owned(delivery)
        if held is None:
            return False
        headers = {k: v for k, v in held.headers.items() if not k.startswith("x-")}
        headers[H_ATTEMPT] = delivery.attempt
        headers[H_EXPIRIES] = delivery.lease_expiries
        if delay > 0:
            headers[H_ETA] = repr(self.clock() + delay)
        name = self._queue_name(held.queue, held.priority)
        send = await self._send(delivery.id, body or held.body, name, headers, delay)
        await self._confirmed([send])
        if delay <= 0:
            await self._wake({held.queue})
        return await self._ack(delivery)

    def nack(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        return self._run(lambda: self._copy(delivery, delay, body))

    def release(self, deliveries: Sequence[Delivery]) -> None:
        async def release() -> None:
            for delivery in deliveries:
                await self._copy(delivery, 0.0, None)

        self._run(release)

    # Dead letters --------------------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        return self._run(lambda: self._dead_letter(delivery, reason))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> bool:
        held = self._owned(delivery)
        if held is None:
            return False
        headers = {H_QUEUE: held.queue, H_REASON: reason, H_DEAD_AT: repr(self.clock())}
        channel = await self._channel("publish")
        await self._confirmed(
            [
                channel.basic_publish(
                    held.body,
                    routing_key=self.dead_queue,
                    properties=self._properties(delivery.id, headers),
                    mandatory=True,
                )
            ]
        )
        return await self._ack(delivery)

    async def _read_dead(self) -> tuple[Any, list[tuple[int, DeadLetter]]]:
        """Every dead letter (up to MAX_SCAN), held unacked on a channel of its own: the
        caller acks those it takes and closes the channel, which puts the others back."""
        channel = await self._conn.channel()
        found: list[tuple[int, DeadLetter]] = []
        while len(found) < MAX_SCAN:
            message = await channel.basic_get(self.dead_queue)
            if type(message.delivery).__name__ != "GetOk":
                break
            found.append((message.delivery_tag, self._dead_letter_of(message)))
        return channel, found

    def _dead_letter_of(self, message: Any) -> DeadLetter:
        properties = message.header.properties
        headers = properties.headers or {}
        reason = headers.get(H_REASON)
        dead_at = headers.get(H_DEAD_AT)
        if reason is None:  # dead-lettered by RabbitMQ: the queue's delivery limit
            deaths = headers.get("x-death") or [{}]
            cause = headers.get("x-first-death-reason", "unknown")
            reason = (
                f"lease expired {self.max_lease_expiries} times: its worker died or hung"
                if cause == "delivery_limit"
                else f"dead-lettered by RabbitMQ: {cause}"
            )
            when = deaths[0].get("time")
            dead_at = when.timestamp() if isinstance(when, datetime.datetime) else 0.0
        return DeadLetter(
            properties.message_id or "",
            _text(headers.get(H_QUEUE, "")),
            message.body,
            _text(reason),
            _number(dead_at) or 0.0,
        )

    def _with_dead(self, use: Callable[[Any, list[tuple[int, DeadLetter]]], Awaitable[T]]) -> T:
        async def run() -> T:
            channel, found = await self._read_dead()
            try:
                return await use(channel, found)
            finally:
                await channel.close()

        return self._run(run)

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        async def listing(channel: Any, found: list[tuple[int, DeadLetter]]) -> list[DeadLetter]:
            letters = [dl for _, dl in found if queue in (None, dl.queue)]
            return sorted(letters, key=lambda dl: -dl.dead_at)[:limit]

        return self._with_dead(listing)

    def replay(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        wanted = None if ids is None else set(ids)

        async def replay(channel: Any, found: list[tuple[int, DeadLetter]]) -> int:
            chosen = [
                (tag, dl)
                for tag, dl in found
                if (wanted is None or dl.id in wanted) and queue in (None, dl.queue)
            ]
            sends = [
                await self._send(
                    dl.id, dl.body, self._queue_name(dl.queue, 0), {H_QUEUE: dl.queue}, 0
                )
                for _, dl in chosen
            ]
            await self._confirmed(sends)
            for tag, _ in chosen:
                await channel.basic_ack(tag)
            await self._wake({dl.queue for _, dl in chosen})
            return len(chosen)

        return self._with_dead(replay)

    def purge_dead(self, queue: str | None = None) -> int:
        if queue is None:

            async def purge_all() -> int:
                ok = await (await self._channel("admin")).queue_purge(self.dead_queue)
                return int(ok.message_count)

            return self._run(purge_all)

        async def purge(channel: Any, found: list[tuple[int, DeadLetter]]) -> int:
            chosen = [tag for tag, dl in found if dl.queue == queue]
            for tag in chosen:
                await channel.basic_ack(tag)
            return len(chosen)

        return self._with_dead(purge)

    # Kept in the state store ---------------------------------------------------------------

    def take_keys(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        return self.state.take_keys(messages)

    revoke_deletes_queued = False  # a queued message cannot be taken out of its queue

    def revoke(self, ids: Sequence[str], terminate: bool = False) -> list[str]:
        """Deletes nothing: the worker that fetches a revoked message skips it."""
        self.state.revoke(ids, terminate)
        return []

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        return self.state.revoked(ids)

    def throttle(self, key: str, interval: float) -> float:
        return self.state.throttle(key, interval)

    def beat_lead(self, owner: str, ttl: float) -> int | None:
        return self.state.beat_lead(owner, ttl)

    def beat_record(self, token: int, ticks: dict[str, float]) -> bool:
        return self.state.beat_record(token, ticks)

    def beat_ticks(self) -> dict[str, float]:
        return self.state.beat_ticks()

    def beat_entries(self) -> dict[str, bytes]:
        return self.state.beat_entries()

    def beat_set_entry(self, name: str, data: bytes | None) -> None:
        self.state.beat_set_entry(name, data)

    # Queues --------------------------------------------------------------------------------

    def purge(self, queue: str) -> int:
        async def purge() -> int:
            self._used.add(queue)
            names = self._level_names(queue)
            counts = await self._ready_counts(names)
            admin = await self._channel("admin")
            total = 0
            for name, count in zip(names, counts, strict=True):
                if count is not None:
                    total += int((await admin.queue_purge(name)).message_count)
            return total

        return self._run(purge)

    def stats(self) -> dict[str, QueueStats]:
        async def ready() -> dict[str, int]:
            queues = sorted(self._used)
            names = [(q, n) for q in queues for n in self._level_names(q)]
            counts = await self._ready_counts([n for _, n in names])
            totals = dict.fromkeys(queues, 0)
            for (queue, _), count in zip(names, counts, strict=True):
                totals[queue] += count or 0
            return totals

        async def dead(channel: Any, found: list[tuple[int, DeadLetter]]) -> dict[str, int]:
            counts: dict[str, int] = {}
            for _, dl in found:
                counts[dl.queue] = counts.get(dl.queue, 0) + 1
            return counts

        ready_counts = self._run(ready)
        dead_counts = self._with_dead(dead)
        return {
            q: QueueStats(ready=ready_counts.get(q, 0), dead=dead_counts.get(q, 0))
            for q in sorted(set(ready_counts) | set(dead_counts))
            if ready_counts.get(q) or dead_counts.get(q)
        }

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a publish to one of the queues wakes this process, or `timeout`
        passes: the wake-up queue (one per connection, holding at most one token) is bound
        to P@wake with each queue's name, and to the delivery exchange for the delayed
        messages of the queue's levels (it gets a copy of each, and keeps the last)."""

        async def wait() -> None:
            woken = await self._wake_up_on(queues)
            if not woken.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout)
            woken.clear()

        self._run(wait)

    async def _wake_up_on(self, queues: Sequence[str]) -> asyncio.Event:
        signal = await self._channel("signal")
        if self._woken is None:
            self._woken = woken = asyncio.Event()
            ok = await signal.queue_declare(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": 1, "x-overflow": "drop-head"},
            )
            self._wake_queue = ok.queue

            async def on_token(message: Any) -> None:
                level = (message.header.properties.headers or {}).get(H_NEW_LEVEL)
                if level is not None:
                    self._missing.pop(_text(level), None)
                woken.set()

            await signal.basic_consume(self._wake_queue, on_token, no_ack=True)
        for queue in queues:
            if queue in self._wake_bound:
                continue
            await signal.queue_bind(self._wake_queue, self.wake_exchange, routing_key=queue)
            await self._declare(self._queue_name(queue, 0))  # the delivery exchange exists
            for name in self._level_names(queue):  # and a delayed message, when due
                await signal.queue_bind(
                    self._wake_queue, DELIVERY, arguments={"x-match": "all", H_DEST: name}
                )
            self._wake_bound.add(queue)
        return self._woken

    def delete_queues(self, queues: Sequence[str] = ()) -> None:
        """Delete these queues (every priority level), those this process used or
        declared, and the prefix's dead-letter queue, messages and all: for tests, and for
        an app that is gone for good."""

        async def delete() -> None:
            admin = await self._channel("admin")
            names = {n for q in {*queues, *self._used} for n in self._level_names(q)}
            names |= {n for n in self._declared if n.startswith(f"{self.prefix}.")}
            for name in sorted(names):
                await admin.queue_delete(name)
            await admin.queue_delete(self.dead_queue)
            await admin.exchange_delete(self.wake_exchange)
            self._declared.clear()

        self._run(delete)

    def warnings(self) -> list[str]:
        return [
            f"the state store (revocations, idempotency keys, the beat): {w}"
            for w in self.state.warnings()
        ]

    def close(self) -> None:
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            if self._conn is not None:
                conn = self._conn
                try:
                    thread.run(conn.close(), 5)
                except Exception as exc:  # closing anyway: nothing is lost with it
                    log.warning("closing the RabbitMQ connection failed: %s", exc)
            thread.stop()
        self._thread = None
        self._reset()
        self.state.close()
