"""Brokers: durable queues with leases. `from_url` picks the implementation by URL scheme."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .base import Broker, DeadLetter, Delivery, Outgoing, QueueStats

__all__ = ["Broker", "DeadLetter", "Delivery", "Outgoing", "QueueStats", "from_url"]


def from_url(
    url: str, *, prefix: str = "celeriac", state_url: str | None = None, **options: Any
) -> Broker:
    """`prefix`: the key prefix (Redis), schema (PostgreSQL) or queue-name prefix
    (RabbitMQ) on servers that several apps may share. `state_url`: for `amqp://`, the
    store of what RabbitMQ cannot keep (see `brokers/amqp.py`)."""
    scheme = url.partition("://")[0]
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, **options)
    if scheme == "sqlite":
        from .sqlite import SqliteBroker

        return SqliteBroker(url, **options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBroker

        return RedisBroker(url, prefix=prefix, **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBroker

        return PostgresBroker(url, prefix=prefix, **options)
    if scheme in ("amqp", "amqps", "pyamqp"):
        from .amqp import AmqpBroker

        if state_url is None or state_url.partition("://")[0] in ("amqp", "amqps", "pyamqp"):
            raise ConfigurationError(
                "the amqp:// broker keeps revocations, rate limits, idempotency keys and the"
                " beat's state in a second store: set broker_state_url (or result_backend) to"
                f" a redis://, postgresql:// or sqlite:/// URL (it is {state_url!r})"
            )
        state = from_url(state_url, prefix=prefix, **options)
        return AmqpBroker(url, prefix=prefix, state=state, **options)
    raise ConfigurationError(
        f"unknown broker URL {url!r}: Celeriac supports memory://, sqlite:///path.db,"
        " redis://host:port/db (also rediss:// and unix://), postgresql://user@host/db and"
        " amqp://user:password@host:5672/vhost (RabbitMQ)"
    )
