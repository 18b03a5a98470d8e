"""Fuzzing a running worker: arbitrary bytes and malformed envelopes are dead-lettered.

Hypothesis publishes batches of bad messages straight to the broker (the test controls
every byte; nothing goes through `send_task`) at one worker that runs for the whole test:
undecodable bytes, JSON that is not a valid envelope, envelopes naming an unknown task,
envelopes for the real task whose arguments do not bind, and (on a signed app) unsigned,
forged and tampered messages. Every one must end in the dead-letter queue with its original
bytes and a reason, none may run, and the worker must stay up: a good message published in
the same batch runs, and so does a normal call at the end. On memory, SQLite and Redis.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeriac import Celeriac, states
from celeriac.brokers import Broker, DeadLetter, Outgoing, QueueStats
from celeriac.envelope import Envelope, decode
from celeriac.exceptions import DecodeError
from celeriac.signing import PREFIX, Signer
from celeriac.worker.worker import Worker
from services import new_prefix, postgres_url, redis_url

QUEUE = "fuzz"
# Names Hypothesis cannot come up with by chance, so that a generated body never names the
# real task unless a strategy puts the name there on purpose.
RECORD = f"fuzz.record.{uuid.uuid4().hex}"
KEY = "fuzz-s3cret"
SETTLE = 15.0  # seconds for one batch to be dead-lettered (it takes milliseconds)
FUZZ_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
BROKERS = ["memory", "sqlite", "redis", "postgres"]


# The app under test --------------------------------------------------------------------------


def make_app(kind: str, tmp_path: Any, **settings: Any) -> Celeriac:
    if kind == "memory":
        return Celeriac("fuzz", broker="memory://", set_as_current=False, **settings)
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/fuzz.db"
        return Celeriac("fuzz", broker=url, set_as_current=False, **settings)
    return Celeriac(
        "fuzz",
        broker=redis_url() if kind == "redis" else postgres_url(),
        broker_key_prefix=new_prefix(),
        set_as_current=False,
        **settings,
    )


@dataclass
class Target:
    """A worker consuming QUEUE, with the one task it may run: `RECORD(x)`, which notes `x`."""

    app: Celeriac
    worker: Worker
    ran: list[Any]
    known: frozenset[str]  # every task name the worker can run

    @property
    def broker(self) -> Broker:
        return self.app.broker


@contextmanager
def fuzz_target(
    kind: str,
    tmp_path: Any,
    worker_for: Callable[..., Any],
    lease: float | None = None,
    **settings: Any,
) -> Iterator[Target]:
    app = make_app(kind, tmp_path, **settings)
    ran: list[Any] = []

    @app.task(name=RECORD, queue=QUEUE)
    def record(x: Any) -> Any:
        ran.append(x)
        return x

    assert list(inspect.signature(record.fn).parameters) == ["x"]  # what `binds` assumes
    try:
        with worker_for(app, queues=[QUEUE], lease=lease) as worker:
            yield Target(app, worker, ran, frozenset(app.tasks))
            # The worker is still up and still runs a normal call.
            assert app.send_task(RECORD, args=["after"], queue=QUEUE).get(timeout=10) == "after"
            assert ran[-1] == "after"
    finally:
        app.close()


# What the worker must do with a body -----------------------------------------------------------


def binds(args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Whether `RECORD(x)` accepts these arguments."""
    return (len(args) == 1 and not kwargs) or (not args and set(kwargs) == {"x"})


def verdict(target: Target, body: bytes) -> tuple[str, Envelope | None]:
    """How the worker must refuse `body` (the start of its dead-letter reason), with the
    envelope when it decodes; "runs" for a body the worker would rightly run."""
    try:
        envelope = decode(target.app.signer.verify(body))
    except (DecodeError, RecursionError):
        # Too deeply nested to decode is undecodable like any other bad JSON (see
        # test_too_deeply_nested_json_is_dead_lettered_as_undecodable).
        return "DecodeError", None
    if envelope.task not in target.known:
        return "NotRegistered", envelope
    if envelope.task != RECORD or binds(envelope.args, envelope.kwargs):
        return "runs", envelope
    return "TypeError", envelope


