"""`postgresql://`: the broker for teams whose only server is their database.

Tables, in the schema named by `broker_key_prefix` (see `_postgres.py`):

    messages   one row per message not yet acked: seq (publish order), id (unique),
               queue, priority, eta, state (0 waiting: ready once eta is reached;
               1 leased), lease_until, attempt (fencing token), lease_expiries, body
    dead       dead letters: id, queue, body, reason, dead_at
    revoked    revoked ids: id, until, terminate
    keys       idempotency keys: key, id (of the message that took it), until
    rates      rate limits: key, next_slot
    beat       the beat's state: key ("lease", "tick:<entry>", "entry:<name>"), text,
               number, token

A fetch is one transaction: leases that ran out go to the dead letters (the last chance
used) or back to waiting (counted in lease_expiries, keeping their place in line); then
one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)` leases the best waiting rows:
concurrent workers take different rows without waiting on each other, and the lease is
created in the same statement that hands the message out. Publish sends a `NOTIFY` with its
transaction; an idle worker `LISTEN`s and wakes at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .._postgres import Database, text
from ..exceptions import BrokerError
from .base import REVOKE_KEEP, Broker, DeadLetter, Delivery, Outgoing, QueueStats

TABLES = """
CREATE TABLE IF NOT EXISTS messages (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority SMALLINT NOT NULL,
    eta DOUBLE PRECISION NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_expiries INTEGER NOT NULL DEFAULT 0,
    body BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_waiting
    ON messages (queue, priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease_until) WHERE state = 1;
CREATE TABLE IF NOT EXISTS dead (
    n BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BYTEA NOT NULL,
    reason TEXT NOT NULL,
    dead_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_queue ON dead (queue, dead_at);
CREATE TABLE IF NOT EXISTS revoked (
    id TEXT PRIMARY KEY,
    until DOUBLE PRECISION NOT NULL,
    terminate BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    until DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS rates (
    key TEXT PRIMARY KEY,
    next_slot DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS beat (
    key TEXT PRIMARY KEY,
    text BYTEA,
    number DOUBLE PRECISION,
    token BIGINT
);
"""

_EXPIRED_TO_DEAD = """
WITH gone AS (
    DELETE FROM messages WHERE seq IN (
        SELECT seq FROM messages
        WHERE state = 1 AND lease_until <= %(now)s AND lease_expiries + 1 >= %(max)s
        FOR UPDATE SKIP LOCKED)
    RETURNING id, queue, body, lease_expiries)
INSERT INTO dead (id, queue, body, reason, dead_at)
SELECT id, queue, body,
       'lease expired ' || (lease_expiries + 1) || ' times: its worker died or hung', %(now)s
FROM gone
"""
# Every lease that ran out goes back (keeping its place in line), so its old holder can
# no longer ack or renew it, whichever message this fetch then takes.
_EXPIRED_TO_WAITING = """
UPDATE messages SET state = 0, lease_until = NULL, lease_expiries = lease_expiries + 1
WHERE seq IN (
    SELECT seq FROM messages WHERE state = 1 AND lease_until <= %(now)s
    FOR UPDATE SKIP LOCKED)
"""
_LEASE = """
UPDATE messages m
SET state = 1, lease_until = %(until)s, attempt = m.attempt + 1
FROM (
    SELECT seq FROM messages
    WHERE queue = ANY(%(queues)s) AND state = 0 AND eta <= %(now)s
    ORDER BY priority DESC, eta, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED) due
WHERE m.seq = due.seq
RETURNING m.id, m.queue, m.body, m.attempt, m.lease_expiries, m.priority, m.eta, m.seq
"""
_OWNED = "id = %s AND attempt = %s AND state = 1"
# Publish statements name their schema ({s}): they also run on Django's connection.
_INSERT = """
INSERT INTO {s}.messages (id, queue, priority, eta, body)
SELECT %(id)s, %(queue)s, %(priority)s, %(eta)s, %(body)s
WHERE NOT EXISTS (SELECT 1 FROM {s}.revoked WHERE id = %(id)s AND until > %(now)s)
ON CONFLICT (id) DO NOTHING
"""
_TAKE_KEY = """
INSERT INTO {s}.keys AS k (key, id, until) VALUES (%s, %s, %s)
ON CONFLICT (key) DO UPDATE SET id = excluded.id, until = excluded.until
WHERE k.until <= %s
RETURNING id
"""


class PostgresBroker(Broker):
    def __init__(self, url: str, *, prefix: str = "celeriac", **options: Any) -> None:
        super().__init__(url, **options)
        self.db = Database(url, prefix, TABLES, last_table="beat")
        self.qualified = f'"{self.db.schema}"'  # a schema name is [a-z0-9_] only
        self.channel = f"celeriac_{self.db.schema}"[:63]
        self._listen_local = threading.local()  # each waiting thread's LISTEN connection

    def publish(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        """Store the messages, and NOTIFY idle workers at commit. Inside a Django
        `transaction.atomic()` on this same database, they are written by Django's
        connection, in that transaction: they exist only if it commits (no outbox needed)."""
        if not messages:
            return {}
        django_cursor = self._django_cursor()
        if django_cursor is not None:
            with django_cursor as cur:
                return self._publish(cur, messages)
        with self.db.transaction() as conn, conn.cursor() as cur:
            return self._publish(cur, messages)

    def _publish(self, cur: Any, messages: Sequence[Outgoing]) -> dict[str, str]:
        """The statements of a publish, on a psycopg or Django cursor. Tables are named
        with their schema: Django's connection has its own search path."""
        now = self.clock()
        q = self.qualified
        taken = self._take_keys(cur, messages, now)
        rows = [
            {
                "id": m.id,
                "queue": m.queue,
                "priority": m.priority,
                "eta": now if m.eta is None else m.eta,
                "body": m.body,
                "now": now,
            }
            for m in messages
            if m.id not in taken
        ]
        if rows:
            cur.executemany(_INSERT.format(s=q), rows)
            cur.execute("SELECT pg_notify(%s, '')", (self.channel,))
        return taken

    def take_keys(self, messages: Sequence[Outgoing]) -> dict[str, str]:
        with self.db.transaction() as conn, conn.cursor() as cur:
            return self._take_keys(cur, messages, self.clock())

    def _take_keys(self, cur: Any, messages: Sequence[Outgoing], now: float) -> dict[str, str]:
        taken: dict[str, str] = {}
        q = self.qualified
        for m in messages:
            if m.key is None:
                continue
            cur.execute(_TAKE_KEY.format(s=q), (m.key, m.id, now + m.key_ttl, now))
            if cur.fetchone() is None:
                cur.execute(f"SELECT id FROM {q}.keys WHERE key = %s", (m.key,))
                taken[m.id] = cur.fetchone()[0]
        return taken

    def _django_cursor(self) -> Any:
        """A cursor of Django's connection, when a Django transaction is open on the
        database this broker uses; else None."""
        from ..contrib.django import django_ready

        if not django_ready():
            return None
        from django.db import transaction

        connection = transaction.get_connection()
        if not connection.in_atomic_block or connection.vendor != "postgresql":
            return None
        if _database_of(connection.settings_dict) != _database_of_url(self.db.url):
            return None
        return connection.cursor()  # (the default database's connection)

    def fetch(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        now = self.clock()
        params = {
            "now": now,
            "until": now + lease,
            "limit": limit,
            "max": self.max_lease_expiries,
            "queues": list(queues),
        }
        with self.db.transaction() as conn:
            conn.execute(_EXPIRED_TO_DEAD, params)
            conn.execute(_EXPIRED_TO_WAITING, params)
            rows = conn.execute(_LEASE, params).fetchall()
        rows.sort(key=lambda r: (-r[5], r[6], r[7]))
        return [Delivery(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        return self._owned(
            "UPDATE messages m SET lease_until = %s", (self.clock() + lease,), deliveries
        )

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self._owned("DELETE FROM messages m", (), deliveries)

    def _owned(
        self, change: str, params: tuple[Any, ...], deliveries: Sequence[Delivery]
    ) -> list[bool]:
        """Apply `change` (an UPDATE or DELETE of `messages m`) to the deliveries still
        owned, in one statement for the whole batch; which of them it applied to."""
        if not deliveries:
            return []
        using = "FROM" if change.startswith("UPDATE") else "USING"
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"{change} {using} unnest(%s::text[], %s::int[]) AS d(id, attempt)"
                " WHERE m.id = d.id AND m.attempt = d.attempt AND m.state = 1"
                " RETURNING m.id, m.attempt",
                (*params, [d.id for d in deliveries], [d.attempt for d in deliveries]),
            ).fetchall()
        done = {(r[0], r[1]) for r in rows}
        # As if applied one by one: a delivery listed twice is deleted (acked) only once.
        deletes, seen, answers = using == "USING", set(), []
        for d in deliveries:
            key = (d.id, d.attempt)
            answers.append(key in done and not (deletes and key in seen))
            seen.add(key)
        return answers

    def nack(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        eta = self.clock() + delay
        with self.db.transaction() as conn:
            # A new seq puts the message behind the ones already waiting, as a new publish would.
            done = conn.execute(
                "UPDATE messages SET state = 0, eta = %s, lease_until = NULL,"
                " seq = nextval(pg_get_serial_sequence('messages', 'seq')),"
                f" body = COALESCE(%s, body) WHERE {_OWNED}",
                (eta, body, delivery.id, delivery.attempt),
            ).rowcount
            if done and delay <= 0:
                conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
        return bool(done == 1)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self.db.transaction() as conn:
            for d in deliveries:
                conn.execute(
                    f"UPDATE messages SET state = 0, lease_until = NULL WHERE {_OWNED}",
                    (d.id, d.attempt),
                )
            conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute(
                f"DELETE FROM messages WHERE {_OWNED} RETURNING id, queue, body",
                (delivery.id, delivery.attempt),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO dead (id, queue, body, reason, dead_at) VALUES (%s,%s,%s,%s,%s)",
                (*row, text(reason), self.clock()),
            )
            return True

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where, params = ("WHERE queue = %s", (queue, limit)) if queue else ("", (limit,))
        rows = self.db.read(
            f"SELECT id, queue, body, reason, dead_at FROM dead {where}"
            " ORDER BY dead_at DESC, n DESC LIMIT %s",
            params,
        )
        return [DeadLetter(i, q, bytes(b), r, at) for i, q, b, r, at in rows]

    def replay(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        where, params = _dead_filter(ids, queue)
        now = self.clock()
        replayed = 0
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT n, id, queue, body FROM dead {where} ORDER BY n FOR UPDATE", params
            ).fetchall()
            for n, mid, mqueue, body in rows:
                inserted = conn.execute(
                    "INSERT INTO messages (id, queue, priority, eta, body)"
                    " VALUES (%s, %s, 0, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (mid, mqueue, now, body),
                ).rowcount
                if inserted:
                    conn.execute("DELETE FROM dead WHERE n = %s", (n,))
                    replayed += 1
            if replayed:
                conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
        return replayed

    def purge_dead(self, queue: str | None = None) -> int:
        where, params = _dead_filter(None, queue)
        with self.db.transaction() as conn:
            return int(conn.execute(f"DELETE FROM dead {where}", params).rowcount)

    def revoke(self, ids: Sequence[str], terminate: bool = False) -> list[str]:
        now = self.clock()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM revoked WHERE until <= %s", (now,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO revoked (id, until, terminate) VALUES (%s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET until = excluded.until,"
                    " terminate = excluded.terminate",
                    [(i, now + REVOKE_KEEP, terminate) for i in ids],
                )
            rows = conn.execute(
                "DELETE FROM messages WHERE id = ANY(%s) AND state = 0 RETURNING id", (list(ids),)
            ).fetchall()
        deleted = {r[0] for r in rows}
        return [i for i in ids if i in deleted]

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        if not ids:
            return {}
        rows = self.db.read(
            "SELECT id, terminate FROM revoked WHERE until > %s AND id = ANY(%s)",
            (self.clock(), list(ids)),
        )
        return {i: bool(t) for i, t in rows}

    def throttle(self, key: str, interval: float) -> float:
        now = self.clock()
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO rates (key, next_slot) VALUES (%(key)s, %(now)s + %(interval)s)"
                " ON CONFLICT (key) DO UPDATE SET next_slot ="
                " GREATEST(rates.next_slot, %(now)s) + %(interval)s"
                " RETURNING next_slot",
                {"key": key, "now": now, "interval": interval},
            ).fetchone()
        return float(row[0]) - interval

    def beat_lead(self, owner: str, ttl: float) -> int | None:
        now = self.clock()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT text, number, token FROM beat WHERE key = 'lease' FOR UPDATE"
            ).fetchone()
            held = None if row is None else bytes(row[0]).decode()
            if row is not None and held != owner and row[1] > now:
                return None
            token = 1 if row is None else int(row[2]) + (held != owner)
            conn.execute(
                "INSERT INTO beat (key, text, number, token) VALUES ('lease', %s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET text = excluded.text,"
                " number = excluded.number, token = excluded.token",
                (owner.encode(), now + ttl, token),
            )
            return token

    def beat_record(self, token: int, ticks: dict[str, float]) -> bool:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT token FROM beat WHERE key = 'lease' FOR UPDATE").fetchone()
            if row is None or row[0] != token:
                return False
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO beat (key, number) VALUES (%s, %s) ON CONFLICT (key)"
                    " DO UPDATE SET number = GREATEST(beat.number, excluded.number)",
                    [(f"tick:{name}", tick) for name, tick in ticks.items()],
                )
            return True

    def beat_ticks(self) -> dict[str, float]:
        rows = self.db.read("SELECT key, number FROM beat WHERE key LIKE 'tick:%%'")
        return {key[5:]: float(number) for key, number in rows}

    def beat_entries(self) -> dict[str, bytes]:
        rows = self.db.read("SELECT key, text FROM beat WHERE key LIKE 'entry:%%'")
        return {key[6:]: bytes(text) for key, text in rows}

    def beat_set_entry(self, name: str, data: bytes | None) -> None:
        with self.db.transaction() as conn:
            if data is None:
                conn.execute("DELETE FROM beat WHERE key = %s", (f"entry:{name}",))
            else:
                conn.execute(
                    "INSERT INTO beat (key, text) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET text = excluded.text",
                    (f"entry:{name}", data),
                )

    def purge(self, queue: str) -> int:
        with self.db.transaction() as conn:
            return int(
                conn.execute(
                    "DELETE FROM messages WHERE queue = %s AND state = 0", (queue,)
                ).rowcount
            )

    def stats(self) -> dict[str, QueueStats]:
        rows = self.db.read(
            """
            SELECT queue,
                   CASE WHEN state = 1 AND lease_until > %(now)s THEN 'leased'
                        WHEN state = 0 AND eta > %(now)s THEN 'delayed'
                        ELSE 'ready' END AS kind,
                   COUNT(*)
            FROM messages GROUP BY queue, kind
            UNION ALL
            SELECT queue, 'dead', COUNT(*) FROM dead GROUP BY queue
            """,
            {"now": self.clock()},
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, kind, n in rows:
            counts.setdefault(queue, {})[kind] = int(n)
        return {q: QueueStats(**c) for q, c in sorted(counts.items())}

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a publish NOTIFYs, or `timeout` passes (this thread's LISTEN
        connection, kept between waits)."""
        from psycopg import sql

        local = self._listen_local
        conn = getattr(local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = local.conn = self.db.connect()
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            for _ in conn.notifies(timeout=max(timeout, 0.01), stop_after=1):
                break
        except self.db.psycopg.Error as exc:
            local.conn = None
            raise BrokerError(f"waiting for messages: {exc}") from exc

    def close(self) -> None:
        self.db.close()
        conn = getattr(self._listen_local, "conn", None)
        if conn is not None:
            conn.close()


def _database_of(settings: dict[str, Any]) -> tuple[str, str, int]:
    """(host, database, port) of Django's DATABASES entry; local hosts compare equal."""
    host = settings.get("HOST") or "localhost"
    return _local(host), str(settings.get("NAME") or ""), int(settings.get("PORT") or 5432)


def _database_of_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return _local(parts.hostname or "localhost"), parts.path.lstrip("/"), parts.port or 5432


def _local(host: str) -> str:
    return (
        "localhost" if host in ("localhost", "127.0.0.1", "::1") or host.startswith("/") else host
    )


def _dead_filter(ids: Sequence[str] | None, queue: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if ids is not None:
        clauses.append("id = ANY(%s)")
        params.append(list(ids))
    if queue is not None:
        clauses.append("queue = %s")
        params.append(queue)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
