"""The result-backend contract (`celeriac.backends.base`), checked on every backend kind."""

from __future__ import annotations

import builtins
import datetime
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from celeriac import states
from celeriac.backends import ResultBackend, TaskMeta
from celeriac.exceptions import EncodeError, TimeoutError

JSON_RESULTS = [
    None,
    0,
    -17,
    2**53 + 1,
    3.25,
    -0.0,
    True,
    False,
    "",
    'ünïcödé ✓ \n\t"quoted"',
    [],
    [1, "two", None, [3.5, {"four": 4}]],
    {},
    {"nested": {"list": [1, 2, {"deep": True}]}, "empty": "", "null": None},
    list(range(1000)),
]


def success(task_id: str, result: Any = None, **fields: Any) -> TaskMeta:
    return TaskMeta(task_id, states.SUCCESS, task="tasks.add", result=result, **fields)


# -- store and get ---------------------------------------------------------------------------


@pytest.mark.parametrize("result", JSON_RESULTS, ids=lambda r: type(r).__name__)
def test_result_round_trips(backend: ResultBackend, task_id: str, result: Any) -> None:
    meta = success(task_id, result, date_done=1_700_000_000.125)
    backend.store([meta])
    got = backend.get(task_id)
    assert got == meta
    assert got is not None and type(got.result) is type(result)


def test_failure_round_trips(backend: ResultBackend, task_id: str) -> None:
    meta = TaskMeta(
        task_id,
        states.FAILURE,
        task="tasks.divide",
        result={"type": "ZeroDivisionError", "message": "division by zero"},
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nZeroDivisionError',
        date_done=1_700_000_000.5,
    )
    backend.store([meta])
    assert backend.get(task_id) == meta


def test_progress_round_trips(backend: ResultBackend, task_id: str) -> None:
    meta = TaskMeta(task_id, states.STARTED, task="tasks.long", info={"done": 3, "of": 10})
    backend.store([meta])
    got = backend.get(task_id)
    assert got == meta
    assert got is not None and not got.ready


def test_results_are_stored_as_json(backend: ResultBackend, task_id: str) -> None:
    """What comes back is what JSON carries, whichever backend stored it."""
    day = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    result = {"tuple": (1, 2), "uuid": uuid.UUID(int=1), "when": day, "cost": Decimal("1.10")}
    backend.store([success(task_id, result, info=("a", 1))])
    got = backend.get(task_id)
    assert got is not None
    assert got.result == {
        "tuple": [1, 2],
        "uuid": "00000000-0000-0000-0000-000000000001",
        "when": "2024-05-06T07:08:09Z",
        "cost": "1.10",
    }
    assert got.info == ["a", 1]


def test_a_stored_result_is_a_copy(backend: ResultBackend, task_id: str) -> None:
    result = {"items": [1, 2]}
    backend.store([success(task_id, result)])
    result["items"].append(3)
    got = backend.get(task_id)
    assert got is not None and got.result == {"items": [1, 2]}


def test_a_result_json_cannot_carry_is_refused(backend: ResultBackend, task_id: str) -> None:
    with pytest.raises(EncodeError):
        backend.store([success(task_id, object())])
    assert backend.get(task_id) is None


def test_get_of_an_unknown_task_is_none(backend: ResultBackend, task_id: str) -> None:
    assert backend.get(task_id) is None


def test_store_replaces(backend: ResultBackend, task_id: str) -> None:
    backend.store([TaskMeta(task_id, states.STARTED, task="t", info={"progress": 10})])
    backend.store([TaskMeta(task_id, states.RETRY, task="t", result={"type": "E"})])
    final = success(task_id, 42, date_done=1.0)
    backend.store([final])
    assert backend.get(task_id) == final


def test_store_replaces_every_field(backend: ResultBackend, task_id: str) -> None:
    backend.store([TaskMeta(task_id, states.FAILURE, "t", {"type": "E"}, "tb", {"x": 1}, 5.0)])
    backend.store([TaskMeta(task_id, states.STARTED)])
    assert backend.get(task_id) == TaskMeta(task_id, states.STARTED)


