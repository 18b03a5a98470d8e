"""crontab and interval schedules: Celery's notation, month ends, leap years, DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from celeriac import ConfigurationError, crontab
from celeriac.schedules import interval, schedule_of

NEW_YORK = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


def ticks(schedule, start: dt.datetime, count: int, zone: ZoneInfo = UTC) -> list[str]:
    """The next `count` ticks after `start`, as local ISO times."""
    found, at = [], start.timestamp()
    for _ in range(count):
        at = schedule.next_after(at, zone)
        found.append(dt.datetime.fromtimestamp(at, zone).isoformat())
    return found


def test_fields_in_celerys_notation() -> None:
    c = crontab(minute="*/15", hour="9-17/4", day_of_week="mon-fri", month_of_year="jan,jul")
    assert c.minutes == {0, 15, 30, 45}
    assert c.hours == {9, 13, 17}
    assert c.days_of_week == {1, 2, 3, 4, 5}
    assert c.months == {1, 7}
    assert crontab(day_of_week="0,7").days_of_week == {0}  # both are Sunday
    assert crontab(minute=[5, 10]).minutes == {5, 10}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"minute": 60}, "outside 0-59"),
        ({"hour": "x"}, "not a number"),
        ({"minute": "10-5"}, "runs backwards"),
        ({"minute": "*/0"}, "at least 1"),
        ({"day_of_month": 30, "month_of_year": 2}, "matches no day"),
    ],
)
def test_bad_fields_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        crontab(**fields)


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    # Celery's rule (cron's would be either): Saturdays among the first 7 days.
    c = crontab(minute=0, hour=22, day_of_month="1-7", day_of_week="sat")
    assert ticks(c, dt.datetime(2026, 1, 1, tzinfo=UTC), 3) == [
        "2026-01-03T22:00:00+00:00",
        "2026-02-07T22:00:00+00:00",
        "2026-03-07T22:00:00+00:00",
    ]


def test_month_ends_and_leap_years() -> None:
    on_31st = crontab(minute=0, hour=0, day_of_month=31)
    assert ticks(on_31st, dt.datetime(2026, 1, 31, 12, tzinfo=UTC), 3) == [
        "2026-03-31T00:00:00+00:00",
        "2026-05-31T00:00:00+00:00",
        "2026-07-31T00:00:00+00:00",
    ]
    leap_day = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    assert ticks(leap_day, dt.datetime(2026, 1, 1, tzinfo=UTC), 2) == [
        "2028-02-29T00:00:00+00:00",
        "2032-02-29T00:00:00+00:00",
    ]


def test_the_skipped_hour_in_spring_runs_once_when_the_clock_jumps() -> None:
    # 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
    c = crontab(minute=30, hour=2)
    assert ticks(c, dt.datetime(2026, 3, 7, 12, tzinfo=NEW_YORK), 3, NEW_YORK) == [
        "2026-03-08T03:30:00-04:00",
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]
    # Every half hour across the jump: 01:00, 01:30, then 03:00 (02:00 is 03:00), 03:30,
    # and 02:30 (that is 03:30 EDT too) is not a second run.
    half = crontab(minute="0,30")
    assert ticks(half, dt.datetime(2026, 3, 8, 0, 45, tzinfo=NEW_YORK), 4, NEW_YORK) == [
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T01:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:30:00-04:00",
    ]


def test_the_repeated_hour_in_autumn_runs_once() -> None:
    # 2026-11-01 in New York: 01:00-02:00 happens twice (EDT, then EST).
    c = crontab(minute=30, hour=1)
    assert ticks(c, dt.datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), 2, NEW_YORK) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]
    hourly = crontab(minute=0)
    found = ticks(hourly, dt.datetime(2026, 11, 1, 0, 30, tzinfo=NEW_YORK), 3, NEW_YORK)
    assert found == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T02:00:00-05:00",  # two hours later in real time: 01:00 EST is not rerun
        "2026-11-01T03:00:00-05:00",
    ]


def test_last_tick_at_or_before() -> None:
    c = crontab(minute=0, hour=12)
    noon = dt.datetime(2026, 5, 4, 12, tzinfo=UTC).timestamp()
    assert c.last_at_or_before(noon, UTC) == noon
    assert c.last_at_or_before(noon - 1, UTC) == noon - 86400
    assert interval(60).last_at_or_before(noon + 59, UTC) == noon


def test_intervals_are_aligned_to_the_epoch() -> None:
    every = schedule_of(dt.timedelta(minutes=5))
    assert isinstance(every, interval)
    assert every.next_after(1_000_000_001.0, UTC) == 1_000_000_200.0
    assert schedule_of({"every": 5}).next_after(12.0, UTC) == 15.0
    assert schedule_of(crontab(minute=5).to_json()).minutes == {5}
    with pytest.raises(ConfigurationError, match="must be seconds, a timedelta or a crontab"):
        schedule_of("hourly")
