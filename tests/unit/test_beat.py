"""The beat's rounds on the memory broker, on chosen times: catch-up policies, leader
changes, entries changed at run time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from celeriac import Celeriac, ConfigurationError, crontab
from celeriac.beat import CLEANUP_TASK, Entry
from celeriac.envelope import decode

T0 = 1_800_000_000.0  # a whole minute


def sent(app: Celeriac) -> list[tuple[str, float]]:
    """(entry, tick) of every message the beat sent, in order of tick."""
    found = [decode(d.body) for d in app.broker.fetch(["celeriac"], 1000, 60)]
    return sorted((e.headers["beat"], e.headers["tick"]) for e in found)


def test_entries_from_the_setting_in_celerys_format() -> None:
    app = Celeriac(
        "beat",
        broker="memory://",
        beat_schedule={
            "cleanup": {"task": "proj.cleanup", "schedule": 30.0},
            "report": {
                "task": "proj.report",
                "schedule": crontab(hour=7, minute=30),
                "args": [1],
                "options": {"queue": "reports"},
            },
            "hourly": {"task": "proj.h", "schedule": dt.timedelta(hours=1), "catchup": "all"},
        },
    )
    entries = app.beat.entries()
    # With results to expire, the beat also deletes the expired ones daily at 4:00.
    assert sorted(entries) == ["celeriac.backend_cleanup", "cleanup", "hourly", "report"]
    assert entries["celeriac.backend_cleanup"].schedule.hours == {4}
    assert entries["report"].args == [1]
    assert entries["hourly"].catchup == "all"
    app.conf.update({"beat_schedule": {"bad": {"task": "t", "schedule": 1, "every": 2}}})
    with pytest.raises(ConfigurationError, match="unknown key"):
        app.beat.entries()
    with pytest.raises(ConfigurationError, match="catchup must be one of"):
        Entry("x", "t", crontab(), catchup="sometimes")


def test_a_round_sends_due_ticks_once_and_records_them(app: Celeriac) -> None:
    app.beat.add("e", "proj.t", 10.0, catchup="all")
    assert app.beat.round("a", now=T0 + 1)  # a new entry starts with its next tick
    assert sent(app) == []
    assert app.beat.round("a", now=T0 + 35)
    assert sent(app) == [("e", T0 + 10), ("e", T0 + 20), ("e", T0 + 30)]
    assert app.beat.round("a", now=T0 + 36)  # nothing new
    assert sent(app) == []


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [("all", [20, 30, 40, 50]), ("last", [50]), ("skip", [])],
)
def test_catch_up_policies(app: Celeriac, catchup: str, expected: list[int]) -> None:
    app.beat.add("e", "proj.t", 10.0, catchup=catchup)
    app.beat.round("a", now=T0 + 15)
    app.beat.round("a", now=T0 + 55)  # the beat was away for 40 s
    assert sent(app) == [("e", T0 + n) for n in expected]
    app.beat.round("a", now=T0 + 61)  # and on time again: every policy sends it
    assert sent(app) == [("e", T0 + 60)]


def test_only_the_leader_sends_and_a_new_leader_repeats_nothing(app: Celeriac) -> None:
    app.beat.add("e", "proj.t", 10.0, catchup="all")
    assert app.beat.round("a", now=T0 + 1)
    assert not app.beat.round("b", now=T0 + 12)  # a holds the lease
    assert app.beat.round("a", now=T0 + 12)
    assert sent(app) == [("e", T0 + 10)]
    # a sends tick 20 but dies before recording it; b takes over and sends 20 and 30.
    app.beat.send(app.beat.entries()["e"], T0 + 20)
    app.broker.beat_lead("a", -1)  # a's lease runs out
    assert app.beat.round("b", now=T0 + 31)
    assert sent(app) == [("e", T0 + 20), ("e", T0 + 30)]  # 20 once: stored once


def test_entries_change_while_the_beat_runs(app: Celeriac) -> None:
    app.beat.add("e", "proj.t", 10.0)
    app.beat.round("a", now=T0 + 1)
    app.beat.pause("e")
    app.beat.round("a", now=T0 + 11)
    assert sent(app) == []
    app.beat.pause("e", paused=False)
    app.beat.round("a", now=T0 + 21)
    assert sent(app) == [("e", T0 + 20)]  # the paused tick (10) is skipped
    runs = app.beat.next_runs(now=T0 + 21)
    assert [(e.name, when) for e, when in runs if e.name == "e"] == [("e", T0 + 30)]
    app.beat.remove("e")
    assert list(app.beat.entries()) == [CLEANUP_TASK]  # the built-in daily cleanup
    with pytest.raises(ConfigurationError, match="no beat entry named 'e'"):
        app.beat.remove("e")


def test_ticks_have_ids_from_entry_and_time(app: Celeriac, worker_for: Any) -> None:
    ran: list[float] = []

    @app.task(name="proj.t", bind=True)
    def t(self: Any) -> None:
        ran.append(self.request.headers["tick"])

    entry = Entry("e", "proj.t", crontab())
    app.beat.send(entry, T0)
    app.beat.send(entry, T0)
    messages = app.broker.fetch(["celeriac"], 10, 60)
    assert len(messages) == 1
    app.broker.release(messages)
    with worker_for(app):
        app.AsyncResult(messages[0].id).get(timeout=10)
    assert ran == [T0]
