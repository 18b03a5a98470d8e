"""Where a task's function runs: on the worker's event loop (`async def`), in a thread pool,
or in a process pool. Each returns an `Outcome`; none lets a task's exception escape."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import multiprocessing
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

from ..exceptions import Retry
from ..task import Request, Task, current_request

log = logging.getLogger("celeriac.worker")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended. `crashed`: the process running it died (no result at all)."""

    kind: Literal["success", "failure", "retry", "crashed"]
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str | None = None
    countdown: float = 0.0


def _failure(exc: BaseException) -> Outcome:
    return Outcome(
        "failure",
        error_type=type(exc).__name__,
        error_message=str(exc),
        traceback=traceback.format_exc(),
    )


def _retry(exc: Retry) -> Outcome:
    reason = repr(exc.exc) if exc.exc else ""
    return Outcome("retry", error_message=reason, countdown=exc.countdown)


def _failed(task: Task[Any, Any], request: Request, exc: Exception) -> Outcome:
    """A task raised: retry it if it asked for that (`autoretry_for`), else a failure.
    Called inside the `except` block, so the traceback is the task's."""
    if task.options.autoretry_for and isinstance(exc, task.options.autoretry_for):
        try:
            task.retry(exc=exc, countdown=task.options.retry_delay(request.retries))
        except Retry as again:
            return _retry(again)
        except Exception:  # retries exhausted: task.retry re-raised exc
            pass
    return _failure(exc)


def run_sync(task: Task[Any, Any], request: Request) -> Outcome:
    token = current_request.set(request)
    try:
        return Outcome("success", task(*request.args, **request.kwargs))
    except Retry as exc:
        return _retry(exc)
    except Exception as exc:
        return _failed(task, request, exc)
    finally:
        current_request.reset(token)


async def run_async(task: Task[Any, Any], request: Request) -> Outcome:
    """Run an `async def` task on the current loop (the caller has set `current_request`)."""
    try:
        return Outcome("success", await task(*request.args, **request.kwargs))
    except Retry as exc:
        return _retry(exc)
    except Exception as exc:
        return _failed(task, request, exc)


class ThreadExecutor:
    """Plain functions in a pool of threads, each run in a copy of the caller's context."""

    def __init__(self, size: int) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="celeriac-task")
        self._lock = threading.Lock()
        self._busy = 0  # threads inside a task function right now

    def _run_counted(self, task: Task[Any, Any], request: Request) -> Outcome:
        with self._lock:
            self._busy += 1
        try:
            return run_sync(task, request)
        finally:
            with self._lock:
                self._busy -= 1

    @property
    def busy(self) -> int:
        """Threads still running a task: after shutdown, the ones nothing can stop."""
        return self._busy

    async def run(self, task: Task[Any, Any], request: Request) -> Outcome:
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, ctx.run, self._run_counted, task, request
        )

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# The app of a process-pool child, loaded once by `_child_init` from the worker's -A spec.
_child_app: Any = None


def _child_init(app_spec: str) -> None:
    global _child_app
    import signal

    from ..cli.loader import load_app

    # The worker handles SIGINT/SIGTERM (also when they are sent to its whole process
    # group) and lets running tasks finish; it stops its children itself, with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _child_app = load_app(app_spec)


def _child_run(request: Request) -> Outcome:
    return run_sync(_child_app.get_task(request.task), request)


class ProcessExecutor:
    """Plain functions in a pool of child processes (spawned, never forked from a process
    that has threads). A child that dies takes its task down as `crashed`; the pool is
    rebuilt and the worker goes on."""

    def __init__(self, size: int, app_spec: str) -> None:
        self.size = size
        self.app_spec = app_spec
        self.pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(self.app_spec,),
        )

    async def run(self, task: Task[Any, Any], request: Request) -> Outcome:
        pool = self.pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _child_run, request)
        except BrokenProcessPool as exc:
            if pool is self.pool:
                log.error("a pool process died (%s); starting a new pool", exc)
                pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new_pool()
            return Outcome("crashed", error_type="WorkerLostError", error_message=str(exc))

    busy = 0  # a child still running at shutdown is killed, not waited for

    def shutdown(self) -> None:
        processes: Sequence[Any] = list((self.pool._processes or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()  # its message, if any, was handed back already
