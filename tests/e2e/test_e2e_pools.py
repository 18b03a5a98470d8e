"""`--pool processes` and the `--processes N` supervisor."""

from __future__ import annotations

import re
import signal
import time

import pytest

pytestmark = pytest.mark.slow

# What these check is the worker's processes and signals, not the broker: two brokers do.
PROCESS_BROKERS = ["sqlite", "redis"]

TASKS = """
@shared_task
def where(seconds=0.0):
    time.sleep(seconds)
    return [os.getpid(), os.getppid()]


@shared_task
async def async_where(a, b):
    await asyncio.sleep(0.01)
    return [a + b, os.getpid()]


@shared_task
def slow(seconds):
    append("started", str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@shared_task
async def async_slow(seconds):
    append("started", str(os.getpid()))
    await asyncio.sleep(seconds)
    return os.getpid()
"""


def _get_all(results, timeout=30.0):
    deadline = time.monotonic() + timeout
    return [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in results]


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_process_pool_runs_plain_tasks_in_children_and_async_tasks_on_the_loop(
    make_project, start_worker, wait_until, process_gone
):
    project = make_project(TASKS)
    worker = start_worker(project, "--pool", "processes", "-c", "2")
    assert "processes pool of 2" in worker.log()
    app = project.app

    plain = [app.send_task(project.name("where"), args=[0.2]) for _ in range(4)]
    coro = [app.send_task(project.name("async_where"), args=[n, 1]) for n in range(3)]

    children = set()
    for pid, ppid in _get_all(plain):
        assert pid != worker.pid, "a plain task ran in the worker process itself"
        assert ppid == worker.pid, "a plain task ran in a process the worker did not start"
        children.add(pid)
    assert 1 <= len(children) <= 2
    assert _get_all(coro) == [[n + 1, worker.pid] for n in range(3)]

    worker.send(signal.SIGTERM)
    assert worker.wait_exit() == 0
    for pid in children:
        wait_until(lambda pid=pid: process_gone(pid), 10, f"pool process {pid} to exit")


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_supervisor_runs_two_workers_and_stops_them_on_sigterm(
    make_project, start_worker, wait_until, process_gone
):
    project = make_project(TASKS)
    supervisor = start_worker(project, "--processes", "2", ready=2)
    started = re.findall(r"started worker process \d \(pid (\d+)\)", supervisor.log())
    children = supervisor.ready_pids()
    assert len(children) == 2
    assert sorted(children) == sorted(map(int, started))
    assert supervisor.pid not in children

    results = [project.app.send_task(project.name("where"), args=[0.01]) for _ in range(20)]
    for pid, ppid in _get_all(results):
        assert pid in children
        assert ppid == supervisor.pid

    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit() == 0
    for pid in children:
        wait_until(lambda pid=pid: process_gone(pid), 10, f"worker child {pid} to exit")
    assert supervisor.log().count("worker stopped after") == 2


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_sigterm_to_the_process_group_lets_a_pool_task_finish(make_project, start_worker):
    project = make_project(TASKS)
    worker = start_worker(project, "--pool", "processes", "-c", "1")
    result = project.app.send_task(project.name("slow"), args=[1.5])
    project.wait_for_lines("started")

    worker.send_group(signal.SIGTERM)
    assert worker.wait_exit() == 0
    assert "crashed" not in worker.log()
    assert result.state == "SUCCESS"


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_ctrl_c_on_the_supervisor_lets_running_tasks_finish(make_project, start_worker):
    project = make_project(TASKS)
    supervisor = start_worker(project, "--processes", "2", ready=2)
    result = project.app.send_task(project.name("async_slow"), args=[1.5])
    project.wait_for_lines("started")

    # Ctrl-C reaches the whole process group. Hold the supervisor so that the children get
    # the terminal's SIGINT first; the supervisor's SIGTERM follows when it resumes. A child
    # that acted on both would take the second as "hand everything back now".
    supervisor.send(signal.SIGSTOP)
    try:
        supervisor.send_group(signal.SIGINT)
    finally:
        supervisor.send(signal.SIGCONT)
    code = supervisor.wait_exit()
    log = supervisor.log()
    assert "second stop signal" not in log
    assert log.count("stopping:") == 2
    assert result.state == "SUCCESS"
    assert code == 0
