"""`redis://`, `rediss://` (TLS), `unix://`: the production broker. Redis does the
distribution; Celeriac adds no server.

Every operation is one call of one Lua script, `redis.lua` beside this file, whose header
documents the key layout. Sorted sets and a hash per message, not Streams: a lease is a
score in one sorted set, so taking back a dead worker's messages is one range query on
deadlines (deterministic, not the chance of an `XAUTOCLAIM` sweep), priorities are part
of the ready set's score, and fencing is a compare on the message's attempt counter.
Idle workers block on a wake-up list that `publish` pushes, so a task sent to an idle
worker starts at once without polling.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..backends.base import ResultBackend, TaskMeta
from ..exceptions import BrokerError, ConfigurationError
from .base import REVOKE_KEEP, Broker, DeadLetter, Delivery, Outgoing, QueueStats, redacted

if TYPE_CHECKING:
    from ..backends.redis import RedisBackend

T = TypeVar("T")
DURABLE_TIMEOUT_MS = 5000
SCRIPT = importlib.resources.files(__package__).joinpath("redis.lua").read_text()


def connect(url: str) -> Any:
    """A redis-py client for the URL (thread-safe, with its own connection pool)."""
    try:
        import redis
    except ImportError:
        raise ConfigurationError(
            f"{redacted(url)} needs the Redis client: pip install 'celeriac[redis]'"
        ) from None
    try:
        return redis.Redis.from_url(url, health_check_interval=30)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redacted(url)}: {exc}") from None


def call(url: str, fn: Callable[[], T]) -> T:
    """Run a Redis call; a Redis failure becomes a `BrokerError` that names the server."""
    import redis

    try:
        return fn()
    except redis.RedisError as exc:
        raise BrokerError(f"Redis at {redacted(url)}: {exc}") from exc


class RedisBroker(Broker):
    def __init__(self, url: str, *, prefix: str = "celeriac", **options: Any) -> None:
        super().__init__(url, **options)
        self.prefix = prefix
        self.client = connect(url)
        self._script = self.client.register_script(SCRIPT)

    def _run(self, op: str, *args: Any) -> Any:
        argv = self.argv(op, *args)
        return call(self.url, lambda: self._script(keys=[], args=argv))

    def publish(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        if not messages:
            return {}
        args: list[Any] = [len(messages)]
        for m in messages:
            eta = "" if m.eta is None else repr(m.eta)
            key_ttl_ms = max(1, int(m.key_ttl * 1000))
            args += [m.id, m.queue, m.priority, eta, m.body, m.key or "", key_ttl_ms]
        flat = self._run("publish", *args)
        if self.durable_publish:
            self._wait_for_fsync()
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def take_keys(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        keyed = [m for m in messages if m.key is not None]
        if not keyed:
            return {}
        args: list[Any] = [len(keyed)]
        for m in keyed:
            args += [m.id, m.key, max(1, int(m.key_ttl * 1000))]
        return _holders(self._run("take_keys", *args))

    def _wait_for_fsync(self) -> None:
        """`WAITAOF 1 0`: block until this server has fsynced the write to its AOF."""
        import redis

        try:
            local, _ = self.client.execute_command("WAITAOF", 1, 0, DURABLE_TIMEOUT_MS)
        except redis.ResponseError as exc:
            raise ConfigurationError(
                f"broker_durable_publish needs Redis 7.2 or later with appendonly yes"
                f" (WAITAOF): {exc}"
            ) from None
        except redis.RedisError as exc:
            raise BrokerError(f"Redis at {redacted(self.url)}: {exc}") from exc
        if local < 1:
            raise BrokerError(
                f"Redis at {redacted(self.url)} did not fsync the message within"
                f" {DURABLE_TIMEOUT_MS} ms; it may be lost if the server crashes"
            )

    def warnings(self) -> list[str]:
        found = []
        try:
            config = self.client.config_get("appendonly", "appendfsync", "maxmemory-policy")
        except Exception:  # CONFIG may be forbidden (ACL, managed Redis): nothing to say
            return []
        text = {
            k.decode() if isinstance(k, bytes) else k: (v.decode() if isinstance(v, bytes) else v)
            for k, v in config.items()
        }
        if text.get("appendonly") != "yes":
            found.append(
                "Redis runs without appendonly: a restart of the server loses every queued"
                " task (set appendonly yes, appendfsync everysec or always)"
            )
        elif text.get("appendfsync") == "no":
            found.append("Redis appendfsync is 'no': a power loss can lose recent tasks")
        if text.get("maxmemory-policy", "noeviction") != "noeviction":
            found.append(
                f"Redis maxmemory-policy is {text['maxmemory-policy']}: under memory pressure"
                " it deletes keys, tasks included (set maxmemory-policy noeviction)"
            )
        return found

    # The arguments of each script call and the parsing of its reply are written once, here,
    # and used by this synchronous client and by the worker's asyncio one (`RedisLoopIO`).

    def argv(self, op: str, *args: Any) -> list[Any]:
        return [op, self.prefix, repr(self.clock()), *args]

    def fetch_args(self, queues: Sequence[str], limit: int, lease: float) -> list[Any]:
        unique = list(dict.fromkeys(queues))
        deadline = repr(self.clock() + lease)
        return self.argv("fetch", deadline, limit, self.max_lease_expiries, *unique)

    @staticmethod
    def deliveries(flat: list[Any]) -> list[Delivery]:
        return [
            Delivery(flat[i].decode(), flat[i + 1].decode(), flat[i + 2], flat[i + 3], flat[i + 4])
            for i in range(0, len(flat), 5)
        ]

    def renew_args(self, deliveries: Sequence[Delivery], lease: float) -> list[Any]:
        return self.argv("renew", repr(self.clock() + lease), *_pairs(deliveries))

    def ack_args(self, deliveries: Sequence[Delivery]) -> list[Any]:
        return self.argv("ack", *_pairs(deliveries))

    def wake_keys(self, queues: Sequence[str]) -> list[str]:
        return [f"{self.prefix}:wake:{q}" for q in queues]

    def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        args = self.fetch_args(queues, limit, lease)
        return self.deliveries(call(self.url, lambda: self._script(keys=[], args=args)))

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        if not deliveries:
            return []
        args = self.renew_args(deliveries, lease)
        return [bool(x) for x in call(self.url, lambda: self._script(keys=[], args=args))]

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        args = self.ack_args(deliveries)
        return [bool(x) for x in call(self.url, lambda: self._script(keys=[], args=args))]

    def nack(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        eta = repr(self.clock() + delay)
        has_body = "0" if body is None else "1"
        return bool(self._run("nack", delivery.id, delivery.attempt, eta, has_body, body or b""))

    def release(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._run("release", *_pairs(deliveries))

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        return bool(self._run("dead_letter", delivery.id, delivery.attempt, reason))

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        key = f"{self.prefix}:dead" if queue is None else f"{self.prefix}:dead:{queue}"

        def read() -> list[Any]:
            numbers = self.client.lrange(key, 0, limit - 1)
            pipe = self.client.pipeline(transaction=False)
            for n in numbers:
                pipe.hmget(
                    f"{self.prefix}:d:{n.decode()}", "id", "queue", "body", "reason", "dead_at"
                )
            return list(pipe.execute())

        return [
            DeadLetter(i.decode(), q.decode(), body, reason.decode(), float(at))
            for i, q, body, reason, at in call(self.url, read)
        ]

    def revoke(self, ids: Sequence[str], terminate: bool = False) -> list[str]:
        if not ids:
            return []
        until = repr(self.clock() + REVOKE_KEEP)
        deleted = self._run("revoke", until, "1" if terminate else "0", *ids)
        return [i.decode() for i in deleted]

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        if not ids:
            return {}
        flat = self._run("revoked", *ids)
        return {flat[i].decode(): bool(flat[i + 1]) for i in range(0, len(flat), 2)}

    def throttle(self, key: str, interval: float) -> float:
        return float(self._run("throttle", key, repr(interval)))

    def beat_lead(self, owner: str, ttl: float) -> int | None:
        token = self._run("beat_lead", owner, repr(ttl))
        return None if token is None else int(token)

    def beat_record(self, token: int, ticks: dict[str, float]) -> bool:
        pairs = [x for name, tick in ticks.items() for x in (name, repr(tick))]
        return bool(self._run("beat_record", token, *pairs))

    def beat_ticks(self) -> dict[str, float]:
        found = call(self.url, lambda: self.client.hgetall(f"{self.prefix}:beat:ticks"))
        return {k.decode(): float(v) for k, v in found.items()}

    def beat_entries(self) -> dict[str, bytes]:
        found = call(self.url, lambda: self.client.hgetall(f"{self.prefix}:beat:entries"))
        return {k.decode(): bytes(v) for k, v in found.items()}

    def beat_set_entry(self, name: str, data: bytes | None) -> None:
        key = f"{self.prefix}:beat:entries"
        if data is None:
            call(self.url, lambda: self.client.hdel(key, name))
        else:
            call(self.url, lambda: self.client.hset(key, name, data))

    def purge(self, queue: str) -> int:
        return int(self._run("purge", queue))

    def replay(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        if ids is not None and not ids:
            return 0
        return int(self._run("replay", queue or "", *(ids or ())))

    def purge_dead(self, queue: str | None = None) -> int:
        return int(self._run("purge_dead", queue or ""))

    def stats(self) -> dict[str, QueueStats]:
        flat = self._run("stats")
        found = {
            flat[i].decode(): QueueStats(*(int(x) for x in flat[i + 1 : i + 5]))
            for i in range(0, len(flat), 5)
        }
        return {q: s for q, s in sorted(found.items()) if s != QueueStats()}

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a message is published to one of the queues, or `timeout` passes."""
        keys = self.wake_keys(queues)
        call(self.url, lambda: self.client.blpop(keys, timeout=max(timeout, 0.01)))

    def on_loop(self, backend: ResultBackend | None) -> RedisLoopIO | None:
        from ..backends.redis import RedisBackend

        if backend is not None and not isinstance(backend, RedisBackend):
            return None  # results elsewhere: the worker's threads serve both
        return RedisLoopIO(self, backend)

    def close(self) -> None:
        self.client.close()


