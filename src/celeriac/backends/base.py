"""The result-backend contract: task state, result, error and progress, by task id.

Every backend implements these methods with the same meaning; `tests/backends/` checks
them on each implementation. Results are stored as JSON; an error is stored as its type
name, message and traceback text, never as something to import or unpickle.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import states
from ..exceptions import TimeoutError

DEFAULT_RESULT_EXPIRES = 86400.0


@dataclass(frozen=True, slots=True)
class TaskMeta:
    """What is known about one task. `result` is the return value on SUCCESS, and
    `{"type": ..., "message": ...}` on FAILURE; `info` carries progress while STARTED."""

    task_id: str
    state: str
    task: str | None = None
    result: Any = None
    traceback: str | None = None
    info: Any = None
    date_done: float | None = None

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES


class ResultBackend(ABC):
    """Stores `TaskMeta` by task id. Thread-safe within one process."""

    # Expired results stay until `cleanup()` deletes them (the beat does it daily); False
    # for a store that expires them by itself (Redis).
    needs_cleanup = True

    def __init__(self, url: str, *, expires: float = DEFAULT_RESULT_EXPIRES) -> None:
        self.url = url
        self.expires = expires

    @abstractmethod
    def store(self, metas: Sequence[TaskMeta]) -> None:
        """Save states (replacing earlier ones) durably, in one batch. A ready state
        expires `self.expires` seconds after it is stored."""

    @abstractmethod
    def get(self, task_id: str) -> TaskMeta | None:
        """The latest state, or None if nothing is stored (or it expired / was forgotten)."""

    def get_many(self, task_ids: Sequence[str]) -> list[TaskMeta | None]:
        return [self.get(task_id) for task_id in task_ids]

    @abstractmethod
    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        """Remember the result ids of a group (or chord header), in order; they expire
        `self.expires` seconds later."""

    @abstractmethod
    def get_group(self, group_id: str) -> list[str] | None:
        """The member result ids of a group, or None if none is saved under this id."""

    @abstractmethod
    def chord_done(self, group_id: str, member_id: str) -> int:
        """Count a chord member as done; returns how many distinct members are. Counting
        a member twice (a redelivered message) changes nothing, so the count reaches the
        chord's size once every member is done, whatever was delivered twice."""

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete what is stored for the task."""

    @abstractmethod
    def cleanup(self) -> int:
        """Delete expired results; return how many."""

    def wait(self, task_id: str, timeout: float | None, interval: float = 0.05) -> TaskMeta:
        """Block until the task is ready. Backends that can be told (a condition, a
        pub/sub channel) override this; the default polls with a growing interval."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            meta = self.get(task_id)
            if meta is not None and meta.ready:
                return meta
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} not ready after {timeout}s")
            pause = min(delay, interval)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay *= 2

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
