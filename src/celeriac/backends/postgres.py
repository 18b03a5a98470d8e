"""`postgresql://` results, in the same schema as the PostgreSQL broker's tables:

results        task_id, state, task, result, traceback, info (JSON text), date_done,
               expires_at (NULL until the task is ready)
groups         a group's member ids (JSON text), expires_at
chord_members  (group_id, member_id): a chord's members that are done
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from .._postgres import Database, text
from ..envelope import dumps, loads
from ..exceptions import BrokerError, TimeoutError
from .base import ResultBackend, TaskMeta

TABLES = """
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    task TEXT,
    result BYTEA,
    traceback TEXT,
    info BYTEA,
    date_done DOUBLE PRECISION,
    expires_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS results_expires ON results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS groups (
    group_id TEXT PRIMARY KEY,
    members BYTEA NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS chord_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
"""


class PostgresBackend(ResultBackend):
    def __init__(self, url: str, *, prefix: str = "celeriac", **options: Any) -> None:
        super().__init__(url, **options)
        self.db = Database(url, prefix, TABLES, last_table="chord_members")
        # A task reaching a ready state is NOTIFYed here (its id), so `wait` does not poll.
        self.channel = f"celeriac_done_{self.db.schema}"[:63]
        self._listeners = threading.local()

    def store(self, metas: Sequence[TaskMeta]) -> None:
        now = time.time()
        rows = [
            (
                text(m.task_id),
                m.state,
                text(m.task),
                dumps(m.result),
                text(m.traceback),
                dumps(m.info),
                m.date_done,
                now + self.expires if m.ready else None,
            )
            for m in metas
        ]
        ready = [row[0] for row, m in zip(rows, metas, strict=True) if m.ready]
        with self.db.transaction() as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO results VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (task_id) DO UPDATE SET state = excluded.state,"
                    " task = excluded.task, result = excluded.result,"
                    " traceback = excluded.traceback, info = excluded.info,"
                    " date_done = excluded.date_done, expires_at = excluded.expires_at",
                    rows,
                )
            if ready:  # delivered at commit, to every process waiting on this schema
                conn.execute(
                    "SELECT pg_notify(%s, id) FROM unnest(%s::text[]) AS id",
                    (self.channel, ready),
                )

    def wait(self, task_id: str, timeout: float | None, interval: float = 0.05) -> TaskMeta:
        """LISTEN first, then read: a result stored in between is not missed. Woken by
        each ready task's NOTIFY, it reads again when the id is this one's (and at least
        every second, should a notification be lost with a connection)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._listener()
        meta = self.get(task_id)
        while meta is None or not meta.ready:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"task {task_id} not ready after {timeout}s")
            pause = 1.0 if remaining is None else min(1.0, remaining)
            try:
                for note in listener.notifies(timeout=pause):
                    if note.payload == task_id:
                        break
            except self.db.psycopg.Error as exc:
                self._listeners.conn = None
                raise BrokerError(f"waiting for task {task_id}: {exc}") from exc
            meta = self.get(task_id)
        return meta

    def _listener(self) -> Any:
        conn = getattr(self._listeners, "conn", None)
        if conn is None or conn.closed or self._listeners.pid != os.getpid():
            from psycopg import sql

            conn = self.db.connect()
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self._listeners.conn, self._listeners.pid = conn, os.getpid()
        return conn

    def get(self, task_id: str) -> TaskMeta | None:
        return self.get_many([task_id])[0]

    def get_many(self, task_ids: Sequence[str]) -> list[TaskMeta | None]:
        if not task_ids:
            return []
        rows = self.db.read(
            "SELECT task_id, state, task, result, traceback, info, date_done FROM results"
            " WHERE task_id = ANY(%s) AND (expires_at IS NULL OR expires_at > %s)",
            (list(task_ids), time.time()),
        )
        found = {
            tid: TaskMeta(tid, state, task, loads(bytes(result)), tb, loads(bytes(info)), done)
            for tid, state, task, result, tb, info, done in rows
        }
        return [found.get(i) for i in task_ids]

    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO groups VALUES (%s, %s, %s) ON CONFLICT (group_id) DO UPDATE"
                " SET members = excluded.members, expires_at = excluded.expires_at",
                (group_id, dumps(list(member_ids)), time.time() + self.expires),
            )

    def get_group(self, group_id: str) -> list[str] | None:
        rows = self.db.read(
            "SELECT members FROM groups WHERE group_id = %s AND expires_at > %s",
            (group_id, time.time()),
        )
        return list(loads(bytes(rows[0][0]))) if rows else None

    def chord_done(self, group_id: str, member_id: str) -> int:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO chord_members VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (group_id, member_id, time.time() + self.expires),
            )
            row = conn.execute(
                "SELECT COUNT(*) FROM chord_members WHERE group_id = %s", (group_id,)
            ).fetchone()
        return int(row[0])

    def forget(self, task_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM results WHERE task_id = %s", (task_id,))

    def cleanup(self) -> int:
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM groups WHERE expires_at <= %s", (now,))
            conn.execute("DELETE FROM chord_members WHERE expires_at <= %s", (now,))
            return int(conn.execute("DELETE FROM results WHERE expires_at <= %s", (now,)).rowcount)

    def close(self) -> None:
        self.db.close()
        listener = getattr(self._listeners, "conn", None)
        if listener is not None and self._listeners.pid == os.getpid():
            listener.close()
        self._listeners = threading.local()
