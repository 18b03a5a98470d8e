"""Celeriac: a distributed task queue for Python.

    from celeriac import Celeriac, shared_task

Everything exported here is the public API; other modules may change.
"""

from . import states
from .app import Celeriac, current_app
from .canvas import Signature, chain, chord, group, signature
from .exceptions import (
    AppNotFoundError,
    BrokerError,
    CeleriacError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TaskFailed,
    TimeLimitExceeded,
    TimeoutError,
)
from .result import AsyncResult, GroupResult
from .schedules import crontab
from .task import Request, Task, shared_task

__all__ = [
    "AppNotFoundError",
    "AsyncResult",
    "BrokerError",
    "Celeriac",
    "CeleriacError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "GroupResult",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Request",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskFailed",
    "TimeLimitExceeded",
    "TimeoutError",
    "chain",
    "chord",
    "crontab",
    "current_app",
    "group",
    "shared_task",
    "signature",
    "states",
]

__version__ = "0.1.0"
