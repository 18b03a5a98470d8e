"""`sqlite:///path.db`: results in an SQLite file, shared by every process on the machine.

Table `celeriac_results`: task_id (primary key), state, task, result (JSON), traceback,
info (JSON), date_done, expires_at (unix time; NULL until the task is ready).
It may live in the same file as the broker's tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._sqlite import Database
from ..envelope import dumps, loads
from .base import ResultBackend, TaskMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_results (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    task TEXT,
    result BLOB,
    traceback TEXT,
    info BLOB,
    date_done REAL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS celeriac_results_expires
    ON celeriac_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_groups (
    group_id TEXT PRIMARY KEY,
    members BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_chord_done (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
"""


class SqliteBackend(ResultBackend):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.db = Database(url, SCHEMA)

    def store(self, metas: Sequence[TaskMeta]) -> None:
        now = time.time()
        rows = [
            (
                m.task_id,
                m.state,
                m.task,
                dumps(m.result),
                m.traceback,
                dumps(m.info),
                m.date_done,
                now + self.expires if m.ready else None,
            )
            for m in metas
        ]
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO celeriac_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )

    def get(self, task_id: str) -> TaskMeta | None:
        rows = self.db.read(
            "SELECT task_id, state, task, result, traceback, info, date_done FROM celeriac_results"
            " WHERE task_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (task_id, time.time()),
        )
        if not rows:
            return None
        tid, state, task, result, tb, info, done = rows[0]
        return TaskMeta(tid, state, task, loads(result), tb, loads(info), done)

    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_groups VALUES (?, ?, ?)",
                (group_id, dumps(list(member_ids)), time.time() + self.expires),
            )

    def get_group(self, group_id: str) -> list[str] | None:
        rows = self.db.read(
            "SELECT members FROM celeriac_groups WHERE group_id = ? AND expires_at > ?",
            (group_id, time.time()),
        )
        return list(loads(rows[0][0])) if rows else None

    def chord_done(self, group_id: str, member_id: str) -> int:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO celeriac_chord_done VALUES (?, ?, ?)",
                (group_id, member_id, time.time() + self.expires),
            )
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM celeriac_chord_done WHERE group_id = ?", (group_id,)
            ).fetchone()
        return int(count)

    def forget(self, task_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM celeriac_results WHERE task_id = ?", (task_id,))

    def cleanup(self) -> int:
        with self.db.transaction() as conn:
            now = time.time()
            conn.execute("DELETE FROM celeriac_groups WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM celeriac_chord_done WHERE expires_at <= ?", (now,))
            return conn.execute(
                "DELETE FROM celeriac_results WHERE expires_at <= ?", (now,)
            ).rowcount

    def close(self) -> None:
        self.db.close()
