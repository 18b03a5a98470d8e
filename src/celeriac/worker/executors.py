"""Where a task's function runs: on the worker's event loop (`async def`), in a thread pool,
or in a pool of child processes. Each returns an `Outcome`; none lets a task's exception
escape. Each enforces the task's time limits and can stop a run when it is revoked with
`terminate=True`:

              soft_time_limit                      time_limit / terminate
    async     SoftTimeLimitExceeded at its await   cancelled
    threads   SoftTimeLimitExceeded (async exc.)   abandoned: a stop exception is raised in
                                                   the thread, which ends at its next Python
                                                   line (a blocking C call first returns)
    process   SoftTimeLimitExceeded (SIGALRM)      the child is killed and replaced
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import ctypes
import logging
import multiprocessing
import signal
import threading
import traceback
from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from ..contrib.django import task_scope
from ..exceptions import Retry, SoftTimeLimitExceeded
from ..task import Request, Task, current_request

log = logging.getLogger("celeriac.worker")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended. `crashed`: the process running it died (no result at all);
    `revoked`: it was stopped by `revoke(terminate=True)`."""

    kind: Literal["success", "failure", "retry", "crashed", "revoked"]
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str | None = None
    countdown: float = 0.0


REVOKED = Outcome("revoked", error_type="TaskRevokedError", error_message="terminated")


@dataclass(frozen=True, slots=True)
class Limits:
    """A run's time limits in seconds (None: none)."""

    soft: float | None = None
    hard: float | None = None


def _time_limit_exceeded(limit: float | None) -> Outcome:
    return Outcome(
        "failure",
        error_type="TimeLimitExceeded",
        error_message=f"stopped at its hard time limit of {limit:g}s",
    )


def _failure(exc: BaseException) -> Outcome:
    return Outcome(
        "failure",
        error_type=type(exc).__name__,
        error_message=str(exc),
        traceback=traceback.format_exc(),
    )


def retry_outcome(exc: Retry) -> Outcome:
    reason = repr(exc.exc) if exc.exc else ""
    return Outcome("retry", error_message=reason, countdown=exc.countdown)


def failed_outcome(task: Task[Any, Any], request: Request, exc: Exception) -> Outcome:
    """A task raised: retry it if it asked for that (`autoretry_for`), else a failure.
    Called inside the `except` block, so the traceback is the task's."""
    if task.options.autoretry_for and isinstance(exc, task.options.autoretry_for):
        try:
            task.retry(exc=exc, countdown=task.options.retry_delay(request.retries))
        except Retry as again:
            return retry_outcome(again)
        except Exception:  # retries exhausted: task.retry re-raised exc
            pass
    return _failure(exc)


def run_sync(task: Task[Any, Any], request: Request) -> Outcome:
    with task_scope():  # Django: no stale database connection across tasks
        if task.options.atomic:
            from ..contrib.django.atomic import run_atomic

            return run_atomic(task, request)
        token = current_request.set(request)
        try:
            return Outcome("success", task(*request.args, **request.kwargs))
        except Retry as exc:
            return retry_outcome(exc)
        except Exception as exc:
            return failed_outcome(task, request, exc)
        finally:
            current_request.reset(token)


async def _first(work: Awaitable[Outcome], stop: asyncio.Future[None], hard: float | None) -> str:
    """Wait for the run, a terminate request or the hard limit: "done", "stop" or "limit"."""
    future = asyncio.ensure_future(work)
    waiting: set[asyncio.Future[Any]] = {future, stop}
    done, _ = await asyncio.wait(waiting, timeout=hard, return_when="FIRST_COMPLETED")
    if future in done:
        return "done"
    return "stop" if stop in done else "limit"


class _Stoppable:
    """An executor's runs in progress, by task id, each with a future that `terminate`
    completes to stop it (`revoke(terminate=True)`)."""

    def __init__(self) -> None:
        self._stops: dict[str, asyncio.Future[None]] = {}

    def terminate(self, task_id: str) -> bool:
        """Stop this task's run; False if it is not running here."""
        stop = self._stops.get(task_id)
        if stop is None or stop.done():
            return False
        stop.set_result(None)
        return True


