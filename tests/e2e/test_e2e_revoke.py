"""Revoke: queued, delayed and running tasks, terminate in every pool, across restarts."""

from __future__ import annotations

import signal
import time

import pytest

from celeriac import TaskFailed
from celeriac.brokers import QueueStats

pytestmark = pytest.mark.slow

TASKS = """
@shared_task
def mark(tag):
    append("ran", tag)
    return tag


@shared_task
def loop(tag, seconds=30.0):
    append("started", tag)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # short steps: a thread can be stopped between them
        time.sleep(0.02)
    append("finished", tag)
    return tag


@shared_task
async def async_loop(tag, seconds=30.0):
    append("started", tag)
    await asyncio.sleep(seconds)
    append("finished", tag)
    return tag
"""


def _assert_revoked(result) -> None:
    error = result.get(timeout=10, propagate=False)  # (stored just after the log line)
    assert isinstance(error, TaskFailed)
    assert error.exc_type == "TaskRevokedError"
    assert result.state == "REVOKED"


def test_queued_and_delayed_tasks_never_run(make_project, start_worker, wait_until):
    project = make_project(TASKS)
    send = project.app.send_task
    queued = send(project.name("mark"), args=["queued"])
    delayed = send(project.name("mark"), args=["delayed"], eta=_in(1.0))
    queued.revoke()
    project.app.control.revoke([delayed.id])
    if project.app.broker.revoke_deletes_queued:  # REVOKED at once; on RabbitMQ (as in
        for result in (queued, delayed):  # Celery) when a worker meets the message
            _assert_revoked(result)

    start_worker(project)
    # A task sent after them runs; by then the delayed one was due too.
    assert send(project.name("mark"), args=["after"], eta=_in(1.5)).get(timeout=20) == "after"
    assert project.lines("ran") == ["after"]
    for result in (queued, delayed):
        _assert_revoked(result)
    wait_until(  # (acked just after its result is stored)
        lambda: project.app.broker.stats().get("celeriac", QueueStats()) == QueueStats(),
        10,
        "an empty queue",
    )


# Stopping a task is the executors' work: every pool on two brokers. (Learning of the
# revoke is the broker's: the other tests here run on every broker.)
@pytest.mark.parametrize("broker_kind", ["sqlite", "redis"])
@pytest.mark.parametrize(
    ("pool", "task"),
    [("threads", "loop"), ("threads", "async_loop"), ("processes", "loop")],
)
def test_terminate_stops_a_running_task(make_project, start_worker, pool, task):
    project = make_project(TASKS)
    worker = start_worker(project, "--pool", pool, "-c", "2")
    result = project.app.send_task(project.name(task), args=["victim"])
    project.wait_for_lines("started")

    result.revoke(terminate=True)
    worker.wait_for_log(f"Task {project.name(task)}[{result.id}] terminated (revoked)")
    _assert_revoked(result)
    # The worker goes on with its full pool; the stopped task never finished.
    again = [project.app.send_task(project.name("mark"), args=[str(n)]) for n in range(4)]
    assert [r.get(timeout=30) for r in again] == ["0", "1", "2", "3"]
    assert project.lines("finished") == []
    assert worker.alive()


def test_without_terminate_a_running_task_finishes(make_project, start_worker):
    project = make_project(TASKS)
    start_worker(project)
    result = project.app.send_task(project.name("loop"), args=["kept", 1.0])
    project.wait_for_lines("started")
    result.revoke()
    assert result.get(timeout=20) == "kept"
    assert project.lines("finished") == ["kept"]


def test_a_revoked_task_is_not_run_again_after_its_worker_dies(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    first = start_worker(project, "--lease", "1")
    result = project.app.send_task(project.name("loop"), args=["orphan", 60.0])
    project.wait_for_lines("started")
    result.revoke()
    first.send(signal.SIGKILL)
    first.wait_exit()

    start_worker(project)
    # The dead worker's lease runs out; the message is deleted, not handed out again.
    wait_until(
        lambda: project.app.broker.stats().get("celeriac", QueueStats()) == QueueStats(),
        20,
        "the orphaned message to be deleted",
    )
    assert project.app.send_task(project.name("mark"), args=["after"]).get(timeout=20) == "after"
    assert project.lines("started") == ["orphan"]
    _assert_revoked(result)


def _in(seconds: float) -> float:
    return time.time() + seconds
