"""Workflows: signatures, chain, group, chord, map — Celery's canvas, kept durable.

A `Signature` is a dict (so it round-trips through JSON): `task`, `args`, `kwargs`,
`options`, `immutable`, `subtask_type` (None for one task, or "chain", "group", "chord").
Applying a workflow gives every task in it an id up front, then sends only what can run
now. The rest travels in the headers of the messages that run first:

    chain   the steps after this one; the worker that finishes a step sends the next,
            with the step's result as the next step's first argument
    chord   where this task's completion is counted: the group id, its size, the body
    link, link_error   callbacks, sent with the result / with the failed task's id

so no worker waits for another and no task polls. A chord member that finishes (or fails)
is counted in the result backend (`chord_done`, which counts a redelivered member once);
the member that completes the count sends the body. Every message a workflow sends carries
an idempotency key made from its task id, so a step sent again after a worker died
between sending it and acking its own message is stored once, and a step that already
succeeded is not run again (see docs/canvas.md).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import states
from .backends.base import TaskMeta
from .envelope import Envelope
from .exceptions import ConfigurationError
from .result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from .app import Celeriac
    from .task import Task

# Options a signature may carry (`sig.set(...)`), as `apply_async` takes them.
SEND_OPTIONS = frozenset(
    {"queue", "priority", "countdown", "eta", "expires", "task_id", "link", "link_error"}
)
FLOW_HEADERS = ("chain", "chord", "link", "link_error")
MAP_TASK = "celeriac.map"
STARMAP_TASK = "celeriac.starmap"


class Signature(dict[str, Any]):
    """One task call, not yet sent: `add.s(2, 2)`, or `signature({"task": ..., ...})`."""

    def __init__(
        self,
        task: str | dict[str, Any],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: Celeriac | None = None,
    ) -> None:
        if isinstance(task, dict):  # from a dict (JSON)
            super().__init__(task)
            self.setdefault("args", [])
            self.setdefault("kwargs", {})
            self.setdefault("options", {})
            self.setdefault("immutable", False)
            self.setdefault("subtask_type", None)
        else:
            super().__init__(
                task=task,
                args=list(args),
                kwargs=dict(kwargs or {}),
                options=dict(options or {}),
                immutable=immutable,
                subtask_type=subtask_type,
            )
        unknown = set(self["options"]) - SEND_OPTIONS - {"group_id"}
        if unknown:
            raise ConfigurationError(
                f"unknown signature option(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(sorted(SEND_OPTIONS))
            )
        self._app = app

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> list[Any]:
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def id(self) -> str | None:
        task_id = self["options"].get("task_id")
        return None if task_id is None else str(task_id)

    def set(self, **options: Any) -> Signature:
        """Set sending options (`queue`, `countdown`, `priority`, ...); returns self."""
        unknown = set(options) - SEND_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown signature option(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(sorted(SEND_OPTIONS))
            )
        for key in ("link", "link_error"):
            if key in options:
                options[key] = _callbacks(options[key])
        self["options"].update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Send `callback` with this task's result once it succeeds."""
        self["options"].setdefault("link", []).append(dict(callback))
        return self

    def link_error(self, errback: Signature) -> Signature:
        """Send `errback` with this task's id if it fails for good."""
        self["options"].setdefault("link_error", []).append(dict(errback))
        return self

    def clone(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> Signature:
        """A copy, with `args` put before its own and `kwargs` merged in (unless immutable)."""
        copy = signature(_deep_copy(dict(self)), app=self._app)
        if not copy.immutable and self["subtask_type"] is None:
            copy["args"] = [*args, *copy["args"]]
            copy["kwargs"] = {**copy["kwargs"], **(kwargs or {})}
        return copy

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(self, other, app=self._app or other._app)

    def freeze(self) -> AsyncResult[Any] | GroupResult:
        """Give this workflow's tasks their ids now; returns the result it will have."""
        return _freeze(self, self._bound_app())

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send it: the result of the task, or of the last step of a chain, or a
        `GroupResult` for a group, or the body's result for a chord."""
        app = self._bound_app()
        sig = self.clone((), kwargs)
        if options:
            sig.set(**options)
        result = _freeze(sig, app)
        plan = _Plan(app)
        plan.add(sig, tuple(args), [], None)  # before the first task's (each member's) args
        plan.commit()
        return result

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def _bound_app(self) -> Celeriac:
        if self._app is not None:
            return self._app
        from .app import current_app

        return current_app()

    def __repr__(self) -> str:
        kind = self["subtask_type"] or "signature"
        return f"<{kind} {self.task} args={self['args']!r} kwargs={self['kwargs']!r}>"


class chain(Signature):  # Celery's lower-case name
    """Steps run one after the other, each given the previous step's result first:
    `chain(a.s(1), b.s(), c.s())`, or `a.s(1) | b.s() | c.s()`."""

    def __init__(self, *tasks: Signature | dict[str, Any], app: Celeriac | None = None) -> None:
        app = app or _app_of(tasks)
        flat: list[dict[str, Any]] = []
        for step in (signature(t) for t in tasks):
            if step["subtask_type"] == "chain":
                flat.extend(step["kwargs"]["tasks"])
            else:
                flat.append(dict(step))
        if not flat:
            raise ConfigurationError("a chain needs at least one step")
        super().__init__("celeriac.chain", kwargs={"tasks": flat}, subtask_type="chain", app=app)

    @property
    def tasks(self) -> list[Signature]:
        return [signature(t) for t in self["kwargs"]["tasks"]]

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other, app=self._app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`chain(...)()` sends it, as in Celery."""
        return self.apply_async(args, kwargs)


class group(Signature):  # Celery's lower-case name
    """Tasks that run in parallel; `apply_async()` returns a `GroupResult`."""

    def __init__(
        self, *tasks: Signature | dict[str, Any] | Iterable[Signature], app: Celeriac | None = None
    ) -> None:
        members = _members(tasks)
        app = app or _app_of(members)
        super().__init__(
            "celeriac.group",
            kwargs={"tasks": [dict(signature(t)) for t in members]},
            subtask_type="group",
            app=app,
        )

    @property
    def tasks(self) -> list[Signature]:
        return [signature(t) for t in self["kwargs"]["tasks"]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`group(...)()` sends it, as in Celery."""
        return self.apply_async(args, kwargs)


class chord(Signature):  # Celery's lower-case name
    """A group (the header) and a task (the body) sent with the list of the header's
    results once all of them succeeded: `chord(header)(body)` or `chord(header, body)`."""

    def __init__(
        self,
        header: Signature | Iterable[Signature],
        body: Signature | dict[str, Any] | None = None,
        app: Celeriac | None = None,
    ) -> None:
        if isinstance(header, dict):  # a group, or a group's dict (from JSON)
            head = signature(header)
            if head["subtask_type"] != "group":
                head = group(head)
        else:
            head = group(header)
        app = app or head._app or _app_of([body])
        super().__init__(
            "celeriac.chord",
            kwargs={"header": dict(head), "body": None if body is None else dict(body)},
            subtask_type="chord",
            app=app,
        )

    def __call__(self, body: Signature) -> Any:
        self["kwargs"]["body"] = dict(body)
        return self.apply_async()


def signature(value: Signature | dict[str, Any], app: Celeriac | None = None) -> Signature:
    """The signature of the right kind for a dict (e.g. read from JSON)."""
    if isinstance(value, Signature) and app is None:
        return value
    data = dict(value)
    kind = data.get("subtask_type")
    made: Signature
    if kind == "chain":
        made = chain(*data["kwargs"]["tasks"], app=app)
    elif kind == "group":
        made = group(*data["kwargs"]["tasks"], app=app)
    elif kind == "chord":
        made = chord(data["kwargs"]["header"], data["kwargs"]["body"], app=app)
    else:
        return Signature(data, app=app)
    made["options"] = dict(data.get("options") or {})
    return made


def task_signature(
    task: Task[Any, Any], args: Sequence[Any], kwargs: dict[str, Any], immutable: bool
) -> Signature:
    options: dict[str, Any] = {}
    if task.options.queue:
        options["queue"] = task.options.queue
    if task.options.priority is not None:
        options["priority"] = task.options.priority
    return Signature(task.name, args, kwargs, options, immutable=immutable, app=task._app)


# Freezing: every task gets its id before anything is sent ---------------------------------


def _freeze(sig: Signature, app: Celeriac) -> AsyncResult[Any] | GroupResult:
    kind = sig["subtask_type"]
    if kind is None:
        sig["options"].setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(sig["options"]["task_id"], app, sig.task)
    if kind == "chain":
        steps = sig["kwargs"]["tasks"]
        return [_freeze_in_place(steps, i, app) for i in range(len(steps))][-1]
    if kind == "group":
        gid = sig["options"].setdefault("group_id", str(uuid.uuid4()))
        members = sig["kwargs"]["tasks"]
        return GroupResult(
            gid, [_freeze_in_place(members, i, app) for i in range(len(members))], app
        )
    if kind == "chord":
        header = signature(sig["kwargs"]["header"])
        parent = _freeze(header, app)
        sig["kwargs"]["header"] = dict(header)
        body = sig["kwargs"]["body"]
        if body is None:
            raise ConfigurationError("a chord needs a body: chord(header)(body)")
        body_sig = signature(body)
        result = _freeze(body_sig, app)
        sig["kwargs"]["body"] = dict(body_sig)
        if isinstance(result, AsyncResult) and isinstance(parent, GroupResult):
            result.parent = parent
        return result
    raise ConfigurationError(f"unknown signature type {kind!r}")


def _freeze_in_place(
    items: list[dict[str, Any]], index: int, app: Celeriac
) -> AsyncResult[Any] | GroupResult:
    sig = signature(items[index])
    result = _freeze(sig, app)
    items[index] = dict(sig)
    return result


def _result_ids(sig: dict[str, Any]) -> list[str]:
    """The ids whose results stand for a frozen signature's result."""
    kind = sig.get("subtask_type")
    if kind is None:
        return [sig["options"]["task_id"]]
    if kind == "chain":
        return _result_ids(sig["kwargs"]["tasks"][-1])
    if kind == "group":
        return [i for t in sig["kwargs"]["tasks"] for i in _result_ids(t)]
    return _result_ids(sig["kwargs"]["body"])


# Sending ---------------------------------------------------------------------------------


class _Plan:
    """What applying a workflow (or one step of it) sends: messages, and the groups to save
    first, so that a chord's members are known before any of them can finish."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self.envelopes: list[Envelope] = []
        self.groups: list[tuple[str, list[str]]] = []

    def add(
        self,
        sig: Signature,
        prefix: Sequence[Any],
        rest: list[dict[str, Any]],
        chord_info: dict[str, Any] | None,
    ) -> None:
        """Send `sig` with `prefix` before its arguments; `rest` (chain steps) runs after
        it, and `chord_info` counts the completion of the whole."""
        kind = sig["subtask_type"]
        if kind is None:
            self._task(sig, prefix, rest, chord_info)
        elif kind == "chain":
            steps = sig["kwargs"]["tasks"]
            self.add(signature(steps[0]), prefix, [*steps[1:], *rest], chord_info)
        elif kind == "group" and rest:
            # A group followed by more steps is a chord whose body is the next step.
            body = signature(rest[0])
            self.add(chord(sig, body), prefix, rest[1:], chord_info)
        elif kind == "group":
            if chord_info is not None:
                raise ConfigurationError(
                    "a group cannot end a chord member or a chain inside a chord; give it a"
                    " body (make it a chord)"
                )
            members = sig["kwargs"]["tasks"]
            self.groups.append(
                (sig["options"]["group_id"], [i for m in members for i in _result_ids(m)])
            )
            for member in members:
                self.add(signature(member), prefix, [], None)
        else:
            self._chord(sig, prefix, rest, chord_info)

    def _chord(
        self,
        sig: Signature,
        prefix: Sequence[Any],
        rest: list[dict[str, Any]],
        chord_info: dict[str, Any] | None,
    ) -> None:
        header = sig["kwargs"]["header"]
        body = sig["kwargs"]["body"]
        members = header["kwargs"]["tasks"]
        gid = header["options"]["group_id"]
        member_ids = [i for m in members for i in _result_ids(m)]
        if self.app.backend is None:
            raise ConfigurationError("a chord needs a result backend: set result_backend")
        info = {
            "group": gid,
            "size": len(member_ids),
            "body": body,
            "body_chain": rest,
            "body_chord": chord_info,
        }
        self.groups.append((gid, member_ids))
        # Under the body's id too, with the body last: `celeriac result <chord id>` shows
        # the progress of the whole chord.
        body_id = _result_ids(body)[-1]
        self.groups.append((body_id, [*member_ids, body_id]))
        if not members:  # nothing to wait for
            self.add(signature(body), ([],), rest, chord_info)
        for member in members:
            self.add(signature(member), prefix, [], info)

    def _task(
        self,
        sig: Signature,
        prefix: Sequence[Any],
        rest: list[dict[str, Any]],
        chord_info: dict[str, Any] | None,
    ) -> None:
        options = sig["options"]
        args = sig["args"] if sig.immutable else [*prefix, *sig["args"]]
        headers: dict[str, Any] = {}
        if rest:
            headers["chain"] = rest
        if chord_info is not None:
            headers["chord"] = chord_info
        for key in ("link", "link_error"):
            if options.get(key):
                headers[key] = options[key]
        now = time.time()
        eta = _unix_time(options.get("eta"))
        if options.get("countdown") is not None:
            eta = now + float(options["countdown"])
        expires = options.get("expires")  # seconds from when the step is sent, or a time
        expires = now + expires if isinstance(expires, int | float) else _unix_time(expires)
        task_id = options["task_id"]
        self.envelopes.append(
            self.app.envelope(
                sig.task,
                args,
                sig["kwargs"],
                eta=eta,
                expires=expires,
                queue=options.get("queue"),
                priority=options.get("priority"),
                task_id=task_id,
                headers=headers,
                idempotency_key=f"canvas:{task_id}",
            )
        )

    def commit(self) -> None:
        backend = self.app.backend
        if self.groups:
            if backend is None:
                raise ConfigurationError("a group needs a result backend: set result_backend")
            for gid, members in self.groups:
                backend.save_group(gid, members)
        if self.envelopes:
            self.app.publish(self.envelopes)


# The worker's side: what follows a task's final outcome ------------------------------------


def is_flow(envelope: Envelope) -> bool:
    """Does a workflow continue after this message?"""
    headers = envelope.headers
    return bool(headers) and any(key in headers for key in FLOW_HEADERS)


def advance(app: Celeriac, envelope: Envelope, meta: TaskMeta) -> None:
    """Send what follows `envelope`'s final outcome `meta` (already stored): the next chain
    step, the chord's body once all members are done, callbacks. Safe to call again for the
    same outcome (a redelivered message): what it sends is deduplicated by task id."""
    headers = envelope.headers
    plan = _Plan(app)
    rest = list(headers.get("chain") or [])
    chord_info = headers.get("chord")
    if meta.state == states.SUCCESS:
        for callback in headers.get("link") or []:
            plan.add(signature(callback, app), (meta.result,), [], None)
        if rest:
            plan.add(signature(rest[0], app), (meta.result,), rest[1:], chord_info)
        elif chord_info is not None:
            _member_done(plan, chord_info, envelope.id, None)
    else:
        for errback in headers.get("link_error") or []:
            plan.add(signature(errback, app), (envelope.id,), [], None)
        error = _error_of(meta)
        _fail(plan, envelope.id, error, rest, chord_info)
    plan.commit()


def _error_of(meta: TaskMeta) -> dict[str, str]:
    if isinstance(meta.result, dict) and "type" in meta.result:
        return {"type": str(meta.result["type"]), "message": str(meta.result.get("message", ""))}
    return {"type": meta.state, "message": ""}


def _fail(
    plan: _Plan,
    failed_id: str,
    error: dict[str, str],
    rest: list[dict[str, Any]],
    chord_info: dict[str, Any] | None,
) -> None:
    """A step failed for good: the chain's later steps never run (their results say why),
    and the chord it belongs to fails."""
    app = plan.app
    backend = app.backend
    later = [i for step in rest for i in _result_ids(step)]
    if later and backend is not None:
        message = f"task {failed_id} earlier in the chain failed: {error['message']}"
        now = time.time()
        backend.store(
            [
                TaskMeta(
                    i,
                    states.FAILURE,
                    None,
                    {"type": error["type"], "message": message},
                    date_done=now,
                )
                for i in later
            ]
        )
    if chord_info is not None:
        member = later[-1] if later else failed_id
        _member_done(plan, chord_info, member, (failed_id, error))


def _member_done(
    plan: _Plan,
    info: dict[str, Any],
    member_id: str,
    failure: tuple[str, dict[str, str]] | None,
) -> None:
    """Count a chord member as done; the one that completes the count sends the body."""
    app = plan.app
    backend = app.backend
    if backend is None:
        raise ConfigurationError("a chord needs a result backend: set result_backend")
    body = signature(info["body"], app)
    body_id = _result_ids(body)[-1]
    if failure is not None:
        _fail_chord(plan, info, body_id, *failure)
    if backend.chord_done(info["group"], member_id) < info["size"]:
        return
    member_ids = backend.get_group(info["group"]) or []
    metas = backend.get_many(member_ids)
    for mid, meta in zip(member_ids, metas, strict=True):
        if meta is None or meta.state != states.SUCCESS:
            error = _error_of(meta) if meta is not None else {"type": "PENDING", "message": ""}
            _fail_chord(plan, info, body_id, mid, error)
            return
    results = [meta.result for meta in metas if meta is not None]
    plan.add(body, (results,), list(info.get("body_chain") or []), info.get("body_chord"))


def _fail_chord(
    plan: _Plan,
    info: dict[str, Any],
    body_id: str,
    failed_id: str,
    error: dict[str, str],
) -> None:
    """The chord's body will not run: its result names the failed member (once)."""
    app = plan.app
    backend = app.backend
    assert backend is not None
    current = backend.get(body_id)
    if current is not None and current.ready:
        return
    chord_error = {
        "type": "ChordError",
        "message": f"chord member {failed_id} failed: {error['type']}: {error['message']}",
    }
    body = signature(info["body"], app)
    backend.store(
        [TaskMeta(body_id, states.FAILURE, body.task, chord_error, date_done=time.time())]
    )
    for errback in body["options"].get("link_error") or []:
        plan.add(signature(errback, app), (body_id,), [], None)
    _fail(plan, body_id, chord_error, list(info.get("body_chain") or []), info.get("body_chord"))


# Helpers --------------------------------------------------------------------------------


def _members(tasks: Sequence[Any]) -> list[Any]:
    """group(a, b) and group([a, b]) alike."""
    if len(tasks) == 1 and not isinstance(tasks[0], dict):
        return list(tasks[0])
    return list(tasks)


def _unix_time(value: Any) -> float | None:
    """A time option: unix seconds, a datetime, or its ISO text (from JSON); naive is UTC."""
    if value is None or isinstance(value, int | float):
        return value
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(when, dt.datetime):
        raise ConfigurationError(f"expected a time (datetime or unix seconds), not {value!r}")
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _app_of(sigs: Iterable[Any]) -> Celeriac | None:
    """The app of the first signature that has one (a workflow built from them uses it)."""
    return next((s._app for s in sigs if isinstance(s, Signature) and s._app), None)


def _callbacks(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(signature(v)) for v in items]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def run_map(app: Celeriac, task_name: str, items: list[Any], star: bool) -> list[Any]:
    """The body of `task.map(items)` / `task.starmap(items)`: one call per item, here."""
    task = app.get_task(task_name)
    return [task(*item) if star else task(item) for item in items]
