"""Celeriac: a distributed task queue for Python.

    from celeriac import Celeriac, shared_task

Everything exported here is the public API; other modules may change.
"""

from . import states
from .app import Celeriac, current_app
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
    TaskFailed,
    TimeoutError,
)
from .result import AsyncResult
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
    "MaxRetriesExceededError",
    "NotRegistered",
    "Request",
    "Retry",
    "Task",
    "TaskFailed",
    "TimeoutError",
    "current_app",
    "shared_task",
    "states",
]

__version__ = "0.1.0"
