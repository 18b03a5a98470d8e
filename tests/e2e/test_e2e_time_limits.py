"""Time limits in every pool, and a poison task in the process pool."""

from __future__ import annotations

import re

import pytest

from celeriac import TaskFailed

# Time limits are the executors', not the broker's: two brokers do (the poison test,
# which dead-letters, runs on every broker).
PROCESS_BROKERS = ["sqlite", "redis"]

pytestmark = pytest.mark.slow

TASKS = """
from celeriac.exceptions import SoftTimeLimitExceeded


@shared_task(soft_time_limit=0.5)
def soft(tag):
    try:
        while True:  # short steps: a thread sees the exception at its next Python line
            time.sleep(0.02)
    except SoftTimeLimitExceeded:
        append("cleaned", tag)
        return f"cleaned up {tag}"


@shared_task(soft_time_limit=0.5)
async def async_soft(tag):
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        append("cleaned", tag)
        return f"cleaned up {tag}"


@shared_task(time_limit=0.5)
def hard(tag):
    append("started", f"{tag} {os.getpid()}")
    while True:
        try:
            time.sleep(0.02)
        except Exception:  # a task that swallows errors is still stopped
            pass


@shared_task(time_limit=0.5)
async def async_hard(tag):
    await asyncio.sleep(30)


@shared_task
def pid():
    return os.getpid()


@shared_task
def poison():
    append("poison", str(os.getpid()))
    os._exit(1)


@shared_task
def add(a, b):
    return a + b
"""


def _failure(result) -> TaskFailed:
    error = result.get(timeout=20, propagate=False)
    assert isinstance(error, TaskFailed), error
    return error


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_time_limits_in_threads_and_on_the_loop(make_project, start_worker):
    project = make_project(TASKS)
    worker = start_worker(project, "--pool", "threads", "-c", "4")
    send = project.app.send_task

    assert send(project.name("soft"), args=["t"]).get(timeout=20) == "cleaned up t"
    assert send(project.name("async_soft"), args=["a"]).get(timeout=20) == "cleaned up a"
    assert sorted(project.lines("cleaned")) == ["a", "t"]

    for name in ("hard", "async_hard"):
        error = _failure(send(project.name(name), args=["x"]))
        assert error.exc_type == "TimeLimitExceeded"
        assert "0.5s" in error.exc_message
    # The worker goes on, with its full pool.
    results = [send(project.name("add"), args=[n, 1]) for n in range(8)]
    assert [r.get(timeout=20) for r in results] == [n + 1 for n in range(8)]
    assert worker.alive()


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_time_limits_in_the_process_pool(make_project, start_worker):
    project = make_project(TASKS)
    worker = start_worker(project, "--pool", "processes", "-c", "2")
    send = project.app.send_task

    assert send(project.name("soft"), args=["p"]).get(timeout=20) == "cleaned up p"

    error = _failure(send(project.name("hard"), args=["h"]))
    assert error.exc_type == "TimeLimitExceeded"
    killed = int(project.wait_for_lines("started")[0].split()[1])
    assert "killed at its hard time limit" in worker.log()
    # The child was replaced: tasks go on, in live children, never the killed one.
    pids = {send(project.name("pid")).get(timeout=30) for _ in range(6)}
    assert killed not in pids
    assert worker.alive()


def test_a_poison_task_is_quarantined_after_exactly_n_crashes(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS, broker_max_lease_expiries=3)
    worker = start_worker(project, "--pool", "processes", "-c", "2")
    app = project.app

    poisoned = app.send_task(project.name("poison"))
    others = [app.send_task(project.name("add"), args=[n, n]) for n in range(30)]

    assert [r.get(timeout=60) for r in others] == [2 * n for n in range(30)]
    error = _failure(poisoned)
    assert error.exc_type == "WorkerLostError"
    # (The result is stored just before the message moves to the dead letters.)
    letters = wait_until(
        lambda: [d for d in app.broker.dead_letters() if d.id == poisoned.id], 10, "dead letter"
    )
    assert len(letters) == 1
    assert "crashed its worker process 3 times" in letters[0].reason
    # Exactly three runs, each in a different child; no other task was counted as crashed.
    assert len(project.lines("poison")) == 3
    assert len(set(project.lines("poison"))) == 3
    crashes = re.findall(r"Task (\S+)\[(\S+)\] crashed its pool process", worker.log())
    assert {task_id for _, task_id in crashes} == {poisoned.id}
    assert len(crashes) == 3
    assert worker.alive()