def test_forget(backend: ResultBackend, task_id: str, new_task_id: Callable[[], str]) -> None:
    other = new_task_id()
    backend.store([success(task_id, 1), success(other, 2)])
    backend.forget(task_id)
    assert backend.get(task_id) is None
    assert backend.get(other) == success(other, 2)
    backend.forget(task_id)  # forgetting twice, or something unknown, is fine
    backend.forget(new_task_id())


def test_batch_store_of_many(backend: ResultBackend) -> None:
    metas = [
        success(str(uuid.uuid4()), {"n": i}) if i % 3 else TaskMeta(str(uuid.uuid4()), "STARTED")
        for i in range(1000)
    ]
    backend.store(metas)
    assert [backend.get(m.task_id) for m in metas] == metas


def test_batch_with_the_same_id_twice_keeps_the_last(backend: ResultBackend, task_id: str) -> None:
    backend.store([TaskMeta(task_id, states.STARTED), success(task_id, "last")])
    assert backend.get(task_id) == success(task_id, "last")


def test_an_empty_batch_is_fine(backend: ResultBackend) -> None:
    backend.store([])


def test_a_second_backend_object_sees_the_same_results(
    backend_kind: Any,
    backend: ResultBackend,
    make_backend: Callable[..., ResultBackend],
    task_id: str,
) -> None:
    if not backend_kind.shared:
        pytest.skip(f"{backend_kind.name} backends do not share state between objects")
    backend.store([success(task_id, "shared")])
    other = make_backend()
    assert other.get(task_id) == success(task_id, "shared")
    other.forget(task_id)
    assert backend.get(task_id) is None


# -- wait ------------------------------------------------------------------------------------


def store_soon(backend: ResultBackend, meta: TaskMeta, after: float = 0.05) -> threading.Thread:
    """Store `meta` from another thread a moment from now, so that `wait` has to wait."""

    def run() -> None:
        time.sleep(after)
        backend.store([meta])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_returns_when_another_thread_stores_a_ready_state(
    backend: ResultBackend, task_id: str
) -> None:
    meta = success(task_id, {"answer": 42})
    thread = store_soon(backend, meta)
    assert backend.wait(task_id, timeout=10) == meta
    thread.join()


def test_wait_skips_states_that_are_not_ready(backend: ResultBackend, task_id: str) -> None:
    backend.store([TaskMeta(task_id, states.STARTED, info={"progress": 50})])
    final = TaskMeta(task_id, states.FAILURE, result={"type": "ValueError", "message": "no"})
    thread = store_soon(backend, final)
    assert backend.wait(task_id, timeout=10) == final
    thread.join()


def test_wait_without_a_timeout(backend: ResultBackend, task_id: str) -> None:
    meta = TaskMeta(task_id, states.REVOKED)
    thread = store_soon(backend, meta)
    assert backend.wait(task_id, timeout=None) == meta
    thread.join()


@pytest.mark.parametrize("state", sorted(states.READY_STATES))
def test_wait_returns_at_once_for_every_ready_state(
    backend: ResultBackend, task_id: str, state: str
) -> None:
    backend.store([TaskMeta(task_id, state)])
    started = time.monotonic()
    assert backend.wait(task_id, timeout=10) == TaskMeta(task_id, state)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("known", [False, True], ids=["unknown", "started"])