class AsyncExecutor(_Stoppable):
    """`async def` tasks, on the worker's own loop."""

    async def run(self, task: Task[Any, Any], request: Request, limits: Limits) -> Outcome:
        loop = asyncio.get_running_loop()
        token = current_request.set(request)
        try:
            body = _Interruptible(task(*request.args, **request.kwargs))
            running = asyncio.ensure_future(self._outcome(task, request, body))
        finally:
            current_request.reset(token)
        stop = self._stops[request.id] = loop.create_future()
        soft = None
        if limits.soft is not None:
            message = f"soft time limit of {limits.soft:g}s exceeded"
            soft = loop.call_later(
                limits.soft, body.interrupt, running, SoftTimeLimitExceeded(message)
            )
        try:
            ended = await _first(running, stop, limits.hard)
            if ended == "done":
                return running.result()
            running.cancel()
            return REVOKED if ended == "stop" else _time_limit_exceeded(limits.hard)
        finally:
            running.cancel()  # also when the worker itself is cancelled at a hard shutdown
            if soft is not None:
                soft.cancel()
            del self._stops[request.id]

    @staticmethod
    async def _outcome(task: Task[Any, Any], request: Request, body: _Interruptible) -> Outcome:
        try:
            return Outcome("success", await body)
        except Retry as exc:
            return retry_outcome(exc)
        except Exception as exc:
            return failed_outcome(task, request, exc)


class _Interruptible:
    """Awaits a coroutine, and can raise an exception in it at the `await` where it waits.
    asyncio only offers cancelling (CancelledError); this turns the cancellation it asks for
    into the exception given, so a task sees `SoftTimeLimitExceeded` as in the other pools."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._pending: BaseException | None = None

    def interrupt(self, running: asyncio.Future[Any], exc: BaseException) -> None:
        self._pending = exc
        running.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        error: BaseException | None = None
        while True:
            try:
                step = self._coro.throw(error) if error is not None else self._coro.send(None)
            except StopIteration as done:
                return done.value
            try:
                yield step
                error = None
            except asyncio.CancelledError as exc:
                error = exc
                if self._pending is not None:
                    error, self._pending = self._pending, None
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
            except BaseException as exc:
                error = exc


class _Stop(BaseException):
    """Raised in a task's thread to end it (a hard time limit, terminate). Not an
    `Exception`, so that a task's `except Exception:` does not keep it running."""


class _ThreadRun:
    """The thread a task runs in, so that an exception can be raised in it: only while
    it is still running this task (the lock keeps the check and the raise together)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ident: int | None = None

    def attach(self) -> None:
        with self._lock:
            self._ident = threading.get_ident()

    def detach(self) -> None:
        with self._lock:
            self._ident = None

    def interrupt(self, kind: type[BaseException]) -> None:
        with self._lock:
            if self._ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._ident), ctypes.py_object(kind)
                )
                if kind is _Stop:
                    self._ident = None  # stopped once; the run is over for the worker


class ThreadExecutor(_Stoppable):
    """Plain functions in a pool of threads, each run in a copy of the caller's context."""

    def __init__(self, size: int) -> None:
        super().__init__()
        # A thread stopped at a hard limit may still be in a C call that cannot be
        # interrupted; spare threads keep the pool at its size meanwhile.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            size * 2, thread_name_prefix="celeriac-task"
        )
        self._lock = threading.Lock()
        self._busy = 0  # threads inside a task function right now

    def _run_in_thread(self, task: Task[Any, Any], request: Request, run: _ThreadRun) -> Outcome:
        with self._lock:
            self._busy += 1
        try:
            run.attach()
            return run_sync(task, request)
        except _Stop:  # the worker has moved on: this outcome is not used
            return REVOKED
        except SoftTimeLimitExceeded as exc:  # it arrived just after the task returned
            return Outcome("failure", error_type=type(exc).__name__, error_message=str(exc))
        finally:
            run.detach()
            with self._lock:
                self._busy -= 1

    @property
    def busy(self) -> int:
        """Threads still running a task: after shutdown, the ones nothing can stop."""
        return self._busy

    async def run(self, task: Task[Any, Any], request: Request, limits: Limits) -> Outcome:
        loop = asyncio.get_running_loop()
        run = _ThreadRun()
        ctx = contextvars.copy_context()
        work = loop.run_in_executor(self.pool, ctx.run, self._run_in_thread, task, request, run)
        stop = self._stops[request.id] = loop.create_future()
        soft = None
        if limits.soft is not None:
            soft = loop.call_later(limits.soft, run.interrupt, SoftTimeLimitExceeded)
        try:
            ended = await _first(work, stop, limits.hard)
            if ended == "done":
                return work.result()
            run.interrupt(_Stop)
            if ended == "stop":
                return REVOKED
            log.warning("Task %s[%s] stopped at its hard time limit", task.name, request.id)
            return _time_limit_exceeded(limits.hard)
        finally:
            if soft is not None:
                soft.cancel()
            del self._stops[request.id]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# A pool child ---------------------------------------------------------------------------

