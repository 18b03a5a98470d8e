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

    def forget(self, task_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM celeriac_results WHERE task_id = ?", (task_id,))

    def cleanup(self) -> int:
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM celeriac_results WHERE expires_at <= ?", (time.time(),)
            ).rowcount

    def close(self) -> None:
        self.db.close()
