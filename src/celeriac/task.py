"""`Task`: a function (sync or `async def`) with its options, and how to call it.

`delay(*args, **kwargs)` passes only the task's own arguments and is typed by them;
options go through `apply_async(..., countdown=, queue=, ...)`. `shared_task` makes a task
that belongs to no app: it binds to the app in use when it is first called.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import inspect
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    NoReturn,
    ParamSpec,
    TypeVar,
    overload,
)

from . import states
from .envelope import call_digest
from .exceptions import ConfigurationError, MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from .app import Celeriac
    from .canvas import Signature, group
    from .result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")


DEFAULT_IDEMPOTENCY_TTL = 86400.0


@dataclass(frozen=True)
class TaskOptions:
    """Options a task declares. Unknown names are an error at decoration time."""

    name: str | None = None
    bind: bool = False
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3  # None: retry forever
    default_retry_delay: float = 180.0
    ignore_result: bool | None = None  # None: the app's task_ignore_result
    acks_late: bool = True  # accepted for Celery code; Celeriac always acks after the outcome
    # Retry by itself on these exceptions, as if the task had called `self.retry(exc=...)`.
    autoretry_for: tuple[type[BaseException], ...] = ()
    # Wait 1, 2, 4, ... seconds (or factor * 2**retries for a number) instead of
    # default_retry_delay, at most retry_backoff_max; with retry_jitter, a random part of it.
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    # A final failure (retries exhausted) also moves the message to the dead letters, from
    # where `celeriac dlq replay` runs it again.
    dead_letter_on_failure: bool = False
    # Seconds: at the soft limit SoftTimeLimitExceeded is raised inside the task; at the
    # hard limit the task is stopped and fails with TimeLimitExceeded (see docs/tasks.md).
    soft_time_limit: float | None = None
    time_limit: float | None = None
    # "100/m" (or /s, /h; a bare number is per second): at most that many starts of this
    # task, across all workers together; the rest wait in the broker.
    rate_limit: str | float | None = None
    # Seconds after sending (or a datetime) past which a task not yet started is not run.
    expires: float | dt.datetime | None = None
    # Send at most once per (task, arguments) within idempotency_ttl seconds; see
    # apply_async(idempotency_key=...) and docs/tasks.md for what this guarantees.
    idempotent: bool = False
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    # Django: run inside transaction.atomic() with a done-mark, so that a redelivered
    # message does not repeat its database writes (contrib/django/atomic.py).
    atomic: bool = False
    # Django: inside transaction.atomic(), write the message to the outbox table and
    # publish it after commit (None: the task_outbox setting).
    outbox: bool | None = None

    @property
    def rate_interval(self) -> float | None:
        """Seconds between two starts under `rate_limit`; None without one."""
        return _rate_interval(self.rate_limit) if self.rate_limit else None

    def retry_delay(self, retries: int) -> float:
        """Seconds to wait before retry number `retries + 1` of an automatic retry."""
        if not self.retry_backoff:
            return self.default_retry_delay
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(self.retry_backoff_max, factor * 2**retries)
        return random.uniform(0, delay) if self.retry_jitter else delay


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(TaskOptions))


RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _rate_interval(rate: str | float) -> float:
    """`"100/m"` -> 0.6 (seconds between starts), Celery's notation."""
    count, _, unit = str(rate).partition("/")
    try:
        per_period = float(count)
        period = RATE_PERIODS[unit or "s"]
    except (ValueError, KeyError):
        per_period = period = 0.0
    if per_period <= 0 or period <= 0:
        raise ConfigurationError(
            f"rate_limit={rate!r}: expected a number of starts per second, minute or hour,"
            ' like "10/s", "100/m" or "1000/h"'
        )
    return period / per_period


def make_options(options: dict[str, Any]) -> TaskOptions:
    for key in options:
        if key not in OPTION_NAMES:
            raise ConfigurationError(
                f"unknown task option {key!r}; known options: {', '.join(sorted(OPTION_NAMES))}"
            )
    priority = options.get("priority")
    if priority is not None and not 0 <= priority <= 9:
        raise ConfigurationError(f"task option priority={priority!r} must be between 0 and 9")
    for key in ("soft_time_limit", "time_limit"):
        limit = options.get(key)
        if limit is not None and (not isinstance(limit, int | float) or limit <= 0):
            raise ConfigurationError(
                f"task option {key}={limit!r} must be a positive number of seconds"
            )
    ttl = options.get("idempotency_ttl")
    if ttl is not None and (not isinstance(ttl, int | float) or ttl <= 0):
        raise ConfigurationError(
            f"task option idempotency_ttl={ttl!r} must be a positive number of seconds"
        )
    if options.get("rate_limit"):
        _rate_interval(options["rate_limit"])
    if "autoretry_for" in options:
        kinds = options["autoretry_for"]
        kinds = tuple(kinds) if isinstance(kinds, list | tuple) else (kinds,)
        if not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
            raise ConfigurationError(
                f"task option autoretry_for={options['autoretry_for']!r} must be exception"
                " classes, e.g. autoretry_for=(ConnectionError,)"
            )
        options = {**options, "autoretry_for": kinds}
    return TaskOptions(**options)