def test_wait_times_out(backend: ResultBackend, task_id: str, known: bool) -> None:
    if known:
        backend.store([TaskMeta(task_id, states.STARTED, info={"progress": 50})])
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        backend.wait(task_id, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert isinstance(caught.value, builtins.TimeoutError)
    assert task_id in str(caught.value)


def test_wait_with_zero_timeout(backend: ResultBackend, task_id: str) -> None:
    with pytest.raises(TimeoutError):
        backend.wait(task_id, timeout=0)
    backend.store([success(task_id, 1)])
    assert backend.wait(task_id, timeout=0) == success(task_id, 1)


# -- expiry ----------------------------------------------------------------------------------


EXPIRES = 0.05


def test_ready_results_expire(
    make_backend: Callable[..., ResultBackend],
    backend_kind: Any,
    new_task_id: Callable[[], str],
    wait_until: Callable[..., Any],
) -> None:
    backend = make_backend(expires=EXPIRES)
    done = [new_task_id() for _ in range(3)]
    stored_at = time.time()
    backend.store([success(done[0], 1), TaskMeta(done[1], states.FAILURE), success(done[2])])
    got = backend.get(done[0])
    if time.time() - stored_at < EXPIRES:  # only if this machine was quick enough to look
        assert got == success(done[0], 1)

    wait_until(lambda: all(backend.get(t) is None for t in done))
    with pytest.raises(TimeoutError):
        backend.wait(done[0], timeout=0.01)
    assert backend.cleanup() == (0 if backend_kind.expires_by_itself else 3)
    assert backend.cleanup() == 0


def test_states_that_are_not_ready_do_not_expire(
    make_backend: Callable[..., ResultBackend],
    backend_kind: Any,
    new_task_id: Callable[[], str],
    wait_until: Callable[..., Any],
) -> None:
    backend = make_backend(expires=EXPIRES)
    running, retrying, done = new_task_id(), new_task_id(), new_task_id()
    progress = TaskMeta(running, states.STARTED, task="t", info={"progress": 50})
    retry = TaskMeta(retrying, states.RETRY, task="t", result={"type": "E", "message": "m"})
    backend.store([progress, retry, success(done)])
    wait_until(lambda: backend.get(done) is None)  # time enough has passed to expire
    assert backend.cleanup() == (0 if backend_kind.expires_by_itself else 1)
    assert backend.get(running) == progress
    assert backend.get(retrying) == retry


def test_storing_again_restarts_the_expiry(
    make_backend: Callable[..., ResultBackend], task_id: str, wait_until: Callable[..., Any]
) -> None:
    """A state that becomes ready starts its expiry when stored; one that stops being
    ready (a task run again) no longer expires."""
    backend = make_backend(expires=EXPIRES)
    backend.store([success(task_id, 1)])
    wait_until(lambda: backend.get(task_id) is None)
    backend.store([TaskMeta(task_id, states.STARTED)])
    assert backend.get(task_id) == TaskMeta(task_id, states.STARTED)
    assert backend.cleanup() == 0


def test_results_last_the_default_expiry(backend: ResultBackend, task_id: str) -> None:
    assert backend.expires == 86400.0
    backend.store([success(task_id, 1)])
    assert backend.cleanup() == 0
    assert backend.get(task_id) == success(task_id, 1)


def test_task_meta_ready() -> None:
    assert {s for s in states.ALL_STATES if TaskMeta("x", s).ready} == states.READY_STATES


# -- groups and chords -----------------------------------------------------------------------


def test_a_group_keeps_its_members_in_order(backend: ResultBackend, task_id: str) -> None:
    members = [f"{task_id}-{n}" for n in (3, 1, 2)]
    assert backend.get_group(task_id) is None
    backend.save_group(task_id, members)
    assert backend.get_group(task_id) == members


def test_chord_done_counts_each_member_once(backend: ResultBackend, task_id: str) -> None:
    assert backend.chord_done(task_id, "a") == 1
    assert backend.chord_done(task_id, "b") == 2
    assert backend.chord_done(task_id, "a") == 2  # a redelivered member
    assert backend.chord_done(f"{task_id}-other", "a") == 1


def test_get_many_keeps_the_order_and_the_gaps(backend: ResultBackend, task_id: str) -> None:
    backend.store([TaskMeta(f"{task_id}-1", states.SUCCESS, result=1)])
    backend.store([TaskMeta(f"{task_id}-2", states.FAILURE, result={"type": "E"})])
    found = backend.get_many([f"{task_id}-2", f"{task_id}-missing", f"{task_id}-1"])
    assert [m.state if m else None for m in found] == [states.FAILURE, None, states.SUCCESS]
