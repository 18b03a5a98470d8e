"""The broker contract: durable queues with leases.

Every broker implements these methods with the same meaning; `tests/brokers/` checks them
on each implementation. A message is always in exactly one of these states:

    ready      waiting in its queue (eta reached)
    delayed    waiting in its queue until its eta
    leased     fetched by a worker; owned until its lease runs out
    dead       in the dead-letter store, with a reason and the original bytes
    (gone)     acknowledged, or revoked

Fetching is atomic: the lease is created in the same step that hands the message out, so a
message is never only in a worker's memory. Each fetch increments the message's `attempt`;
ack, nack, renew, release and dead_letter are fenced by it, so a worker whose lease expired
and whose message was fetched again cannot ack over the new owner. A lease that runs out
puts the message back (counted in `lease_expiries`, apart from task retries); after
`max_lease_expiries` such losses the message is dead-lettered instead.

A revoked id is remembered for `REVOKE_KEEP` seconds: its ready or delayed message is
deleted at once and a later publish of the id is dropped, so the only way to fetch a
revoked message is again (attempt > 1): after its lease ended, a retry or a hand-back.
Workers ask `revoked()` about those before running them, and about the messages they hold.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from ..backends.base import ResultBackend

MAX_PRIORITY = 9
DEFAULT_MAX_LEASE_EXPIRIES = 3
REVOKE_KEEP = 86400.0  # seconds a revoked id is remembered


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish. `priority` 0-9, higher first; `eta` is unix time or None.
    With a `key`, the message is stored only if no message took that key within the last
    `key_ttl` seconds (an idempotency key)."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None
    key: str | None = None
    key_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A fetched message and the lease on it; `attempt` is the fencing token."""

    id: str
    queue: str
    body: bytes
    attempt: int
    lease_expiries: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    queue: str
    body: bytes
    reason: str
    dead_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    ready: int = 0
    delayed: int = 0
    leased: int = 0
    dead: int = 0


Clock = Callable[[], float]


def redacted(url: str) -> str:
    """The URL with its password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Broker(ABC):
    """Durable queues with leases. Methods are thread-safe; a broker object may be shared
    by the threads of one process. Times are unix seconds from `self.clock`."""

    # False for a broker that cannot delete a queued message (amqp://): `revoke` deletes
    # nothing, and workers ask `revoked()` about every message they fetch, not only about
    # those fetched again.
    revoke_deletes_queued = True

    def __init__(
        self,
        url: str,
        *,
        max_lease_expiries: int = DEFAULT_MAX_LEASE_EXPIRIES,
        durable_publish: bool = False,
        clock: Clock = time.time,
    ) -> None:
        self.url = url
        self.max_lease_expiries = max_lease_expiries
        # publish() returns only once the messages are on disk (fsynced), not just stored.
        self.durable_publish = durable_publish
        self.clock = clock

    @abstractmethod
    def publish(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        """Store messages durably; when this returns they survive a crash of this process.
        A message id already queued (not yet acked) is not stored twice. A message whose
        `key` is taken is not stored: the result maps its id to the id holding the key."""

    @abstractmethod
    def take_keys(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        """Take the idempotency keys of these messages as `publish` does, without storing
        the messages: for a broker that keeps its messages elsewhere and its keys here
        (`amqp://`). Returns the same map as `publish` for the keys already taken."""

    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        """Lease up to `limit` due messages from `queues`, highest priority first, then
        oldest eta, then publish order. Messages whose lease ran out are due again (and
        dead-lettered instead once they have run out `max_lease_expiries` times).
        Never blocks waiting for messages."""

    @abstractmethod
    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        """Extend leases to now + `lease`. False for a delivery no longer owned."""

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove finished messages. False (and nothing changed) for a delivery no longer
        owned: its message was fetched again by someone else, or is gone."""

    @abstractmethod
    def nack(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        """Put a message back to run again after `delay` seconds, with a new body if given
        (a retry carries its retry count). Does not count as a lease expiry."""

    @abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Hand messages back unrun (a worker shutting down): due at once, not counted."""

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move a leased message to the dead-letter store with `reason`."""

    @abstractmethod
    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first, optionally of one queue."""

    @abstractmethod
    def replay(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        """Put dead letters back in their queues (all, or those with these ids, of one
        queue or all), as new messages at priority 0, due now; return how many. A dead
        letter whose id is queued again already stays where it is."""

    @abstractmethod
    def purge_dead(self, queue: str | None = None) -> int:
        """Delete the dead letters (of one queue, or all); return how many."""

    @abstractmethod
    def revoke(self, ids: Sequence[str], terminate: bool = False) -> list[str]:
        """Revoke these message ids (see the module doc); `terminate` asks the worker
        running one to stop it. Returns the ids whose ready or delayed message was deleted."""

    @abstractmethod
    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        """Which of these ids are revoked, each with its `terminate` flag."""

    @abstractmethod
    def throttle(self, key: str, interval: float) -> float:
        """Reserve the next free time slot of a rate limit: slots of one `key` are at
        least `interval` seconds apart, whoever asks. Returns the slot's unix time (now,
        or later when the limit is reached)."""

    # The beat's state (`celeriac/beat.py`) -------------------------------------------------

    @abstractmethod
    def beat_lead(self, owner: str, ttl: float) -> int | None:
        """Take or keep the beat leader lease for `ttl` seconds. While `owner` holds it,
        returns its fencing token, larger each time the lease changes hands; None while
        another owner's lease runs."""

    @abstractmethod
    def beat_record(self, token: int, ticks: dict[str, float]) -> bool:
        """Save the last tick sent of these entries (never moving one back), if `token`
        is still the lease's; else change nothing and return False."""

    @abstractmethod
    def beat_ticks(self) -> dict[str, float]:
        """The last tick sent of every entry."""

    @abstractmethod
    def beat_entries(self) -> dict[str, bytes]:
        """Entries added at run time: name -> their JSON."""

    @abstractmethod
    def beat_set_entry(self, name: str, data: bytes | None) -> None:
        """Add or replace an entry (None: remove it)."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of a queue (not leased ones); return how many."""

    @abstractmethod
    def stats(self) -> dict[str, QueueStats]:
        """Counts per queue for every queue that has messages or dead letters."""

    def warnings(self) -> list[str]:
        """Settings of the broker's server that can lose messages, for the worker to log."""
        return []

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a message may have arrived in one of the queues, or `timeout`
        seconds pass. Brokers that can be told (a wake-up list, LISTEN/NOTIFY) return
        early; this default just sleeps, making an idle worker poll."""
        time.sleep(timeout)

    def on_loop(self, backend: ResultBackend | None) -> Any:
        """The worker's hot path (fetch, renew, wait, store and ack) as coroutines on the
        running event loop, for a broker with an asyncio client (see `worker/io.py`);
        None, the default, makes the worker run the methods above in I/O threads."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
