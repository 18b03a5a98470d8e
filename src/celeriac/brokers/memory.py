"""`memory://`: the broker contract in one process's memory, for tests.

Same semantics as every other broker, nothing durable. All state sits behind one lock.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import REVOKE_KEEP, Broker, DeadLetter, Delivery, Outgoing, QueueStats


@dataclass(slots=True)
class _Message:
    id: str
    queue: str
    body: bytes
    priority: int
    eta: float
    seq: int
    attempt: int = 0
    lease_until: float | None = None  # None: not leased
    lease_expiries: int = 0

    def order(self) -> tuple[int, float, int]:
        return (-self.priority, self.eta, self.seq)


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://", **options: Any) -> None:
        super().__init__(url, **options)
        self._lock = threading.Lock()
        self._messages: dict[str, _Message] = {}
        self._dead: list[DeadLetter] = []
        self._revoked: dict[str, tuple[float, bool]] = {}  # id -> (until, terminate)
        self._next_slot: dict[str, float] = {}  # rate limit key -> its next free slot
        self._keys: dict[str, tuple[str, float]] = {}  # idempotency key -> (id, until)
        self._beat_lease: tuple[str, float, int] | None = None  # owner, until, token
        self._beat_ticks: dict[str, float] = {}
        self._beat_entries: dict[str, bytes] = {}
        self._seq = itertools.count()

    def publish(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        now = self.clock()
        with self._lock:
            taken = self._take_keys(messages, now)
            for m in messages:
                if m.id in taken:
                    continue
                if m.id not in self._messages and not self._is_revoked(m.id, now):
                    eta = now if m.eta is None else m.eta
                    self._messages[m.id] = _Message(
                        m.id, m.queue, m.body, m.priority, eta, next(self._seq)
                    )
        return taken

    def take_keys(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        with self._lock:
            return self._take_keys(messages, self.clock())

    def _take_keys(self, messages: Sequence[Outgoing], now: float) -> dict[str, str]:
        taken: dict[str, str] = {}
        for m in messages:
            if m.key is None:
                continue
            holder = self._keys.get(m.key)
            if holder is not None and holder[1] > now:
                taken[m.id] = holder[0]
            else:
                self._keys[m.key] = (m.id, now + m.key_ttl)
        return taken

    def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        now = self.clock()
        wanted = set(queues)
        out: list[Delivery] = []
        with self._lock:
            due = []
            for m in list(self._messages.values()):
                if m.queue not in wanted:
                    continue
                if m.lease_until is not None:
                    if m.lease_until > now:
                        continue
                    if self._expire(m, now):
                        continue
                if m.eta <= now:
                    due.append(m)
            due.sort(key=_Message.order)
            for m in due[:limit]:
                m.attempt += 1
                m.lease_until = now + lease
                out.append(Delivery(m.id, m.queue, m.body, m.attempt, m.lease_expiries))
        return out

    def _is_revoked(self, message_id: str, now: float) -> bool:
        revoked = self._revoked.get(message_id)
        return revoked is not None and revoked[0] > now

    def _expire(self, m: _Message, now: float) -> bool:
        """A lease ran out: count it, and dead-letter the message past the limit."""
        m.lease_expiries += 1
        m.lease_until = None
        if m.lease_expiries >= self.max_lease_expiries:
            del self._messages[m.id]
            reason = f"lease expired {m.lease_expiries} times: its worker died or hung"
            self._dead.append(DeadLetter(m.id, m.queue, m.body, reason, now))
            return True
        return False

    def _owned(self, d: Delivery) -> _Message | None:
        m = self._messages.get(d.id)
        if m is None or m.attempt != d.attempt or m.lease_until is None:
            return None
        return m

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        now = self.clock()
        result = []
        with self._lock:
            for d in deliveries:
                m = self._owned(d)
                if m is not None:
                    m.lease_until = now + lease
                result.append(m is not None)
        return result

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        result = []
        with self._lock:
            for d in deliveries:
                m = self._owned(d)
                if m is not None:
                    del self._messages[d.id]
                result.append(m is not None)
        return result

    def nack(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        with self._lock:
            m = self._owned(delivery)
            if m is None:
                return False
            m.lease_until = None
            m.eta = self.clock() + delay
            m.seq = next(self._seq)
            if body is not None:
                m.body = body
            return True

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for d in deliveries:
                m = self._owned(d)
                if m is not None:
                    m.lease_until = None

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        with self._lock:
            m = self._owned(delivery)
            if m is None:
                return False
            del self._messages[m.id]
            self._dead.append(DeadLetter(m.id, m.queue, m.body, reason, self.clock()))
            return True

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            found = [d for d in reversed(self._dead) if queue is None or d.queue == queue]
        return found[:limit]

    def replay(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        now = self.clock()
        wanted = None if ids is None else set(ids)
        replayed = 0
        with self._lock:
            kept = []
            for dl in self._dead:
                chosen = (wanted is None or dl.id in wanted) and queue in (None, dl.queue)
                if chosen and dl.id not in self._messages:
                    self._messages[dl.id] = _Message(
                        dl.id, dl.queue, dl.body, 0, now, next(self._seq)
                    )
                    replayed += 1
                else:
                    kept.append(dl)
            self._dead = kept
        return replayed

    def purge_dead(self, queue: str | None = None) -> int:
        with self._lock:
            before = len(self._dead)
            self._dead = [dl for dl in self._dead if queue not in (None, dl.queue)]
            return before - len(self._dead)

    def revoke(self, ids: Sequence[str], terminate: bool = False) -> list[str]:
        now = self.clock()
        deleted = []
        with self._lock:
            self._revoked = {k: v for k, v in self._revoked.items() if v[0] > now}
            for message_id in ids:
                self._revoked[message_id] = (now + REVOKE_KEEP, terminate)
                m = self._messages.get(message_id)
                if m is not None and m.lease_until is None:
                    del self._messages[message_id]
                    deleted.append(message_id)
        return deleted

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        now = self.clock()
        with self._lock:
            return {i: self._revoked[i][1] for i in ids if self._is_revoked(i, now)}

    def throttle(self, key: str, interval: float) -> float:
        with self._lock:
            slot = max(self._next_slot.get(key, 0.0), self.clock())
            self._next_slot[key] = slot + interval
        return slot

    def beat_lead(self, owner: str, ttl: float) -> int | None:
        now = self.clock()
        with self._lock:
            held = self._beat_lease
            if held is not None and held[0] != owner and held[1] > now:
                return None
            token = 1 if held is None else held[2] + (held[0] != owner)
            self._beat_lease = (owner, now + ttl, token)
            return token

    def beat_record(self, token: int, ticks: dict[str, float]) -> bool:
        with self._lock:
            if self._beat_lease is None or self._beat_lease[2] != token:
                return False
            for name, tick in ticks.items():
                self._beat_ticks[name] = max(tick, self._beat_ticks.get(name, tick))
            return True

    def beat_ticks(self) -> dict[str, float]:
        with self._lock:
            return dict(self._beat_ticks)

    def beat_entries(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._beat_entries)

    def beat_set_entry(self, name: str, data: bytes | None) -> None:
        with self._lock:
            if data is None:
                self._beat_entries.pop(name, None)
            else:
                self._beat_entries[name] = data

    def purge(self, queue: str) -> int:
        with self._lock:
            doomed = [
                m.id for m in self._messages.values() if m.queue == queue and m.lease_until is None
            ]
            for mid in doomed:
                del self._messages[mid]
        return len(doomed)

    def stats(self) -> dict[str, QueueStats]:
        now = self.clock()
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            for m in self._messages.values():
                c = counts.setdefault(m.queue, {"ready": 0, "delayed": 0, "leased": 0, "dead": 0})
                if m.lease_until is not None and m.lease_until > now:
                    c["leased"] += 1
                elif m.eta > now:
                    c["delayed"] += 1
                else:
                    c["ready"] += 1
            for dl in self._dead:
                c = counts.setdefault(dl.queue, {"ready": 0, "delayed": 0, "leased": 0, "dead": 0})
                c["dead"] += 1
        return {q: QueueStats(**c) for q, c in sorted(counts.items())}
