"""Errors a Celeriac user can meet, and the control-flow signals tasks raise.

CeleriacError                  root of every error Celeriac raises
├── ConfigurationError         a bad setting, URL or task option
│   └── AppNotFoundError       `-A` names nothing we can load
├── BrokerError                the broker could not be reached or refused an operation
├── EncodeError                arguments or a result that JSON cannot carry
├── DecodeError                bytes that are not a valid Celeriac message
├── NotRegistered              a message names a task this app does not know
├── TimeoutError               `AsyncResult.get(timeout=...)` ran out of time
├── TaskFailed                 `get()` of a task that failed (carries type, message, traceback)
├── MaxRetriesExceededError    `self.retry()` past `max_retries`
├── SoftTimeLimitExceeded      raised inside a task at its `soft_time_limit`, to clean up
└── TimeLimitExceeded          recorded when a task was stopped at its hard `time_limit`

Retry                          raised by `self.retry()`: not an error, a request to run again
"""

from __future__ import annotations

import builtins


class CeleriacError(Exception):
    """Root of every error Celeriac raises."""


class ConfigurationError(CeleriacError):
    """A setting, broker URL or task option is wrong; the message says which and how to fix it."""


class AppNotFoundError(ConfigurationError):
    """The `-A` argument does not name an importable Celeriac app."""


class BrokerError(CeleriacError):
    """The broker or result backend could not be reached or refused an operation."""


class EncodeError(CeleriacError):
    """A value cannot be sent: only JSON types (and datetime, date, UUID, Decimal) are accepted."""


class DecodeError(CeleriacError):
    """Bytes that are not a valid Celeriac message."""


class NotRegistered(CeleriacError):
    """The task name is not registered with this app."""


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """Waiting for a result took longer than the timeout."""


class TaskFailed(CeleriacError):
    """A task ended in FAILURE. The original exception is never rebuilt from the wire;
    its type name, message and traceback are carried as text."""

    def __init__(self, task_id: str, exc_type: str, exc_message: str, traceback: str | None):
        super().__init__(f"task {task_id} failed: {exc_type}: {exc_message}")
        self.task_id = task_id
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback


class MaxRetriesExceededError(CeleriacError):
    """`self.retry()` was called after `max_retries` retries."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a running task when its `soft_time_limit` passes: catch it to clean up.
    Uncaught, the task fails with this type."""

    def __init__(self, message: str = "soft time limit exceeded") -> None:
        super().__init__(message)


class TimeLimitExceeded(CeleriacError):
    """A task ran past its hard `time_limit` and was stopped (its result says so)."""


class Retry(Exception):
    """Raised by `Task.retry()` to ask the worker to run the task again later.

    Not a `CeleriacError`: it is control flow, not a failure.
    """

    def __init__(self, countdown: float, exc: BaseException | None = None):
        super().__init__(f"retry in {countdown}s" + (f": {exc!r}" if exc else ""))
        self.countdown = countdown
        self.exc = exc