@dataclass(frozen=True)
class Request:
    """What a running task knows about its own message: `self.request` in a bound task."""

    id: str
    task: str
    args: Sequence[Any]
    kwargs: dict[str, Any]
    retries: int = 0
    queue: str | None = None
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    eta: float | None = None


current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "celeriac_request", default=None
)


def _timestamp(value: dt.datetime | float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # naive datetimes are UTC, as with Celery's enable_utc
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    if isinstance(value, int | float):
        return time.time() + float(value)
    raise ConfigurationError(f"{what} must be a datetime or a number of seconds, not {value!r}")


class Task(Generic[P, R]):
    """A registered function. `R` is its result type (awaited, for `async def`)."""

    def __init__(
        self, fn: Callable[..., Any], options: TaskOptions, app: Celeriac | None = None
    ) -> None:
        self.fn = fn
        self.options = options
        self.name: str = options.name or f"{fn.__module__}.{fn.__qualname__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        if options.atomic and self.is_async:
            raise ConfigurationError(
                f"{self.name}: atomic=True needs a plain function (Django transactions are"
                " per thread), not an async def"
            )
        self._app = app
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def app(self) -> Celeriac:
        """The app this task was declared on, or for a shared task the current app."""
        if self._app is not None:
            return self._app
        from .app import current_app

        return current_app()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now, as a plain call (a coroutine for `async def`)."""
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    # Sending ---------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; returns at once with its `AsyncResult`."""
        return self.apply_async(args, kwargs)

    def delay_many(self, calls: Iterable[Sequence[Any]]) -> list[AsyncResult[R]]:
        """Send one task per item of `calls` (each the positional arguments of one call)
        in a single broker call: `add.delay_many([(1, 2), (3, 4)])`."""
        from .result import AsyncResult

        app = self.app
        options = self.options
        queue = options.queue or app.route(self.name)  # once for the whole batch
        priority = options.priority
        envelopes = [
            app.envelope(
                self.name,
                args,
                queue=queue,
                priority=priority,
                expires=_timestamp(options.expires, "expires"),
                idempotency_key=self.idempotency_key(args, {}) if options.idempotent else None,
            )
            for args in calls
        ]
        taken = app.publish(envelopes, options.idempotency_ttl, outbox=options.outbox)
        return [AsyncResult(taken.get(e.id, e.id), app, self.name) for e in envelopes]

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Django: send the task once the current database transaction commits (at once
        outside a transaction); nothing is sent if it rolls back."""
        from django.db import transaction

        transaction.on_commit(lambda: self.apply_async(args, kwargs))

    def idempotency_key(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
        """The key of `idempotent=True`: the task's name and a hash of its arguments."""
        return f"{self.name}:{call_digest(list(args), kwargs)}"

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: dt.datetime | None = None,
        expires: dt.datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_ttl: float | None = None,
    ) -> AsyncResult[R]:
        """Send the task with options. `countdown` (seconds) or `eta` (datetime; naive means
        UTC) delay it; `expires` (seconds from now, or a datetime) drops it if not started
        by then; `priority` 0-9, higher first. With an `idempotency_key` (or the task option
        `idempotent=True`), a call whose key was sent within `idempotency_ttl` seconds
        sends nothing and returns the result of the task that took the key."""
        if countdown is not None and eta is not None:
            raise ConfigurationError("give countdown or eta, not both")
        if idempotency_key is None and self.options.idempotent:
            idempotency_key = self.idempotency_key(args or (), kwargs or {})
        return self.app.send_task(
            self.name,
            args=args,
            kwargs=kwargs,
            eta=_timestamp(countdown if countdown is not None else eta, "eta"),
            expires=_timestamp(expires if expires is not None else self.options.expires, "expires"),
            queue=queue or self.options.queue,
            priority=priority if priority is not None else self.options.priority,
            task_id=task_id,
            headers=headers,
            idempotency_key=idempotency_key,
            idempotency_ttl=(
                idempotency_ttl if idempotency_ttl is not None else self.options.idempotency_ttl
            ),
            outbox=self.options.outbox,
        )

    # Workflows -------------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This task with some arguments, not sent yet; in a chain it gets the previous
        step's result before these."""
        from .canvas import task_signature

        return task_signature(self, args, kwargs, immutable=False)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Like `s()`, but immutable: in a chain it does not get the previous result."""
        from .canvas import task_signature

        return task_signature(self, args, kwargs, immutable=True)

    def signature(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        from .canvas import task_signature

        return task_signature(self, args, kwargs or {}, immutable=False).set(**options)

    def map(self, items: Iterable[Any]) -> Signature:
        """One task that calls this one for each item, in order: returns their results."""
        from .canvas import MAP_TASK, Signature

        return Signature(MAP_TASK, [self.name, list(items)], app=self._app)

    def starmap(self, items: Iterable[Sequence[Any]]) -> Signature:
        """Like `map`, each item being the positional arguments of one call."""
        from .canvas import STARMAP_TASK, Signature

        return Signature(STARMAP_TASK, [self.name, [list(i) for i in items]], app=self._app)

    def chunks(self, items: Iterable[Sequence[Any]], n: int) -> group:
        """A group of `starmap` tasks of `n` items each: `apply_async()` gives a
        `GroupResult` whose results are the lists of each chunk's results."""
        from .canvas import group

        if n < 1:
            raise ConfigurationError(f"chunks of {n} items: n must be at least 1")
        calls = [list(i) for i in items]
        return group(
            [self.starmap(calls[i : i + n]) for i in range(0, len(calls), n)], app=self._app
        )

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        from .result import AsyncResult

        return AsyncResult(task_id, self.app, self.name)

    # Inside a running task ---------------------------------------------------------------

    @property
    def request(self) -> Request:
        request = current_request.get()
        if request is None:
            raise RuntimeError(f"{self.name}.request is only available while the task runs")
        return request

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
    ) -> NoReturn:
        """Ask to run again in `countdown` seconds (default `default_retry_delay`).

        Past `max_retries`, raises `exc` if given, else `MaxRetriesExceededError`.
        Use as `raise self.retry(exc=exc)` so readers see that it does not return.
        """
        request = self.request
        limit = self.options.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{request.id}] already retried {request.retries} times"
            )
        raise Retry(self.options.default_retry_delay if countdown is None else countdown, exc)

    def update_progress(self, current: float, total: float, message: str | None = None) -> None:
        """Report progress; `AsyncResult.progress` and `celeriac result --wait` show it."""
        from .backends.base import TaskMeta

        backend = self.app.backend
        if backend is None:
            return
        request = self.request
        info = {"current": current, "total": total, "message": message}
        backend.store([TaskMeta(request.id, states.STARTED, self.name, info=info)])