def _holders(flat: list[Any]) -> dict[str, str]:
    """A publish or take_keys reply: (id, holder)* -> {id: holder}."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _pairs(deliveries: Sequence[Delivery]) -> list[Any]:
    return [x for d in deliveries for x in (d.id, d.attempt)]


class RedisLoopIO:
    """The worker's hot path on its event loop, with redis-py's asyncio client: the same
    script, arguments and reply parsing as `RedisBroker`, without a thread hop."""

    def __init__(self, broker: RedisBroker, backend: RedisBackend | None) -> None:
        from redis.asyncio import Redis

        from ..backends.redis import STORE

        self.broker = broker
        self.backend = backend
        self.client = Redis.from_url(broker.url)
        self.script = self.client.register_script(SCRIPT)
        self.results = None  # the results server's client, when results are kept
        if backend is not None:
            same = backend.url == broker.url
            self.results = self.client if same else Redis.from_url(backend.url)
            self.store_script = self.results.register_script(STORE)

    async def _call(self, url: str, pending: Any) -> Any:
        """Await a Redis call; a Redis failure becomes a `BrokerError` naming the server."""
        import redis

        try:
            return await pending
        except redis.RedisError as exc:
            raise BrokerError(f"Redis at {redacted(url)}: {exc}") from exc

    async def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        args = self.broker.fetch_args(queues, limit, lease)
        return self.broker.deliveries(
            await self._call(self.broker.url, self.script(keys=[], args=args))
        )

    async def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        args = self.broker.renew_args(deliveries, lease)
        return [bool(x) for x in await self._call(self.broker.url, self.script(keys=[], args=args))]

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        keys = self.broker.wake_keys(queues)
        await self._call(self.broker.url, self.client.blpop(keys, timeout=max(timeout, 0.01)))

    async def store_and_ack(
        self, metas: Sequence[TaskMeta], deliveries: Sequence[Delivery]
    ) -> list[bool]:
        """Store outcomes, then ack their messages: never the other way round."""
        if metas and self.backend is not None and self.results is not None:
            store = self.store_script(keys=[], args=self.backend.store_args(metas))
            await self._call(self.backend.url, store)
        args = self.broker.ack_args(deliveries)
        return [bool(x) for x in await self._call(self.broker.url, self.script(keys=[], args=args))]

    async def close(self) -> None:
        await self.client.aclose()
        if self.results is not None and self.results is not self.client:
            await self.results.aclose()
