"""SQLite connections shared by the SQLite broker and result backend.

`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`, optionally
`?synchronous=full` (survive power loss; the default `normal` survives any process crash).
One connection per thread and process (connections never cross a fork), WAL journal,
writes in `BEGIN IMMEDIATE` transactions so that a read-then-write is atomic.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .exceptions import BrokerError, ConfigurationError

BUSY_TIMEOUT_MS = 30_000
_SYNCHRONOUS = {"off", "normal", "full", "extra"}


def parse_url(url: str) -> tuple[str, str]:
    """Return (path, synchronous) for a `sqlite:///...` URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.strip("/"):
        raise ConfigurationError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/file.db or sqlite:////abs/file.db"
        )
    path = parts.path[1:]  # sqlite:///a.db -> "a.db"; sqlite:////tmp/a.db -> "/tmp/a.db"
    query = parse_qs(parts.query)
    synchronous = query.pop("synchronous", ["normal"])[0].lower()
    if synchronous not in _SYNCHRONOUS or query:
        raise ConfigurationError(
            f"bad SQLite URL {url!r}: the only option is synchronous=normal|full"
        )
    return path, synchronous


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. While another process creates the database, SQLite can answer
    "database is locked" at once, without waiting out the busy timeout: wait here."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Database:
    def __init__(self, url: str, schema: str, synchronous: str | None = None) -> None:
        self.path, self.synchronous = parse_url(url)
        if synchronous is not None:  # broker_durable_publish asks for "full"
            self.synchronous = synchronous
        self.schema = schema
        self._local = threading.local()
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigurationError(f"cannot open {url!r}: directory {directory} does not exist")
        conn = self.connection()
        try:
            conn.executescript(schema)
        except sqlite3.Error as exc:
            raise BrokerError(f"cannot create tables in {self.path}: {exc}") from exc

    def connection(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
                )
                _wal(conn)
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
            except sqlite3.Error as exc:
                raise BrokerError(f"cannot open SQLite database {self.path}: {exc}") from exc
            local.conn, local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: holds SQLite's write lock from the start."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BrokerError(f"SQLite database {self.path} is unavailable: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            if conn.in_transaction:  # SQLite rolls back by itself after some errors
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise BrokerError(f"SQLite write to {self.path} failed: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A failed COMMIT can leave the transaction open: it would keep the write lock
            # (stalling every other process) and refuse this thread's next BEGIN.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise BrokerError(f"cannot commit to {self.path}: {exc}") from exc

    def read(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[Any]:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BrokerError(f"cannot read {self.path}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
