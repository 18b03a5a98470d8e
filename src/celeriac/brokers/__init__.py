"""Brokers: durable queues with leases. `from_url` picks the implementation by URL scheme."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .base import Broker, DeadLetter, Delivery, Outgoing, QueueStats

__all__ = ["Broker", "DeadLetter", "Delivery", "Outgoing", "QueueStats", "from_url"]


def from_url(url: str, **options: Any) -> Broker:
    scheme = url.partition("://")[0]
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, **options)
    if scheme == "sqlite":
        from .sqlite import SqliteBroker

        return SqliteBroker(url, **options)
    raise ConfigurationError(
        f"unknown broker URL {url!r}: Celeriac supports memory:// and sqlite:///path.db"
    )
