"""Every task runs: many tasks over two workers, and a task whose worker is SIGKILLed."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.slow

RESULT_TIMEOUT = 60.0

RECORD_TASKS = """
@shared_task(bind=True)
def record(self, n):
    append("runs.log", f"{self.request.id} {os.getpid()}")
    time.sleep(0.01)  # long enough that one worker cannot drain the queue alone
    return [n * 2, os.getpid()]
"""


def test_500_tasks_over_two_workers_each_run_exactly_once(make_project, start_worker, wait_until):
    project = make_project(RECORD_TASKS)
    first = start_worker(project)
    second = start_worker(project)
    app = project.app

    results = [app.send_task(project.name("record"), args=[n]) for n in range(500)]

    deadline = time.monotonic() + RESULT_TIMEOUT
    values = [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in results]
    assert [v[0] for v in values] == [n * 2 for n in range(500)]

    runs = [line.split() for line in project.lines("runs.log")]
    assert len(runs) == 500, f"{len(runs)} runs for 500 tasks"
    ids = [task_id for task_id, _ in runs]
    assert len(set(ids)) == 500, "some task ran twice"
    assert set(ids) == {r.id for r in results}
    pids = {int(pid) for _, pid in runs}
    assert pids == {first.pid, second.pid}, "both workers should have run some tasks"
    assert {v[1] for v in values} == pids

    # Every message was acked after its result was stored: the queue ends up empty.
    def queue_empty() -> bool:
        stats = app.broker.stats().get("celeriac")
        return stats is None or (stats.ready, stats.delayed, stats.leased) == (0, 0, 0)

    wait_until(queue_empty, 20, "the queue to be empty after all results are in")
    assert app.broker.dead_letters() == []
    assert first.alive() and second.alive()


SLOW_TASKS = """
@shared_task
def slow(seconds):
    append("started", str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()
"""


def test_task_of_a_sigkilled_worker_runs_on_another_worker(make_project, start_worker):
    project = make_project(SLOW_TASKS, broker_lease_seconds=1.0)
    doomed = start_worker(project, "--lease", "1")
    result = project.app.send_task(project.name("slow"), args=[3])

    assert project.wait_for_lines("started") == [str(doomed.pid)]
    doomed.send_group(signal.SIGKILL)
    assert doomed.wait_exit() == -signal.SIGKILL
    assert result.state == "PENDING"

    # The new worker's own lease may be long: what matters is the dead worker's 1s lease.
    rescuer = start_worker(project, "--lease", "10")
    assert result.get(timeout=20) == rescuer.pid
    assert project.lines("started") == [str(doomed.pid), str(rescuer.pid)]
    assert project.app.broker.dead_letters() == []