_in_task = False  # in a child: a task is running, so SIGALRM may interrupt it


def _on_alarm(signum: int, frame: Any) -> None:
    if _in_task:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


def _child_main(conn: Connection, app_spec: str) -> None:
    """A pool child: load the app, then run one request at a time until the pipe closes."""
    global _in_task
    from ..cli.loader import load_app

    # The worker handles SIGINT/SIGTERM (also when they are sent to its whole process
    # group) and lets running tasks finish; it stops its children itself, with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    app = load_app(app_spec)
    while True:
        try:
            request, soft_limit = conn.recv()
        except EOFError:
            return
        try:
            _in_task = True
            if soft_limit:
                signal.setitimer(signal.ITIMER_REAL, soft_limit)
            outcome = run_sync(app.get_task(request.task), request)
        except SoftTimeLimitExceeded as exc:  # the alarm rang just after the task returned
            outcome = Outcome("failure", error_type=type(exc).__name__, error_message=str(exc))
        finally:
            _in_task = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            conn.send(outcome)
        except Exception as exc:  # a result pickle cannot carry; the parent waits for one
            conn.send(Outcome("failure", error_type="EncodeError", error_message=str(exc)))


class _Child:
    def __init__(self, ctx: Any, app_spec: str) -> None:
        self.conn, child_end = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child_end, app_spec), daemon=True)
        self.process.start()
        child_end.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.conn.close()


class ProcessExecutor(_Stoppable):
    """Plain functions in child processes (spawned, never forked from a process that has
    threads), one task per child at a time. The executor knows which child runs which
    task, so a child that dies, is past its hard limit or is terminated is replaced alone;
    the others' tasks go on."""

    def __init__(self, size: int, app_spec: str) -> None:
        super().__init__()
        self.size = size
        self.app_spec = app_spec
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        for _ in range(size):
            self._idle.put_nowait(self._spawn())

    busy = 0  # a child still running at shutdown is killed, not waited for

    def _spawn(self) -> _Child:
        child = _Child(self._ctx, self.app_spec)
        self._children.add(child)
        return child

    def _replace(self, child: _Child) -> None:
        child.kill()
        self._children.discard(child)
        multiprocessing.active_children()  # reaps the ones that ended
        self._idle.put_nowait(self._spawn())

    async def run(self, task: Task[Any, Any], request: Request, limits: Limits) -> Outcome:
        stop = self._stops[request.id] = asyncio.get_running_loop().create_future()
        try:
            child = await self._idle.get()
        except BaseException:
            del self._stops[request.id]
            raise
        if stop.done():  # terminated while waiting for a free child
            del self._stops[request.id]
            self._idle.put_nowait(child)
            return REVOKED
        healthy = False
        exchange = asyncio.ensure_future(self._exchange(child, request, limits.soft))
        try:
            ended = await _first(exchange, stop, limits.hard)
            if ended == "done":
                outcome = exchange.result()
                healthy = outcome.kind != "crashed"
                return outcome
            if ended == "stop":
                return REVOKED
            log.warning("Task %s[%s] killed at its hard time limit", task.name, request.id)
            return _time_limit_exceeded(limits.hard)
        finally:
            exchange.cancel()
            del self._stops[request.id]
            if healthy:
                self._idle.put_nowait(child)
            else:
                self._replace(child)

    async def _exchange(self, child: _Child, request: Request, soft: float | None) -> Outcome:
        """Send the request to the child and wait, without a thread, for its answer."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = child.conn.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            child.conn.send((request, soft))
            await readable
            outcome: Outcome = child.conn.recv()
            return outcome
        except (EOFError, OSError):
            pid = child.process.pid
            for _ in range(100):  # its exit status shows a moment after the pipe closes
                if child.process.exitcode is not None:
                    break
                await asyncio.sleep(0.01)
            message = f"pool process {pid} died (exit code {child.process.exitcode})"
            return Outcome("crashed", error_type="WorkerLostError", error_message=message)
        finally:
            loop.remove_reader(fd)

    def shutdown(self) -> None:
        for child in self._children:
            child.kill()  # a running task's message was handed back already
        self._children.clear()
