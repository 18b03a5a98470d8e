"""The beat: sends periodic tasks, each tick exactly once, however many beats run.

    every beat process, about once a second:
      take or keep the leader lease (in the broker, with a fencing token)   -> else wait
      for each entry: the ticks due since its last recorded tick (catch-up policy)
      send each tick's task with a message id and idempotency key made from (entry, tick)
      record the entries' last ticks, fenced by the token

A tick sent twice (a leader that died after sending and before recording; two leaders
for a moment) is stored once: the broker drops a second message with the same key. A
restart resumes from the recorded ticks: nothing skipped, nothing repeated.

Entries come from the `beat_schedule` setting (Celery's format) and from `app.beat.add()`
or `celeriac beat add`, stored in the broker; a stored entry replaces a setting of the
same name, and every round reads them again, so changes need no restart.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import ConfigurationError
from .schedules import Schedule, crontab, schedule_of

if TYPE_CHECKING:
    from .app import Celeriac

log = logging.getLogger("celeriac.beat")

CATCHUP = ("last", "all", "skip")
LEASE_SECONDS = 5.0  # a dead leader's ticks are sent by another beat after this
MAX_SLEEP = 1.0  # seconds between rounds, at most
MAX_CATCHUP = 1000  # ticks sent at once for a `catchup="all"` entry that missed many
TICK_KEY_TTL = 7 * 86400.0  # seconds a sent tick's key blocks sending it again
TICK_NAMESPACE = uuid.UUID("5b0d6d3c-1f1c-4a8e-9a4f-3c0e0c7d1a11")
ENTRY_OPTIONS = frozenset({"queue", "priority", "expires"})
CLEANUP_TASK = "celeriac.backend_cleanup"  # deletes expired results, daily at 4:00


@dataclass(frozen=True)
class Entry:
    """One periodic task. `catchup`: after ticks were missed (no beat ran), send only the
    latest ("last", the default), every one ("all"), or none ("skip")."""

    name: str
    task: str
    schedule: Schedule
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    catchup: str = "last"
    paused: bool = False

    def __post_init__(self) -> None:
        if self.catchup not in CATCHUP:
            raise ConfigurationError(
                f"beat entry {self.name!r}: catchup must be one of {', '.join(CATCHUP)},"
                f" not {self.catchup!r}"
            )
        unknown = set(self.options) - ENTRY_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"beat entry {self.name!r}: unknown option(s) {', '.join(sorted(unknown))};"
                f" known: {', '.join(sorted(ENTRY_OPTIONS))}"
            )

    @classmethod
    def from_setting(cls, name: str, spec: Any) -> Entry:
        """From `beat_schedule[name]`: {"task", "schedule", "args", "kwargs", "options"}."""
        if not isinstance(spec, dict) or "task" not in spec or "schedule" not in spec:
            raise ConfigurationError(
                f"beat_schedule[{name!r}] needs at least 'task' and 'schedule', got {spec!r}"
            )
        known = {"task", "schedule", "args", "kwargs", "options", "catchup", "paused"}
        unknown = set(spec) - known
        if unknown:
            raise ConfigurationError(
                f"beat_schedule[{name!r}]: unknown key(s) {', '.join(sorted(unknown))}"
            )
        return cls(
            name,
            spec["task"],
            schedule_of(spec["schedule"]),
            list(spec.get("args") or []),
            dict(spec.get("kwargs") or {}),
            dict(spec.get("options") or {}),
            spec.get("catchup", "last"),
            bool(spec.get("paused", False)),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "task": self.task,
                "schedule": self.schedule.to_json(),
                "args": self.args,
                "kwargs": self.kwargs,
                "options": self.options,
                "catchup": self.catchup,
                "paused": self.paused,
            }
        ).encode()


class Beat:
    """`app.beat`: the entries, their changes at run time, and the scheduling loop."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.app.conf.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"timezone={self.app.conf.timezone!r} is not a known time zone (e.g. 'UTC',"
                " 'Europe/Paris')"
            ) from None

    # Entries ---------------------------------------------------------------------------

    def entries(self) -> dict[str, Entry]:
        """Every entry: the `beat_schedule` setting, then the ones stored at run time."""
        found = {}
        backend = self.app.backend
        if backend is not None and backend.needs_cleanup and self.app.conf.result_expires:
            found[CLEANUP_TASK] = Entry(CLEANUP_TASK, CLEANUP_TASK, crontab(hour=4, minute=0))
        for name, spec in (self.app.conf.beat_schedule or {}).items():
            found[name] = Entry.from_setting(name, spec)
        for name, data in self.app.broker.beat_entries().items():
            found[name] = Entry.from_setting(name, json.loads(data))
        return found

    def add(
        self,
        name: str,
        task: str,
        schedule: Any,
        *,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        catchup: str = "last",
    ) -> Entry:
        """Add or replace an entry; every running beat picks it up within a second."""
        entry = Entry(
            name,
            task,
            schedule_of(schedule),
            list(args),
            dict(kwargs or {}),
            options or {},
            catchup,
        )
        self.app.broker.beat_set_entry(name, entry.to_json())
        return entry

    def remove(self, name: str) -> None:
        """Remove a stored entry (one from the setting stays: change the setting)."""
        if name not in self.app.broker.beat_entries():
            if name in (self.app.conf.beat_schedule or {}):
                raise ConfigurationError(
                    f"beat entry {name!r} comes from the beat_schedule setting; remove it"
                    " there (or pause it)"
                )
            raise ConfigurationError(f"no beat entry named {name!r}")
        self.app.broker.beat_set_entry(name, None)

    def pause(self, name: str, paused: bool = True) -> Entry:
        """Stop (or, with paused=False, resume) sending an entry; stored, so it holds for
        every beat and across restarts."""
        entry = self.entries().get(name)
        if entry is None:
            raise ConfigurationError(f"no beat entry named {name!r}")
        entry = replace(entry, paused=paused)
        self.app.broker.beat_set_entry(name, entry.to_json())
        return entry

    def next_runs(self, now: float | None = None) -> list[tuple[Entry, float | None]]:
        """Each entry with the time of its next tick (None while paused), by name."""
        now = time.time() if now is None else now
        zone = self.zone
        ticks = self.app.broker.beat_ticks()
        found = []
        for name, entry in sorted(self.entries().items()):
            after = max(now, ticks.get(name, now))
            found.append((entry, None if entry.paused else entry.schedule.next_after(after, zone)))
        return found

    # Sending ---------------------------------------------------------------------------

    def due(self, entry: Entry, last: float | None, now: float) -> tuple[list[float], float | None]:
        """The ticks of `entry` to send now, after its last sent tick `last`, and the
        tick to record as its last (None: nothing to record)."""
        zone = self.zone
        latest = entry.schedule.last_at_or_before(now, zone)
        if last is None or latest is None or entry.paused:
            # A new entry starts with its next tick; a paused one skips its ticks.
            return [], now if latest is None else latest
        if latest <= last:
            return [], None
        if entry.catchup == "skip":
            first = entry.schedule.next_after(last, zone)
            return ([latest] if first == latest else []), latest
        if entry.catchup == "last":
            return [latest], latest
        ticks: list[float] = []
        tick = entry.schedule.next_after(last, zone)
        while tick <= now and len(ticks) < MAX_CATCHUP:
            ticks.append(tick)
            tick = entry.schedule.next_after(tick, zone)
        return ticks, ticks[-1]

    def send(self, entry: Entry, tick: float) -> None:
        """Send one tick's task. Its id and key come from (entry, tick): sent again, it is
        stored once."""
        options = entry.options
        expires = options.get("expires")
        self.app.send_task(
            entry.task,
            entry.args,
            entry.kwargs,
            queue=options.get("queue"),
            priority=options.get("priority"),
            expires=None if expires is None else time.time() + float(expires),
            task_id=str(uuid.uuid5(TICK_NAMESPACE, f"{entry.name}@{tick!r}")),
            headers={"beat": entry.name, "tick": tick},
            idempotency_key=f"beat:{entry.name}@{tick!r}",
            idempotency_ttl=TICK_KEY_TTL,
        )

    def round(self, owner: str, now: float | None = None) -> bool:
        """One round: if this process leads, send what is due and record it. Returns
        whether it leads."""
        broker = self.app.broker
        token = broker.beat_lead(owner, LEASE_SECONDS)
        if token is None:
            return False
        now = time.time() if now is None else now
        last_ticks = broker.beat_ticks()
        recorded: dict[str, float] = {}
        for name, entry in self.entries().items():
            ticks, record = self.due(entry, last_ticks.get(name), now)
            for tick in ticks:
                self.send(entry, tick)
                log.info("beat: sent %s (%s) for %s", name, entry.task, _iso(tick, self.zone))
            if record is not None:
                recorded[name] = record
        if recorded and not broker.beat_record(token, recorded):
            log.warning("beat: lost the leader lease; another beat goes on")
            return False
        return True

    def run(self, stop: threading.Event, owner: str | None = None) -> None:
        """Run rounds until `stop` is set."""
        owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        leading = False
        log.info("beat %s started: %d entries", owner, len(self.entries()))
        while not stop.is_set():
            try:
                now_leading = self.round(owner)
            except Exception as exc:  # the broker may be away for a moment: try again
                log.error("beat: round failed, trying again: %s", exc)
                now_leading = False
            if now_leading != leading:
                log.info("beat %s: %s", owner, "leading" if now_leading else "standing by")
                leading = now_leading
            stop.wait(MAX_SLEEP - (time.time() % MAX_SLEEP))  # rounds on whole seconds


def _iso(tick: float, zone: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(tick, zone).isoformat()