# Strategies -------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=10**400)  # huge ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=20)
floats = st.floats(allow_nan=False, allow_infinity=False)
lists = st.lists(scalars, max_size=3)
dicts = st.dictionaries(texts, scalars, max_size=3)
# For each field of the envelope, JSON values of a type it does not accept.
WRONG_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "v": texts | floats | st.booleans() | st.none() | lists | dicts,
    "id": st.integers() | floats | st.booleans() | st.none() | lists | dicts,
    "task": st.integers() | floats | st.booleans() | st.none() | lists | dicts,
    "args": texts | st.integers() | floats | st.booleans() | st.none() | dicts,
    "kwargs": texts | st.integers() | floats | st.booleans() | st.none() | lists,
    "queue": st.integers() | floats | st.booleans() | st.none() | lists | dicts,
    "priority": texts | floats | st.booleans() | st.none() | lists | dicts,
    "eta": texts | st.booleans() | lists | dicts,
    "expires": texts | st.booleans() | lists | dicts,
    "retries": texts | floats | st.booleans() | st.none() | lists | dicts,
    "headers": texts | st.integers() | floats | st.booleans() | st.none() | lists,
    "sent_at": texts | st.booleans() | st.none() | lists | dicts,
}


def to_json(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def good_fields(draw: st.DrawFn, task: str = RECORD) -> dict[str, Any]:
    """The fields of a valid envelope for `task`: with the real task, one that would run."""
    fields: dict[str, Any] = {"v": 1, "id": f"env-{uuid.uuid4()}", "task": task, "args": ["no"]}
    optional = {
        "queue": st.just(QUEUE),
        "priority": st.integers(0, 9),
        "retries": st.integers(0, 3),
        "headers": dicts,
        "sent_at": floats,
        "eta": st.none() | st.floats(0, 2e9),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=3)):
        fields[name] = draw(optional[name])
    return fields


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    fields = draw(good_fields())
    name = draw(st.sampled_from(sorted(WRONG_TYPES)))
    fields[name] = draw(WRONG_TYPES[name])
    return to_json(fields)


@st.composite
def unknown_versions(draw: st.DrawFn) -> bytes:
    fields = draw(good_fields())
    fields["v"] = draw(st.integers().filter(lambda v: v != 1) | st.integers(min_value=2**64))
    return to_json(fields)


@st.composite
def missing_fields(draw: st.DrawFn) -> bytes:
    fields = draw(good_fields())
    for name in draw(st.lists(st.sampled_from(["id", "task"]), min_size=1, unique=True)):
        del fields[name]
    return to_json(fields)


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """A valid envelope one level too deep: in a list, an object, a string, a field."""
    fields = draw(good_fields())
    wrapped = [[fields], {draw(texts): fields}, json.dumps(fields), {**fields, "task": fields}]
    return to_json(draw(st.sampled_from(wrapped)))


@st.composite
def cut_or_extended(draw: st.DrawFn) -> bytes:
    body = to_json(draw(good_fields()))
    if draw(st.booleans()):
        return body[: draw(st.integers(0, len(body) - 1))]
    return body + draw(st.sampled_from([b"x", b"{}", b"\x00", b"1", b"]", b"\xff"]))


# Valid JSON (or a valid envelope cut short or extended) that is not a valid envelope; each
# starts from an envelope for the real task with arguments that bind.
malformed_envelopes = st.one_of(
    wrong_types(),
    unknown_versions(),
    missing_fields(),
    nested(),
    json_values.filter(lambda v: not isinstance(v, dict)).map(to_json),  # not an object
    cut_or_extended(),
)


def unknown_task_names(known: frozenset[str]) -> st.SearchStrategy[str]:
    near = [RECORD + "x", RECORD[:-1], RECORD.upper(), " " + RECORD, RECORD + "\x00", ""]
    return (st.text(max_size=30) | st.sampled_from(near)).filter(lambda name: name not in known)


