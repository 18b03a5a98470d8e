"""Workflows with a worker in this process, on the memory and SQLite brokers (the e2e tests
run them on SQLite and Redis with worker processes, and kill workers mid-way)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import (
    Celeriac,
    ConfigurationError,
    GroupResult,
    Signature,
    TaskFailed,
    chain,
    chord,
    group,
    signature,
    states,
)


@pytest.fixture(params=["memory", "sqlite"])
def flow_app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Celeriac]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/flow.db"
    app = Celeriac("flows", broker=url)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="mul")
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task(name="total")
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="boom")
    def boom(*args: Any) -> None:
        raise KeyError("boom")

    @app.task(name="seen")
    def seen(value: Any) -> Any:
        return ["seen", value]

    yield app
    app.close()


def sig(app: Celeriac, name: str, *args: Any, **kwargs: Any) -> Signature:
    return app.tasks[name].s(*args, **kwargs)


def test_a_signature_round_trips_through_json(flow_app: Celeriac) -> None:
    flow = chain(
        sig(flow_app, "add", 1, 2).set(queue="celeriac", countdown=0),
        group(sig(flow_app, "mul", 2), sig(flow_app, "mul", 3)),
        sig(flow_app, "total"),
    )
    again = signature(json.loads(json.dumps(flow)), app=flow_app)
    assert isinstance(again, chain)
    assert again == flow
    with pytest.raises(ConfigurationError, match="unknown signature option"):
        sig(flow_app, "add", 1, 2).set(qeue="x")


def test_chain_passes_each_result_on(flow_app: Celeriac, worker_for: Any) -> None:
    add = flow_app.tasks["add"]
    with worker_for(flow_app):
        assert (add.s(1, 2) | add.s(10) | flow_app.tasks["mul"].s(2)).delay().get(10) == 26
        # An immutable step ignores the previous result.
        assert chain(add.s(1, 2), add.si(5, 5)).apply_async().get(10) == 10


def test_group_and_chord(flow_app: Celeriac, worker_for: Any) -> None:
    add = flow_app.tasks["add"]
    with worker_for(flow_app):
        result = group(add.s(n, n) for n in range(5)).apply_async()
        assert isinstance(result, GroupResult)
        assert result.get(timeout=10) == [0, 2, 4, 6, 8]
        assert result.ready() and result.successful() and result.completed_count() == 5
        restored = GroupResult.restore(result.id, flow_app)
        assert restored is not None and [r.id for r in restored] == [r.id for r in result]

        body = chord([add.s(n, 1) for n in range(4)])(flow_app.tasks["total"].s())
        assert body.get(timeout=10) == 10
        assert body.parent is not None and body.parent.get(timeout=1) == [1, 2, 3, 4]
        # The chord's id (its body's) restores the whole chord: members, then the body.
        whole = GroupResult.restore(body.id, flow_app)
        assert whole is not None
        assert [r.id for r in whole] == [*(r.id for r in body.parent), body.id]
        assert whole.progress == {"current": 5.0, "total": 5, "message": "5/5 done"}
        assert group(add.s(1, 1), add.s(2, 2))().get(timeout=10) == [2, 4]
        assert chain(add.s(1, 1), add.s(1))().get(timeout=10) == 3
        assert chain(add.s(1), add.s(1)).apply_async((5,)).get(timeout=10) == 7
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)
        assert add.s(1, 1).set(eta=later.isoformat()).delay().get(timeout=10) == 2


def test_nesting_a_chain_inside_a_group_inside_a_chord(flow_app: Celeriac, worker_for: Any) -> None:
    add, mul, total = (flow_app.tasks[n] for n in ("add", "mul", "total"))
    # The chord gets the first step's result; its members are immutable (si), so they
    # ignore it: add(1,1)=2 -> mul(2,10)=20 and add(3,3)=6; total=26; then *2.
    inner = group(chain(add.si(1, 1), mul.s(10)), add.si(3, 3))
    flow = chain(add.s(0, 1), chord(inner, total.s()), mul.s(2))
    with worker_for(flow_app):
        assert flow.delay().get(timeout=10) == 52


def test_a_group_then_a_task_in_a_chain_is_a_chord(flow_app: Celeriac, worker_for: Any) -> None:
    add, total = flow_app.tasks["add"], flow_app.tasks["total"]
    with worker_for(flow_app):
        flow = add.s(1, 1) | group(add.s(10), add.s(20)) | total.s()
        assert flow.delay().get(timeout=10) == 34  # (2+10) + (2+20)


def test_map_starmap_and_chunks(flow_app: Celeriac, worker_for: Any) -> None:
    add, seen = flow_app.tasks["add"], flow_app.tasks["seen"]
    with worker_for(flow_app):
        assert seen.map([1, 2]).delay().get(timeout=10) == [["seen", 1], ["seen", 2]]
        assert add.starmap([(1, 2), (3, 4)]).delay().get(timeout=10) == [3, 7]
        chunks = add.chunks([(n, n) for n in range(5)], 2).apply_async()
        assert chunks.get(timeout=10) == [[0, 2], [4, 6], [8]]


def test_link_and_link_error(flow_app: Celeriac, worker_for: Any, wait_until: Any) -> None:
    add, boom, seen = (flow_app.tasks[n] for n in ("add", "boom", "seen"))
    with worker_for(flow_app):
        linked = seen.s()
        linked.freeze()
        add.s(2, 3).set(link=linked).delay().get(timeout=10)
        assert flow_app.AsyncResult(linked.id or "").get(timeout=10) == ["seen", 5]

        errback = seen.s()
        errback.freeze()
        failed = boom.s().set(link_error=[errback]).delay()
        with pytest.raises(TaskFailed):
            failed.get(timeout=10)
        assert flow_app.AsyncResult(errback.id or "").get(timeout=10) == ["seen", failed.id]


def test_a_failed_member_fails_the_chord_and_names_it(flow_app: Celeriac, worker_for: Any) -> None:
    add, boom, total = (flow_app.tasks[n] for n in ("add", "boom", "total"))
    failing = boom.s()
    failing.freeze()
    with worker_for(flow_app):
        result = chord([add.s(1, 1), failing, add.s(2, 2)], total.s()).apply_async()
        error = result.get(timeout=10, propagate=False)
        assert isinstance(error, TaskFailed)
        assert error.exc_type == "ChordError"
        assert f"chord member {failing.id} failed: KeyError" in error.exc_message
        # A chain stops at a failed step; the later steps say why.
        later = chain(boom.s(), add.s(1)).delay()
        assert later.get(timeout=10, propagate=False).exc_type == "KeyError"
        assert later.state == states.FAILURE


def test_group_progress_is_the_sum_of_its_members(
    flow_app: Celeriac, worker_for: Any, wait_until: Any
) -> None:
    release = threading.Event()

    @flow_app.task(bind=True)
    def quarter_then_wait(self: Any) -> None:
        self.update_progress(1, 4)
        release.wait(10)

    add = flow_app.tasks["add"]
    with worker_for(flow_app):
        result = group(quarter_then_wait.s(), add.s(1, 1), quarter_then_wait.s()).apply_async()
        progress = wait_until(
            lambda: result.progress if result.progress["current"] == 1.5 else None,
            10,
            "one member done and two a quarter through",
        )
        assert progress == {"current": 1.5, "total": 3, "message": "1/3 done"}
        release.set()
        result.get(timeout=10)
        assert result.progress == {"current": 3.0, "total": 3, "message": "3/3 done"}
