"""`sqlite:///path.db`: the embedded broker. No server; any number of processes on one machine.

Tables (created on first use):

    celeriac_messages   one row per message not yet acked
        id              message id, unique: publishing an id that is queued is a no-op
        queue, priority, eta, seq
        state           0 ready, 1 leased, 2 delayed (eta in the future)
        lease_until     unix time the lease runs out (state 1)
        attempt         fencing token, +1 at every fetch
        lease_expiries  how often a lease ran out (a worker died or hung)
        body            the encoded envelope
    celeriac_dead       dead letters: id, queue, body, reason, dead_at
    celeriac_revoked    revoked ids: id, until (unix time), terminate
    celeriac_rates      rate limits: key, next_slot (unix time)
    celeriac_keys       idempotency keys: key, id (of the message that took it), until
    celeriac_beat       the beat's state: one row per key ("lease", "tick:<entry>",
                        "entry:<name>") with text, number and token columns

Every change is one `BEGIN IMMEDIATE` transaction, so fetch-and-lease is atomic across
processes. A fetch first promotes due delayed rows and takes back expired leases, then
leases the best ready rows in one `UPDATE ... RETURNING`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .._sqlite import Database
from .base import REVOKE_KEEP, Broker, DeadLetter, Delivery, Outgoing, QueueStats

READY, LEASED, DELAYED = 0, 1, 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    eta REAL NOT NULL,
    state INTEGER NOT NULL,
    lease_until REAL,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_expiries INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_messages_ready
    ON celeriac_messages (queue, priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS celeriac_messages_delayed
    ON celeriac_messages (eta) WHERE state = 2;
CREATE INDEX IF NOT EXISTS celeriac_messages_leased
    ON celeriac_messages (lease_until) WHERE state = 1;
CREATE TABLE IF NOT EXISTS celeriac_dead (
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_dead_queue ON celeriac_dead (queue, dead_at);
CREATE TABLE IF NOT EXISTS celeriac_revoked (
    id TEXT PRIMARY KEY,
    until REAL NOT NULL,
    terminate INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_keys (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_beat (
    key TEXT PRIMARY KEY,
    text BLOB,
    number REAL,
    token INTEGER
);
CREATE TABLE IF NOT EXISTS celeriac_rates (
    key TEXT PRIMARY KEY,
    next_slot REAL NOT NULL
);
"""

# Is anything due for a fetch? A plain read, so idle workers polling take no write lock.
_ANYTHING_DUE = """
SELECT EXISTS (SELECT 1 FROM celeriac_messages WHERE state = 2 AND eta <= :now)
    OR EXISTS (SELECT 1 FROM celeriac_messages WHERE state = 1 AND lease_until <= :now)
    OR EXISTS (SELECT 1 FROM celeriac_messages WHERE state = 0 AND queue IN ({queues}))
"""
_PROMOTE = "UPDATE celeriac_messages SET state = 0 WHERE state = 2 AND eta <= :now"
_EXPIRED_TO_DEAD = """
INSERT INTO celeriac_dead (id, queue, body, reason, dead_at)
SELECT id, queue, body,
       'lease expired ' || (lease_expiries + 1) || ' times: its worker died or hung', :now
FROM celeriac_messages
WHERE state = 1 AND lease_until <= :now AND lease_expiries + 1 >= :max
"""
_DELETE_EXPIRED_DEAD = """
DELETE FROM celeriac_messages
WHERE state = 1 AND lease_until <= :now AND lease_expiries + 1 >= :max
"""
_EXPIRED_TO_READY = """
UPDATE celeriac_messages SET state = 0, lease_until = NULL, lease_expiries = lease_expiries + 1
WHERE state = 1 AND lease_until <= :now
"""
_LEASE = """
UPDATE celeriac_messages SET state = 1, lease_until = :until, attempt = attempt + 1
WHERE seq IN (
    SELECT seq FROM celeriac_messages WHERE state = 0 AND queue IN ({queues})
    ORDER BY priority DESC, eta, seq LIMIT :limit
)
RETURNING id, queue, body, attempt, lease_expiries, priority, eta, seq
"""
_OWNED = "id = ? AND attempt = ? AND state = 1"


