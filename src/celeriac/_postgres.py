"""PostgreSQL connections shared by the PostgreSQL broker and result backend.

`postgresql://user@host:5432/dbname` (also `postgres://`). Celeriac's tables live in a
schema of their own, named by `broker_key_prefix` (default `celeriac`), so that several
apps can share a database; they are created on first use. One connection per thread and
process, in autocommit mode, with explicit transactions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .brokers.base import redacted
from .exceptions import BrokerError, ConfigurationError


def schema_name(prefix: str) -> str:
    """A schema name from a key prefix: lower case letters, digits and underscores, at
    most 63 of them (a longer one ends in a hash of the whole, to stay distinct)."""
    name = re.sub(r"[^a-z0-9_]", "_", prefix.lower()) or "celeriac"
    if len(name) > 63:
        name = name[:50] + "_" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def text(value: str | None) -> str | None:
    """A string PostgreSQL can store in a TEXT column: it refuses NUL characters, which a
    malformed message can carry into a reason, a task name or an id."""
    return None if value is None else value.replace("\x00", "\ufffd")


class Database:
    def __init__(self, url: str, prefix: str, tables: str, last_table: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                f"{redacted(url)} needs the PostgreSQL client: pip install 'celeriac[postgres]'"
            ) from None
        self.psycopg = psycopg
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.schema = schema_name(prefix)
        self._local = threading.local()
        from psycopg import sql

        # The DDL runs only when the tables are missing: even CREATE ... IF NOT EXISTS takes
        # locks that deadlock with running workers' writes. The tables are made in one
        # transaction, so the last of them existing means all do.
        exists = "SELECT to_regclass(%s) IS NOT NULL"
        qualified = f'"{self.schema}".{last_table}'
        if not self.read(exists, (qualified,))[0][0]:
            with self.transaction() as conn:
                # Several processes may start at once: one creates, the others wait.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema,))
                if not conn.execute(exists, (qualified,)).fetchone()[0]:
                    schema = sql.Identifier(self.schema)
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                    conn.execute(tables)

    def connect(self, **options: Any) -> Any:
        """A new connection with the schema on its search path."""
        from psycopg import sql

        try:
            conn = self.psycopg.connect(self.url, autocommit=True, **options)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        except self.psycopg.Error as exc:
            raise BrokerError(f"PostgreSQL at {redacted(self.url)}: {exc}") from exc
        return conn

    def connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or conn.closed:
            conn = self.connect()
            local.conn, local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self.connection()
        try:
            with conn.transaction():
                yield conn
        except self.psycopg.Error as exc:
            if conn.broken:
                self._local.conn = None  # the next call connects again
            raise BrokerError(f"PostgreSQL at {redacted(self.url)}: {exc}") from exc

    def read(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        conn = self.connection()
        try:
            return list(conn.execute(query, params).fetchall())
        except self.psycopg.Error as exc:
            if conn.broken:
                self._local.conn = None
            raise BrokerError(f"PostgreSQL at {redacted(self.url)}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
