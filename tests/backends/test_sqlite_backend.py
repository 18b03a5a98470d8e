"""SQLite only: results may share one file with the broker's tables."""

from __future__ import annotations

from pathlib import Path

from celeriac import states
from celeriac.backends import TaskMeta
from celeriac.backends.sqlite import SqliteBackend
from celeriac.brokers import Outgoing
from celeriac.brokers.sqlite import SqliteBroker


def test_backend_and_broker_in_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/app.db"
    broker, backend = SqliteBroker(url), SqliteBackend(url)
    try:
        broker.publish([Outgoing("t1", "q", b"body")])
        [delivery] = broker.fetch(["q"], 1, 30.0)
        backend.store([TaskMeta("t1", states.SUCCESS, result=3)])
        assert broker.ack([delivery]) == [True]
        assert backend.get("t1") == TaskMeta("t1", states.SUCCESS, result=3)
        assert broker.integrity_check() == "ok"
    finally:
        broker.close()
        backend.close()
