"""`memory://`: results in one process's memory, for tests. `wait` is woken, not polled."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..envelope import dumps, loads
from ..exceptions import TimeoutError
from .base import ResultBackend, TaskMeta


class MemoryBackend(ResultBackend):
    def __init__(self, url: str = "memory://", **options: Any) -> None:
        super().__init__(url, **options)
        self._changed = threading.Condition()
        self._metas: dict[str, tuple[TaskMeta, float | None]] = {}
        self._groups: dict[str, list[str]] = {}
        self._chords: dict[str, set[str]] = {}

    def store(self, metas: Sequence[TaskMeta]) -> None:
        # Through JSON, as every backend stores results: the same types come back (a tuple
        # as a list), a value JSON cannot carry fails here, and the caller's later changes
        # to its objects do not change what is stored.
        metas = [
            replace(m, result=loads(dumps(m.result)), info=loads(dumps(m.info))) for m in metas
        ]
        now = time.time()
        with self._changed:
            for meta in metas:
                expires_at = now + self.expires if meta.ready else None
                self._metas[meta.task_id] = (meta, expires_at)
            self._changed.notify_all()

    def get(self, task_id: str) -> TaskMeta | None:
        with self._changed:
            entry = self._metas.get(task_id)
        if entry is None or (entry[1] is not None and entry[1] <= time.time()):
            return None
        return entry[0]

    def wait(self, task_id: str, timeout: float | None, interval: float = 0.05) -> TaskMeta:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                meta = self.get(task_id)
                if meta is not None and meta.ready:
                    return meta
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"task {task_id} not ready after {timeout}s")
                self._changed.wait(remaining)

    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        with self._changed:
            self._groups[group_id] = list(member_ids)

    def get_group(self, group_id: str) -> list[str] | None:
        with self._changed:
            members = self._groups.get(group_id)
        return None if members is None else list(members)

    def chord_done(self, group_id: str, member_id: str) -> int:
        with self._changed:
            done = self._chords.setdefault(group_id, set())
            done.add(member_id)
            return len(done)

    def forget(self, task_id: str) -> None:
        with self._changed:
            self._metas.pop(task_id, None)

    def cleanup(self) -> int:
        now = time.time()
        with self._changed:
            doomed = [k for k, (_, exp) in self._metas.items() if exp is not None and exp <= now]
            for key in doomed:
                del self._metas[key]
        return len(doomed)