class SqliteBroker(Broker):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.db = Database(url, SCHEMA, synchronous="full" if self.durable_publish else None)
        self._placeholders: dict[int, str] = {}

    def _queues(self, n: int) -> str:
        text = self._placeholders.get(n)
        if text is None:
            text = self._placeholders[n] = ",".join(f":q{i}" for i in range(n))
        return text

    def publish(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        now = self.clock()
        with self.db.transaction() as conn:
            taken = self._take_keys(conn, messages, now) if any(m.key for m in messages) else {}
            self._insert(conn, [m for m in messages if m.id not in taken], now)
        return taken

    def take_keys(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        with self.db.transaction() as conn:
            return self._take_keys(conn, messages, self.clock())

    @staticmethod
    def _take_keys(
        conn: sqlite3.Connection, messages: Sequence[Outgoing], now: float
    ) -> dict[str, str]:
        taken = {}
        for m in messages:
            if m.key is None:
                continue
            row = conn.execute(
                "SELECT id FROM celeriac_keys WHERE key = ? AND until > ?", (m.key, now)
            ).fetchone()
            if row is not None:
                taken[m.id] = row[0]
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO celeriac_keys (key, id, until) VALUES (?, ?, ?)",
                    (m.key, m.id, now + m.key_ttl),
                )
        return taken

    @staticmethod
    def _insert(conn: sqlite3.Connection, messages: Sequence[Outgoing], now: float) -> None:
        rows = [
            (
                m.id,
                m.queue,
                m.priority,
                now if m.eta is None else m.eta,
                DELAYED if m.eta is not None and m.eta > now else READY,
                m.body,
            )
            for m in messages
        ]
        conn.executemany(
            "INSERT OR IGNORE INTO celeriac_messages (id, queue, priority, eta, state, body)"
            " SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS"
            " (SELECT 1 FROM celeriac_revoked WHERE id = ?1 AND until > ?7)",
            [(*row, now) for row in rows],
        )

    def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        now = self.clock()
        params: dict[str, Any] = {f"q{i}": q for i, q in enumerate(queues)}
        params["now"] = now
        placeholders = self._queues(len(queues))
        if not self.db.read(_ANYTHING_DUE.format(queues=placeholders), params)[0][0]:
            return []
        params.update(until=now + lease, limit=limit, max=self.max_lease_expiries)
        with self.db.transaction() as conn:
            conn.execute(_PROMOTE, params)
            conn.execute(_EXPIRED_TO_DEAD, params)
            conn.execute(_DELETE_EXPIRED_DEAD, params)
            conn.execute(_EXPIRED_TO_READY, params)
            rows = conn.execute(_LEASE.format(queues=placeholders), params).fetchall()
        rows.sort(key=lambda r: (-r[5], r[6], r[7]))
        return [Delivery(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        until = self.clock() + lease
        with self.db.transaction() as conn:
            return [
                conn.execute(
                    f"UPDATE celeriac_messages SET lease_until = ? WHERE {_OWNED}",
                    (until, d.id, d.attempt),
                ).rowcount
                == 1
                for d in deliveries
            ]

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        with self.db.transaction() as conn:
            return [
                conn.execute(
                    f"DELETE FROM celeriac_messages WHERE {_OWNED}", (d.id, d.attempt)
                ).rowcount
                == 1
                for d in deliveries
            ]

    def nack(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        eta = self.clock() + delay
        with self.db.transaction() as conn:
            # A new seq puts the message behind the ones already waiting, as a new publish would.
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM celeriac_messages"
            ).fetchone()
            return (
                conn.execute(
                    "UPDATE celeriac_messages SET state = ?, eta = ?, lease_until = NULL,"
                    f" seq = ?, body = COALESCE(?, body) WHERE {_OWNED}",
                    (
                        DELAYED if delay > 0 else READY,
                        eta,
                        seq,
                        body,
                        delivery.id,
                        delivery.attempt,
                    ),
                ).rowcount
                == 1
            )

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                f"UPDATE celeriac_messages SET state = 0, lease_until = NULL WHERE {_OWNED}",
                [(d.id, d.attempt) for d in deliveries],
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"DELETE FROM celeriac_messages WHERE {_OWNED} RETURNING id, queue, body",
                (delivery.id, delivery.attempt),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO celeriac_dead (id, queue, body, reason, dead_at) VALUES (?,?,?,?,?)",
                (*row, reason, self.clock()),
            )
            return True

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = ("WHERE queue = ?", (queue, limit)) if queue else ("", (limit,))
        rows = self.db.read(
            f"SELECT id, queue, body, reason, dead_at FROM celeriac_dead {where}"
            " ORDER BY dead_at DESC, rowid DESC LIMIT ?",
            params,
        )
        return [DeadLetter(*r) for r in rows]

    def replay(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        where, params = _dead_filter(ids, queue)
        now = self.clock()
        replayed = 0
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT rowid, id, queue, body FROM celeriac_dead {where} ORDER BY rowid", params
            ).fetchall()
            for rowid, mid, mqueue, body in rows:
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO celeriac_messages (id, queue, priority, eta, state,"
                    " body) VALUES (?, ?, 0, ?, 0, ?)",
                    (mid, mqueue, now, body),
                ).rowcount
                if inserted:
                    conn.execute("DELETE FROM celeriac_dead WHERE rowid = ?", (rowid,))
                    replayed += 1
        return replayed

    def purge_dead(self, queue: str | None = None) -> int:
        where, params = _dead_filter(None, queue)
        with self.db.transaction() as conn:
            return conn.execute(f"DELETE FROM celeriac_dead {where}", params).rowcount

    def revoke(self, ids: Sequence[str], terminate: bool = False) -> list[str]:
        now = self.clock()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM celeriac_revoked WHERE until <= ?", (now,))
            conn.executemany(
                "INSERT OR REPLACE INTO celeriac_revoked (id, until, terminate) VALUES (?, ?, ?)",
                [(i, now + REVOKE_KEEP, int(terminate)) for i in ids],
            )
            return [
                i
                for i in ids
                if conn.execute(
                    "DELETE FROM celeriac_messages WHERE id = ? AND state != 1", (i,)
                ).rowcount
            ]

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        if not ids:
            return {}
        rows = self.db.read(
            f"SELECT id, terminate FROM celeriac_revoked WHERE until > ?"
            f" AND id IN ({','.join('?' * len(ids))})",
            (self.clock(), *ids),
        )
        return {i: bool(t) for i, t in rows}

    def throttle(self, key: str, interval: float) -> float:
        now = self.clock()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT next_slot FROM celeriac_rates WHERE key = ?", (key,)
            ).fetchone()
            slot = max(row[0] if row else 0.0, now)
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_rates (key, next_slot) VALUES (?, ?)",
                (key, slot + interval),
            )
        return float(slot)

    def beat_lead(self, owner: str, ttl: float) -> int | None:
        now = self.clock()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT text, number, token FROM celeriac_beat WHERE key = 'lease'"
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return None
            token = 1 if row is None else row[2] + (row[0] != owner)
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_beat VALUES ('lease', ?, ?, ?)",
                (owner, now + ttl, token),
            )
            return int(token)

    def beat_record(self, token: int, ticks: dict[str, float]) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT token FROM celeriac_beat WHERE key = 'lease'").fetchone()
            if row is None or row[0] != token:
                return False
            conn.executemany(
                "INSERT INTO celeriac_beat (key, number) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET number = MAX(number, excluded.number)",
                [(f"tick:{name}", tick) for name, tick in ticks.items()],
            )
            return True

    def beat_ticks(self) -> dict[str, float]:
        rows = self.db.read("SELECT key, number FROM celeriac_beat WHERE key LIKE 'tick:%'")
        return {key[5:]: number for key, number in rows}

    def beat_entries(self) -> dict[str, bytes]:
        rows = self.db.read("SELECT key, text FROM celeriac_beat WHERE key LIKE 'entry:%'")
        return {key[6:]: bytes(text) for key, text in rows}

    def beat_set_entry(self, name: str, data: bytes | None) -> None:
        with self.db.transaction() as conn:
            if data is None:
                conn.execute("DELETE FROM celeriac_beat WHERE key = ?", (f"entry:{name}",))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO celeriac_beat (key, text) VALUES (?, ?)",
                    (f"entry:{name}", data),
                )

    def purge(self, queue: str) -> int:
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM celeriac_messages WHERE queue = ? AND state != 1", (queue,)
            ).rowcount

    def stats(self) -> dict[str, QueueStats]:
        now = self.clock()
        counts: dict[str, dict[str, int]] = {}
        rows = self.db.read(
            """
            SELECT queue,
                   CASE WHEN state = 1 AND lease_until > :now THEN 'leased'
                        WHEN state = 2 AND eta > :now THEN 'delayed'
                        ELSE 'ready' END AS kind,
                   COUNT(*)
            FROM celeriac_messages GROUP BY queue, kind
            UNION ALL
            SELECT queue, 'dead', COUNT(*) FROM celeriac_dead GROUP BY queue
            """,
            {"now": now},
        )
        for queue, kind, n in rows:
            counts.setdefault(queue, {})[kind] = n
        return {q: QueueStats(**c) for q, c in sorted(counts.items())}

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check`: "ok" for a sound database."""
        try:
            return str(self.db.read("PRAGMA integrity_check")[0][0])
        except sqlite3.Error as exc:  # pragma: no cover - reported, not raised
            return str(exc)

    def close(self) -> None:
        self.db.close()


def _dead_filter(ids: Sequence[str] | None, queue: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause choosing dead letters by ids and queue (None: any)."""
    clauses, params = [], []
    if ids is not None:
        clauses.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        params += list(ids)
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