@st.composite
def unknown_tasks(draw: st.DrawFn, known: frozenset[str]) -> bytes:
    """A well-formed envelope naming a task the worker does not have."""
    fields = draw(good_fields(task=draw(unknown_task_names(known))))
    fields["args"] = draw(st.lists(json_values, max_size=3))
    fields["kwargs"] = draw(st.dictionaries(texts, json_values, max_size=3))
    return to_json(fields)


@st.composite
def unbound_arguments(draw: st.DrawFn) -> bytes:
    """A well-formed envelope for the real task with arguments `record(x)` does not take."""
    names = st.sampled_from(["x", "y", "self", "args", "kwargs", ""]) | texts
    args_kwargs = st.tuples(
        st.lists(json_values, max_size=4), st.dictionaries(names, json_values, max_size=3)
    ).filter(lambda pair: not binds(*pair))
    args, kwargs = draw(args_kwargs)
    fields = draw(good_fields())
    fields["args"], fields["kwargs"] = args, kwargs
    return to_json(fields)


def bad_bodies(known: frozenset[str]) -> st.SearchStrategy[bytes]:
    return (
        st.binary(max_size=300) | malformed_envelopes | unknown_tasks(known) | unbound_arguments()
    )


@st.composite
def forged(draw: st.DrawFn, signer: Signer) -> bytes:
    """A message for the real task with arguments that bind, which would run if the
    signature check let it through: unsigned, signed with another key, or signed and then
    changed (a byte flipped anywhere, cut short, extended, its body swapped)."""
    runnable = to_json(draw(good_fields()))
    signed = signer.sign(runnable)
    how = draw(
        st.sampled_from(["unsigned", "other key", "flipped byte", "cut", "extended", "swapped"])
    )
    if how == "unsigned":
        body = runnable
    elif how == "other key":
        other = draw(st.text(min_size=1, max_size=10).filter(lambda k: k != KEY))
        body = Signer(other).sign(runnable)
    elif how == "flipped byte":
        at = draw(st.integers(0, len(signed) - 1))
        flipped = signed[at] ^ draw(st.integers(1, 255))
        body = signed[:at] + bytes([flipped]) + signed[at + 1 :]
    elif how == "cut":
        body = signed[: draw(st.integers(0, len(signed) - 1))]
    elif how == "extended":
        body = signed + draw(st.binary(min_size=1, max_size=8))
    else:
        body = signed.partition(b"\n")[0] + b"\n" + to_json(draw(good_fields()))
    return body


def bad_signed_bodies(signer: Signer, known: frozenset[str]) -> st.SearchStrategy[bytes]:
    """For an app with a security key: bytes, bytes behind the signature prefix, forged
    messages, and correctly signed bad ones."""
    return (
        st.binary(max_size=300)
        | st.binary(max_size=120).map(lambda tail: PREFIX + tail)
        | forged(signer)
        | bad_bodies(known).map(signer.sign)
    )


# Publishing a batch and checking its fate ------------------------------------------------------


