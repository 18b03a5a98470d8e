"""`AsyncResult`: the caller's handle on a task's state and result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import states
from .backends.base import TaskMeta
from .exceptions import ConfigurationError, TaskFailed

if TYPE_CHECKING:
    from .app import Celeriac

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and result of one task, read from the app's result backend."""

    def __init__(self, id: str, app: Celeriac, task_name: str | None = None) -> None:
        self.id = id
        self.app = app
        self.name = task_name

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _backend(self) -> Any:
        backend = self.app.backend
        if backend is None:
            raise ConfigurationError(
                "no result backend configured: set result_backend (e.g. sqlite:///celeriac.db)"
            )
        return backend

    def _meta(self) -> TaskMeta:
        meta: TaskMeta | None = self._backend().get(self.id)
        return meta or TaskMeta(self.id, states.PENDING)

    @property
    def state(self) -> str:
        return self._meta().state

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait until the task is done and return its result.

        A failed task raises `TaskFailed` (with the original type name, message and
        traceback) when `propagate` is true, else returns that `TaskFailed`.
        `timeout` is in seconds; past it `celeriac.exceptions.TimeoutError` is raised.
        """
        meta: TaskMeta = self._backend().wait(self.id, timeout)
        if meta.state == states.SUCCESS:
            return cast(R, meta.result)
        error = _error(meta)
        if propagate:
            raise error
        return cast(R, error)

    @property
    def result(self) -> Any:
        """The return value once SUCCESS; a `TaskFailed` once FAILURE; progress while STARTED."""
        meta = self._meta()
        if meta.state == states.FAILURE:
            return _error(meta)
        if meta.state == states.SUCCESS:
            return meta.result
        return meta.info

    info = result

    @property
    def traceback(self) -> str | None:
        return self._meta().traceback

    @property
    def date_done(self) -> float | None:
        return self._meta().date_done

    @property
    def progress(self) -> dict[str, Any] | None:
        """`{"current", "total", "message"}` as last reported by `self.update_progress()`."""
        meta = self._meta()
        info = meta.info
        return info if isinstance(info, dict) and "current" in info else None

    def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        """Revoke the task: see `app.control.revoke`."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def forget(self) -> None:
        """Delete the stored state and result."""
        self._backend().forget(self.id)


def _error(meta: TaskMeta) -> TaskFailed:
    detail = meta.result if isinstance(meta.result, dict) else {}
    return TaskFailed(
        meta.task_id,
        str(detail.get("type", meta.state)),
        str(detail.get("message", "")),
        meta.traceback,
    )
