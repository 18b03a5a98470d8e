"""`Celeriac`: the app. It owns the configuration, the task registry and `send_task`."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, overload

from .backends import ResultBackend
from .backends import from_url as backend_from_url
from .beat import Beat
from .brokers import Broker, Outgoing
from .brokers import from_url as broker_from_url
from .config import Settings, read_settings
from .control import Control
from .envelope import Envelope, encode
from .exceptions import ConfigurationError, NotRegistered
from .result import AsyncResult
from .signing import Signer
from .task import (
    DEFAULT_IDEMPOTENCY_TTL,
    BoundTaskDecorator,
    P,
    R,
    Task,
    TaskDecorator,
    decorate,
    shared_tasks,
)

log = logging.getLogger("celeriac")

_current: Celeriac | None = None


def current_app() -> Celeriac:
    """The app shared tasks bind to: the one created last (or set with `set_current`)."""
    if _current is None:
        raise ConfigurationError(
            "no Celeriac app exists yet: create one (app = Celeriac('proj')) in the module "
            "that the worker loads with -A, and import it before calling a shared task"
        )
    return _current


class Celeriac:
    """A Celeriac application.

    app = Celeriac("proj")                      # broker: sqlite:///celeriac.db
    app = Celeriac("proj", broker="memory://")  # everything in this process, for tests
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] = (),
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        self._conf = Settings()
        self._pending_config: list[tuple[Any, str | None]] = []
        self._pending_imports: list[str] = list(include)
        self._own_tasks: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._backend_loaded = False
        self._signer: Signer | None = None
        self._builtins: dict[str, Task[Any, Any]] | None = None
        overrides = dict(settings)
        if broker is not None:
            overrides["broker_url"] = broker
        if backend is not None:
            overrides["result_backend"] = backend
        self._conf.update(overrides)
        if set_as_current:
            self.set_current()

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'}>"

    def set_current(self) -> None:
        global _current
        _current = self

    # Configuration -------------------------------------------------------------------------

    @property
    def conf(self) -> Settings:
        """The settings; sources given to `config_from_object` are read on first access,
        so `django.conf:settings` can be named before Django is set up."""
        while self._pending_config:
            source, namespace = self._pending_config.pop(0)
            self._conf.update(read_settings(source, namespace))
        return self._conf

    def config_from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Read settings from a module or object (or its dotted name), or a mapping.
        With `namespace="CELERY"` only `CELERY_*` names are read (`CELERY_BROKER_URL`)."""
        self._pending_config.append((obj, namespace))

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str = "tasks",
    ) -> None:
        """Import `<package>.tasks` for each package when the app first needs its tasks.
        With no packages, Django's installed apps (once Django is set up)."""
        self._autodiscover = (packages, related_name)

    _autodiscover: tuple[Any, str] | None = None

    def _import_task_modules(self) -> None:
        conf = self.conf
        names = [*self._pending_imports, *conf.imports, *conf.include]
        self._pending_imports.clear()
        if self._autodiscover is not None:
            packages, related = self._autodiscover
            self._autodiscover = None
            if packages is None:
                packages = _django_apps()
            elif callable(packages):
                packages = packages()
            for package in packages:
                module = f"{package}.{related}"
                if importlib.util.find_spec(package) is None:
                    raise ConfigurationError(f"autodiscover_tasks: no package {package!r}")
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    if exc.name != module:
                        raise
        for name in names:
            importlib.import_module(name)

    # Tasks ---------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
    @overload
    def task(self, *, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...
    # mypy wrongly finds this implementation narrower than the keyword-only overloads when
    # it is a method; the same signature as a function (`shared_task`) passes.
    def task(  # type: ignore[misc]
        self, fn: Callable[..., Any] | None = None, /, **options: Any
    ) -> Any:
        """Declare a task on this app: `@app.task` or `@app.task(bind=True, queue="mail")`."""
        return decorate(fn, options, self)

    def register(self, task: Task[Any, Any]) -> None:
        self._own_tasks[task.name] = task

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """Every task this app can run: its own and the shared ones, by name."""
        self._import_task_modules()
        found = {t.name: t for t in shared_tasks()}
        found.update(self._own_tasks)
        found.update(self._builtin_tasks())
        return found

    def _builtin_tasks(self) -> dict[str, Task[Any, Any]]:
        """`celeriac.map` and `celeriac.starmap`, the tasks of `task.map()` / `.starmap()`,
        and `celeriac.backend_cleanup`, which the beat runs daily."""
        if self._builtins is None:
            from .beat import CLEANUP_TASK
            from .canvas import MAP_TASK, STARMAP_TASK, run_map
            from .task import TaskOptions

            def map_task(task_name: str, items: list[Any]) -> list[Any]:
                return run_map(self, task_name, items, star=False)

            def starmap_task(task_name: str, items: list[Any]) -> list[Any]:
                return run_map(self, task_name, items, star=True)

            def backend_cleanup() -> int:
                return self.backend.cleanup() if self.backend is not None else 0

            self._builtins = {
                MAP_TASK: Task(map_task, TaskOptions(name=MAP_TASK), self),
                STARMAP_TASK: Task(starmap_task, TaskOptions(name=STARMAP_TASK), self),
                CLEANUP_TASK: Task(backend_cleanup, TaskOptions(name=CLEANUP_TASK), self),
            }
        return self._builtins

    def get_task(self, name: str) -> Task[Any, Any]:
        task = self._own_tasks.get(name) or self.tasks.get(name)
        if task is None:
            task = self._django_task(name)
        if task is None:
            raise NotRegistered(f"task {name!r} is not registered with {self!r}")
        return task

    def _django_task(self, name: str) -> Task[Any, Any] | None:
        """A task of Django's Tasks framework, sent by CeleriacBackend under its path."""
        from .contrib.django import django_ready

        if "." not in name or not django_ready():
            return None
        from .contrib.django.tasks_backend import django_task

        task = django_task(self, name)
        if task is not None:
            self.register(task)
        return task

    # Brokers and results -----------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            conf = self.conf
            self._broker = broker_from_url(
                conf.effective_broker_url,
                max_lease_expiries=conf.broker_max_lease_expiries,
                durable_publish=conf.broker_durable_publish,
                prefix=conf.broker_key_prefix,
                state_url=conf.effective_broker_state_url,
            )
        return self._broker

    @property
    def backend(self) -> ResultBackend | None:
        if not self._backend_loaded:
            url = self.conf.effective_result_backend
            self._backend = (
                backend_from_url(
                    url, expires=self.conf.result_expires, prefix=self.conf.broker_key_prefix
                )
                if url
                else None
            )
            self._backend_loaded = True
        return self._backend

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
        if self._backend is not None:
            self._backend.close()
        self._broker = self._backend = None
        self._backend_loaded = False

    # Sending -------------------------------------------------------------------------------

    def route(self, task_name: str) -> str:
        """The queue for a task by `task_routes`, else the default queue."""
        routes = self.conf.task_routes
        if not routes:
            return self.conf.task_default_queue
        for table in routes if isinstance(routes, list | tuple) else [routes]:
            if not isinstance(table, Mapping):
                raise ConfigurationError(f"task_routes: expected a dict, got {table!r}")
            for pattern, route in table.items():
                if fnmatch.fnmatchcase(task_name, pattern):
                    queue = route.get("queue") if isinstance(route, Mapping) else route
                    if isinstance(queue, str):
                        return queue
        return self.conf.task_default_queue

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        eta: float | None = None,
        expires: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        outbox: bool | None = None,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be importable here). `eta`/`expires` are unix
        times; `Task.apply_async` takes countdowns and datetimes, and explains the
        idempotency key."""
        envelope = self.envelope(
            name,
            args,
            kwargs,
            eta=eta,
            expires=expires,
            queue=queue,
            priority=priority,
            task_id=task_id,
            headers=headers,
            idempotency_key=idempotency_key,
        )
        taken = self.publish([envelope], idempotency_ttl, outbox=outbox)
        return AsyncResult(taken.get(envelope.id, envelope.id), self, name)

    def send_many(
        self, calls: Iterable[tuple[str, Sequence[Any], dict[str, Any]]]
    ) -> list[AsyncResult[Any]]:
        """Send many tasks in one broker call (one round trip, one transaction): each call
        is `(name, args, kwargs)`. Nothing is sent if any of them cannot be encoded."""
        envelopes = [self.envelope(name, args, kwargs) for name, args, kwargs in calls]
        self.publish(envelopes)
        return [AsyncResult(e.id, self, e.task) for e in envelopes]

    def envelope(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        eta: float | None = None,
        expires: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Envelope:
        """Build (and check) the message for one task call."""
        priority = self.conf.task_default_priority if priority is None else priority
        if not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ConfigurationError(f"priority must be an integer from 0 to 9, not {priority!r}")
        if args is not None and not isinstance(args, list | tuple):
            raise ConfigurationError(f"args must be a list or tuple, not {type(args).__name__}")
        return Envelope(
            id=task_id or str(uuid.uuid4()),
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            queue=queue or self.route(name),
            priority=priority,
            eta=eta,
            expires=expires,
            headers=headers or {},
            sent_at=time.time(),
            idempotency_key=idempotency_key,
        )

    def publish(
        self,
        envelopes: Sequence[Envelope],
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        *,
        outbox: bool | None = None,
    ) -> dict[str, str]:
        """Encode and publish envelopes in one broker call. Returns, for each envelope not
        sent because its idempotency key was taken, its id -> the id that holds the key.
        With the outbox (`task_outbox`, or `outbox=True`) inside a Django transaction, the
        messages are written to the outbox table instead and published after commit."""
        messages = [
            Outgoing(
                e.id,
                e.queue,
                self.encode(e),
                e.priority,
                e.eta,
                e.idempotency_key,
                idempotency_ttl,
            )
            for e in envelopes
        ]
        if self.conf.task_outbox if outbox is None else outbox:
            from .contrib.django.outbox import stage

            if stage(self, messages):
                return {}  # (a taken idempotency key is found when the relay publishes)
        return self.broker.publish(messages)

    def encode(self, envelope: Envelope) -> bytes:
        """The bytes on the wire: the JSON envelope, signed when `security_key` is set."""
        return self.signer.sign(encode(envelope))

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = Signer(self.conf.security_key, self.conf.security_old_keys)
        return self._signer

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        return AsyncResult(task_id, self)

    @property
    def beat(self) -> Beat:
        """Periodic tasks: `app.beat.add(...)`, `.remove()`, `.pause()`, `.entries()`."""
        return Beat(self)

    @property
    def control(self) -> Control:
        """Act on tasks already sent: `app.control.revoke(task_id, terminate=True)`."""
        return Control(self)


def _django_apps() -> list[str]:
    try:
        import django
        from django.apps import apps
    except ImportError:
        raise ConfigurationError(
            "autodiscover_tasks() without packages needs Django; name the packages instead"
        ) from None
    if not apps.ready:
        if not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ConfigurationError(
                "autodiscover_tasks() needs DJANGO_SETTINGS_MODULE: set it in your celeriac.py"
                ' (os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings"))'
            )
        django.setup()  # as Celery's worker does for a Django project
    return [config.name for config in apps.get_app_configs()]