def check_batch(target: Target, bodies: list[bytes], wait_until: Callable[..., Any]) -> None:
    """Publish `bodies` with a good message among them; every bad one must be dead-lettered
    with its bytes and the right reason, only the good one may run, and nothing may be left
    in the queue. Then empty the dead-letter store for the next example."""
    app, broker = target.app, target.broker
    expected = {}
    for body in bodies:
        kind, envelope = verdict(target, body)
        assert kind != "runs", f"a strategy made a message that would run: {body!r}"
        expected[f"bad-{uuid.uuid4()}"] = (body, kind, envelope)
    marker = f"good-{uuid.uuid4()}"
    good = app.envelope(RECORD, [marker], queue=QUEUE)
    outgoing = [Outgoing(i, QUEUE, body) for i, (body, _, _) in expected.items()]
    at = len(outgoing) // 2
    outgoing[at:at] = [Outgoing(good.id, QUEUE, app.encode(good))]
    ran_before = list(target.ran)
    started = time.time()
    broker.publish(outgoing)

    def settled() -> dict[str, DeadLetter] | None:
        letters = {d.id: d for d in broker.dead_letters(queue=QUEUE, limit=10_000)}
        if not expected.keys() <= letters.keys() or marker not in target.ran:
            return None
        # Dead-lettered, not also left queued or leased; the good one acked.
        if broker.stats().get(QUEUE) != QueueStats(dead=len(expected)):
            return None
        return letters

    try:
        letters = wait_until(settled, SETTLE, "the batch to be dead-lettered")
    except AssertionError:
        letters = {d.id: d for d in broker.dead_letters(queue=QUEUE, limit=10_000)}
        missing = {i: expected[i][:2] for i in expected.keys() - letters.keys()}
        raise AssertionError(
            f"not dead-lettered within {SETTLE}s: {missing!r}; stats {broker.stats()!r}; "
            f"ran {target.ran[len(ran_before) :]!r}"
        ) from None

    assert target.ran == [*ran_before, marker], "only the good message ran"
    assert len(letters) == len(expected), "nothing else was dead-lettered"
    for message_id, (body, kind, envelope) in expected.items():
        letter = letters[message_id]
        assert letter.body == body, "the original bytes are kept"
        assert letter.queue == QUEUE
        assert started - 1 <= letter.dead_at <= time.time() + 1
        assert letter.reason.startswith(f"{kind}: "), (letter.reason, body[:200])
        assert len(letter.reason) > len(kind) + 2, letter.reason
        if envelope is not None:
            if kind == "NotRegistered":
                assert repr(envelope.task) in letter.reason
            else:
                assert f"arguments do not match {RECORD}(x" in letter.reason
            # A caller waiting on it gets the failure instead of waiting forever.
            assert app.AsyncResult(envelope.id).state == states.FAILURE
    assert broker.purge_dead(QUEUE) == len(expected)


# Tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BROKERS)
def test_bad_messages_are_dead_lettered_and_never_run(
    kind: str, tmp_path: Any, worker_for: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    with fuzz_target(kind, tmp_path, worker_for) as target:

        @FUZZ_SETTINGS
        @given(bodies=st.lists(bad_bodies(target.known), min_size=1, max_size=8))
        def fuzz(bodies: list[bytes]) -> None:
            check_batch(target, bodies, wait_until)

        fuzz()
        assert target.worker.processed >= FUZZ_SETTINGS.max_examples


@pytest.mark.parametrize("kind", BROKERS)
def test_unsigned_forged_and_tampered_messages_are_dead_lettered(
    kind: str, tmp_path: Any, worker_for: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    with fuzz_target(kind, tmp_path, worker_for, security_key=KEY) as target:
        signer = target.app.signer
        assert signer.enabled

        @FUZZ_SETTINGS
        @given(bodies=st.lists(bad_signed_bodies(signer, target.known), min_size=1, max_size=8))
        def fuzz(bodies: list[bytes]) -> None:
            check_batch(target, bodies, wait_until)

        fuzz()


DEEP = 100_000  # levels of JSON nesting: far past what msgspec decodes


@pytest.mark.parametrize("kind", BROKERS)
def test_too_deeply_nested_json_is_dead_lettered_as_undecodable(
    kind: str, tmp_path: Any, worker_for: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    # A short lease and dead-lettering at the first expiry make the bug show in a second:
    # its dead letters then carry a lease-expired reason, not a DecodeError.
    with fuzz_target(kind, tmp_path, worker_for, lease=1.0, broker_max_lease_expiries=1) as target:
        deep = b"[" * DEEP + b"]" * DEEP
        head = b'{"v":1,"id":"env-deep-%d","task":"%s",'
        bodies = [
            # For the real task, with arguments that bind: it must not run either.
            head % (1, RECORD.encode()) + b'"args":[' + deep + b"]}",
            head % (2, b"fuzz.no-such-task") + b'"kwargs":{"k":' + deep + b"}}",
            head % (3, RECORD.encode()) + b'"args":[1],"headers":{"h":' + deep + b"}}",
        ]
        check_batch(target, bodies, wait_until)
