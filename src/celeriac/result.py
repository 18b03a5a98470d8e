"""`AsyncResult`: the caller's handle on a task's state and result."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
        self.parent: GroupResult | None = None  # a chord's header, for its body's result

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


class GroupResult:
    """The results of a group's members, in order (a member may itself be a group)."""

    def __init__(
        self, id: str, results: list[AsyncResult[Any] | GroupResult], app: Celeriac
    ) -> None:
        self.id = id
        self.results = results
        self.app = app

    @classmethod
    def restore(cls, id: str, app: Celeriac) -> GroupResult | None:
        """The group saved under this id (a group's id, or a chord's), if any."""
        backend = app.backend
        members = backend.get_group(id) if backend is not None else None
        if members is None:
            return None
        return cls(id, [AsyncResult(m, app) for m in members], app)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __iter__(self) -> Iterator[AsyncResult[Any] | GroupResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def _leaves(self) -> list[AsyncResult[Any]]:
        found: list[AsyncResult[Any]] = []
        for r in self.results:
            found.extend(r._leaves() if isinstance(r, GroupResult) else [r])
        return found

    def member_metas(self) -> list[TaskMeta]:
        """What is stored of each member (PENDING for nothing), in order, nested flattened."""
        leaves = self._leaves()
        backend = leaves[0]._backend() if leaves else None
        found = backend.get_many([r.id for r in leaves]) if backend is not None else []
        return [m or TaskMeta(r.id, states.PENDING) for r, m in zip(leaves, found, strict=True)]

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(m.state == states.SUCCESS for m in self.member_metas())

    def ready(self) -> bool:
        return all(m.ready for m in self.member_metas())

    def successful(self) -> bool:
        return all(m.state == states.SUCCESS for m in self.member_metas())

    def failed(self) -> bool:
        return any(m.state == states.FAILURE for m in self.member_metas())

    def waiting(self) -> bool:
        return not self.ready()

    @property
    def progress(self) -> dict[str, Any]:
        """The members' progress summed, each member counting as one: a finished member
        1, a running one the fraction it last reported, others 0."""
        current, done = 0.0, 0
        metas = self.member_metas()
        for meta in metas:
            info = meta.info if isinstance(meta.info, dict) else {}
            if meta.ready:
                done += 1
                current += 1
            elif info.get("total"):
                current += min(1.0, float(info.get("current") or 0) / float(info["total"]))
        return {"current": current, "total": len(metas), "message": f"{done}/{len(metas)} done"}

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Wait for every member; their results in order. A failed member raises its
        `TaskFailed` when `propagate` is true (else stands in the list)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(r.get(timeout=left, propagate=propagate))
        return values

    join = get


def _error(meta: TaskMeta) -> TaskFailed:
    detail = meta.result if isinstance(meta.result, dict) else {}
    return TaskFailed(
        meta.task_id,
        str(detail.get("type", meta.state)),
        str(detail.get("message", "")),
        meta.traceback,
    )
