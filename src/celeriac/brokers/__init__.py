"""Brokers: durable queues with leases. `from_url` picks the implementation by URL scheme."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .base import Broker, DeadLetter, Delivery, Outgoing, QueueStats

__all__ = ["Broker", "DeadLetter", "Delivery", "Outgoing", "QueueStats", "from_url"]


def from_url(url: str, *, prefix: str = "celeriac", **options: Any) -> Broker:
    """`prefix`: the key prefix (Redis) or schema (PostgreSQL) on servers that several
    apps may share."""
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
    raise ConfigurationError(
        f"unknown broker URL {url!r}: Celeriac supports memory://, sqlite:///path.db,"
        " redis://host:port/db (also rediss:// and unix://) and postgresql://user@host/db"
    )
