"""When periodic tasks run: an interval, or `crontab(...)` in Celery's notation.

A schedule is a rule for *ticks*: the instants (unix seconds) at which an entry is due.
Every beat process computes the same ticks, so a tick names one run, everywhere:

    interval   every N seconds, aligned to the unix epoch (an every-minute entry ticks at
               :00 of each minute, whichever beat started when)
    crontab    the wall-clock times in `timezone` that match every field. As in Celery,
               day_of_month and day_of_week must both match when both are given (cron
               matches either). Across DST: a time that does not exist that day (the
               hour skipped in spring) runs once, at the moment the clock jumps past it;
               a time that happens twice (the hour repeated in autumn) runs once, the
               first time.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

from .exceptions import ConfigurationError

DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
MONTH_NAMES = {
    name: n
    for n, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
SEARCH_YEARS = 5  # a crontab with no tick within this many years is an error (Feb 30th)


class interval:  # Celery's lower-case naming for schedules
    """Every `seconds`, at multiples of it since the unix epoch."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ConfigurationError(f"an interval schedule needs seconds > 0, not {seconds}")
        self.seconds = float(seconds)

    def next_after(self, after: float, zone: ZoneInfo) -> float:
        return (math.floor(after / self.seconds) + 1) * self.seconds

    def last_at_or_before(self, when: float, zone: ZoneInfo) -> float:
        return math.floor(when / self.seconds) * self.seconds

    def describe(self) -> str:
        return f"every {self.seconds:g}s"

    def to_json(self) -> dict[str, Any]:
        return {"every": self.seconds}


class crontab:  # Celery's name
    """`crontab(minute="*/15")`, `crontab(hour=7, minute=30, day_of_week="mon-fri")`, ...
    Fields take a number, "*", "*/n", "a-b", "a-b/n", comma-separated lists of those, or
    names ("mon", "jan"); day_of_week counts from 0 = Sunday."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
    ) -> None:
        self.spec = {
            "minute": minute,
            "hour": hour,
            "day_of_week": day_of_week,
            "day_of_month": day_of_month,
            "month_of_year": month_of_year,
        }
        self.minutes = _field(minute, "minute", 0, 59)
        self.hours = _field(hour, "hour", 0, 23)
        self.days_of_week = {d % 7 for d in _field(day_of_week, "day_of_week", 0, 7, DAY_NAMES)}
        self.days_of_month = _field(day_of_month, "day_of_month", 1, 31)
        self.months = _field(month_of_year, "month_of_year", 1, 12, MONTH_NAMES)
        self._check_reachable()

    def _check_reachable(self) -> None:
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
        if not any(d <= longest.get(m, 31) for m in self.months for d in self.days_of_month):
            raise ConfigurationError(f"crontab({self._args()}) matches no day of any year")

    def _args(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec.items() if v != "*")

    def __repr__(self) -> str:
        return f"crontab({self._args()})"

    def describe(self) -> str:
        return repr(self)

    def to_json(self) -> dict[str, Any]:
        spec = {k: v if isinstance(v, int | str) else list(v) for k, v in self.spec.items()}
        return {"crontab": spec}

    def _instants(self, start: dt.date, zone: ZoneInfo) -> Iterable[float]:
        """The ticks from the local day `start` on, in order, for up to SEARCH_YEARS."""
        day = start
        for _ in range(366 * SEARCH_YEARS):
            if (
                day.month in self.months
                and day.day in self.days_of_month
                and (day.isoweekday() % 7) in self.days_of_week
            ):
                # fold=0 picks the first of a repeated time; a time in the skipped hour maps
                # to the instant the clock jumps past it, which may equal (or precede) a
                # valid time's: sorting a set puts each instant once, in order.
                yield from sorted(
                    {
                        dt.datetime(day.year, day.month, day.day, h, m, tzinfo=zone).timestamp()
                        for h in self.hours
                        for m in self.minutes
                    }
                )
            day += dt.timedelta(days=1)

    def next_after(self, after: float, zone: ZoneInfo) -> float:
        start = dt.datetime.fromtimestamp(after, zone).date()
        for instant in self._instants(start, zone):
            if instant > after:
                return instant
        raise ConfigurationError(f"{self!r} has no tick in the next {SEARCH_YEARS} years")

    def last_at_or_before(self, when: float, zone: ZoneInfo) -> float | None:
        """The latest tick at or before `when` (looking back up to a year), else None."""
        today = dt.datetime.fromtimestamp(when, zone).date()
        for days_back in (1, 8, 40, 370):
            found = None
            for instant in self._instants(today - dt.timedelta(days=days_back), zone):
                if instant > when:
                    break
                found = instant
            if found is not None:
                return found
        return None


Schedule = interval | crontab


def schedule_of(value: Any) -> Schedule:
    """A schedule from `beat_schedule`'s `schedule`: seconds, a timedelta, a crontab, or
    the JSON form of one (`{"every": 60}`, `{"crontab": {...}}`)."""
    if isinstance(value, interval | crontab):
        return value
    if isinstance(value, dt.timedelta):
        return interval(value.total_seconds())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return interval(value)
    if isinstance(value, dict) and "every" in value:
        return interval(float(value["every"]))
    if isinstance(value, dict) and "crontab" in value:
        return crontab(**value["crontab"])
    raise ConfigurationError(
        f"a schedule must be seconds, a timedelta or a crontab(...), not {value!r}"
    )


def _field(
    value: Any, name: str, low: int, high: int, names: dict[str, int] | None = None
) -> set[int]:
    """The numbers a crontab field matches."""
    if isinstance(value, int) and not isinstance(value, bool):
        parts: list[str] = [str(value)]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.lower().split(",")]
    elif isinstance(value, Iterable):
        parts = [str(v) for v in value]
    else:
        raise ConfigurationError(f"crontab {name}={value!r}: expected a number or a string")
    found: set[int] = set()
    for part in parts:
        found |= _part(part, name, low, high, names or {})
    return found


def _part(part: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    def number(text: str) -> int:
        text = text.strip()
        if text[:3] in names:
            return names[text[:3]]
        try:
            n = int(text)
        except ValueError:
            raise ConfigurationError(f"crontab {name}: {text!r} is not a number") from None
        if not low <= n <= high:
            raise ConfigurationError(f"crontab {name}: {n} is outside {low}-{high}")
        return n

    span, _, step_text = part.partition("/")
    step = number(step_text) if step_text else 1
    if step < 1:
        raise ConfigurationError(f"crontab {name}: a step must be at least 1 in {part!r}")
    if span == "*":
        first, last = low, high
    elif "-" in span:
        first_text, last_text = span.split("-", 1)
        first, last = number(first_text), number(last_text)
    else:
        first = last = number(span)
        if step_text:
            last = high
    if first > last:
        raise ConfigurationError(f"crontab {name}: the range {part!r} runs backwards")
    return set(range(first, last + 1, step))
