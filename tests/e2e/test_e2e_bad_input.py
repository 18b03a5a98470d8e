"""Bad input never stops a worker: it is dead-lettered with a reason, and the worker goes on."""

from __future__ import annotations

import uuid

import pytest

from celeriac import TaskFailed
from celeriac.brokers import Outgoing, QueueStats

pytestmark = pytest.mark.slow

TASKS = """
@shared_task
def add(a, b):
    return a + b


@shared_task(bind=True)
def tagged(self, value, *, tag="x"):
    return f"{tag}:{value}"
"""


def _wait_for_dead_letters(project, wait_until, ids):
    """The dead letters of `ids`, by id, once all of them are in the store."""

    def found():
        letters = {d.id: d for d in project.app.broker.dead_letters(limit=1000)}
        return letters if set(ids) <= set(letters) else None

    return wait_until(found, 20, f"dead letters for {sorted(ids)}")


def test_undecodable_and_unknown_messages_are_dead_lettered(make_project, start_worker, wait_until):
    project = make_project(TASKS)
    worker = start_worker(project)
    app = project.app
    unknown_name = project.name("no_such_task")

    unknown = app.send_task(unknown_name, args=[1])
    bodies = {
        "garbage": b"garbage",
        "missing-fields": b'{"v": 1}',
        "future-version": b'{"v": 99, "id": "x", "task": "t"}',
    }
    raw = {kind: f"{kind}-{uuid.uuid4()}" for kind in bodies}
    app.broker.publish([Outgoing(raw[kind], "celeriac", body) for kind, body in bodies.items()])

    letters = _wait_for_dead_letters(project, wait_until, [unknown.id, *raw.values()])
    assert "NotRegistered" in letters[unknown.id].reason
    assert unknown_name in letters[unknown.id].reason
    for kind, body in bodies.items():
        letter = letters[raw[kind]]
        assert letter.reason.startswith("DecodeError"), letter.reason
        assert letter.body == body, "the original bytes are kept"
        assert letter.queue == "celeriac"
    assert "unsupported message version 99" in letters[raw["future-version"]].reason

    # The worker goes on, and nothing of the bad messages is left in the queue.
    assert app.send_task(project.name("add"), args=[2, 3]).get(timeout=20) == 5
    assert worker.alive()
    # (The result is stored before the ack, so the ack may land a moment after get().)
    wait_until(
        lambda: app.broker.stats()["celeriac"] == QueueStats(dead=4), 10, "only 4 dead letters"
    )
    for message_id in [unknown.id, *raw.values()]:
        assert f"message {message_id} dead-lettered" in worker.log()


def test_bad_arguments_are_dead_lettered_with_the_task_name(make_project, start_worker, wait_until):
    project = make_project(TASKS)
    worker = start_worker(project)
    app = project.app
    add, tagged = project.name("add"), project.name("tagged")

    too_many = app.send_task(add, args=[1, 2, 3])
    too_few = app.send_task(add, args=[1])
    bad_kwarg = app.send_task(add, args=[1, 2], kwargs={"c": 3})
    positional_only = app.send_task(tagged, args=[1, "y"])
    ids = [too_many.id, too_few.id, bad_kwarg.id, positional_only.id]

    letters = _wait_for_dead_letters(project, wait_until, ids)
    for result in (too_many, too_few, bad_kwarg):
        reason = letters[result.id].reason
        assert reason.startswith("TypeError"), reason
        assert f"{add}(a, b)" in reason, reason
    assert "too many positional arguments" in letters[too_many.id].reason
    assert "missing a required argument: 'b'" in letters[too_few.id].reason
    assert "unexpected keyword argument 'c'" in letters[bad_kwarg.id].reason
    # A bound task's `self` is not counted against the caller's arguments.
    assert tagged in letters[positional_only.id].reason

    # The worker goes on; a correct call of the same (bound) tasks succeeds.
    assert app.send_task(add, args=[2, 3]).get(timeout=20) == 5
    assert app.send_task(tagged, args=[7], kwargs={"tag": "t"}).get(timeout=20) == "t:7"
    assert worker.alive()
    # Nothing ran; a caller waiting on a dead-lettered task gets the reason, not a hang.
    assert too_many.state == "FAILURE"
    with pytest.raises(TaskFailed, match="dead-lettered: arguments do not match"):
        too_many.get(timeout=5)