class TaskDecorator:
    """What `@shared_task(...)` and `@app.task(...)` return: applied to a function, a Task."""

    def __init__(self, options: TaskOptions, app: Celeriac | None) -> None:
        self.options = options
        self.app = app

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Task[Any, Any]:
        return register(fn, self.options, self.app)


class BoundTaskDecorator:
    """`@shared_task(bind=True)`: the function takes the task as its first argument."""

    def __init__(self, options: TaskOptions, app: Celeriac | None) -> None:
        self.options = options
        self.app = app

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R]) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Task[Any, Any]:
        return register(fn, self.options, self.app)


_shared_tasks: list[Task[Any, Any]] = []


def register(fn: Callable[..., Any], options: TaskOptions, app: Celeriac | None) -> Task[Any, Any]:
    task: Task[Any, Any] = Task(fn, options, app)
    if app is None:
        _shared_tasks.append(task)
    else:
        app.register(task)
    return task


def shared_tasks() -> list[Task[Any, Any]]:
    return list(_shared_tasks)


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(*, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
@overload
def shared_task(*, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...
def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task that belongs to no app: it binds to the current app when called.

    `@shared_task`, or with options: `@shared_task(bind=True, max_retries=3, queue="mail")`.
    """
    return decorate(fn, options, None)


def decorate(fn: Callable[..., Any] | None, options: dict[str, Any], app: Celeriac | None) -> Any:
    """The body of `shared_task` and `app.task`: a Task, or a decorator that makes one."""
    opts = make_options(options)
    if fn is not None:
        return register(fn, opts, app)
    return BoundTaskDecorator(opts, app) if opts.bind else TaskDecorator(opts, app)
