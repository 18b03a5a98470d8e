"""`celeriac._sqlite.Database`: a failed write transaction leaves the connection usable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from celeriac._sqlite import Database
from celeriac.exceptions import BrokerError

SCHEMA = """
CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS child (
    parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS blobs (data BLOB);
"""


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path}/t.db", SCHEMA)


def can_take_the_write_lock(path: str) -> bool:
    """Whether another connection (another process, say) can write now."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0.2)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_a_failed_commit_rolls_back(db: Database) -> None:
    # A deferred foreign key is checked at COMMIT, which then fails and, left alone, keeps
    # the transaction open: the write lock held, and every later BEGIN of this thread refused.
    db.connection().execute("PRAGMA foreign_keys = ON")
    with pytest.raises(BrokerError, match="cannot commit"), db.transaction() as conn:
        conn.execute("INSERT INTO child VALUES (42)")
    assert not db.connection().in_transaction
    assert can_take_the_write_lock(db.path)
    with db.transaction() as conn:
        conn.execute("INSERT INTO parent VALUES (1)")
    assert db.read("SELECT COUNT(*) FROM child") == [(0,)]
    assert db.read("SELECT COUNT(*) FROM parent") == [(1,)]
    db.close()


def test_an_error_that_rolled_back_by_itself_is_not_masked(db: Database) -> None:
    # On "database or disk is full" SQLite can roll the transaction back by itself; a second
    # ROLLBACK would then fail and hide the real error behind "no transaction is active".
    db.connection().execute("PRAGMA max_page_count = 20")
    with (
        pytest.raises(BrokerError, match="full"),
        db.transaction() as conn,
    ):
        conn.execute("INSERT INTO blobs VALUES (zeroblob(1000000))")
    assert not db.connection().in_transaction
    with db.transaction() as conn:
        conn.execute("INSERT INTO blobs VALUES (x'00')")
    assert db.read("SELECT COUNT(*) FROM blobs") == [(1,)]
    db.close()


def test_an_exception_in_the_transaction_rolls_it_back(db: Database) -> None:
    with pytest.raises(ZeroDivisionError), db.transaction() as conn:
        conn.execute("INSERT INTO parent VALUES (1)")
        _ = 1 / 0
    assert db.read("SELECT COUNT(*) FROM parent") == [(0,)]
    assert can_take_the_write_lock(db.path)
    db.close()
