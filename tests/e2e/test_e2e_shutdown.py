"""SIGTERM: the running task finishes; a second SIGTERM hands it back at once."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.slow

TASKS = """
@shared_task
def slow(seconds):
    append("started", str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@shared_task
def long_first_time(seconds):
    # Sleeps only on its first run, so a rerun elsewhere proves the message was kept.
    first = not lines("started")
    append("started", str(os.getpid()))
    if first:
        time.sleep(seconds)
    return os.getpid()
"""


def test_sigterm_lets_the_running_task_finish_then_exits_0(make_project, start_worker):
    project = make_project(TASKS)
    worker = start_worker(project)
    result = project.app.send_task(project.name("slow"), args=[1.5])

    project.wait_for_lines("started")
    worker.send(signal.SIGTERM)
    assert worker.wait_exit(20) == 0

    # Stored before the worker exited: readable at once, no waiting.
    assert result.state == "SUCCESS"
    assert result.get(timeout=0) == worker.pid
    log = worker.log()
    assert f"Task {project.name('slow')}[{result.id}] succeeded" in log
    # Acked, not handed back: nothing left in the queue.
    stats = project.app.broker.stats().get("celeriac")
    assert stats is None or (stats.ready, stats.leased) == (0, 0)


def _second_sigterm_during_a_long_task(project, start_worker):
    worker = start_worker(project, "--shutdown-timeout", "60")
    result = project.app.send_task(project.name("long_first_time"), args=[30])
    project.wait_for_lines("started")
    worker.send(signal.SIGTERM)
    worker.wait_for_log("stopping:")
    worker.send(signal.SIGTERM)
    return worker, result


def test_second_sigterm_hands_the_running_message_back_at_once(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    worker, result = _second_sigterm_during_a_long_task(project, start_worker)
    broker = project.app.broker

    def handed_back() -> bool:
        stats = broker.stats().get("celeriac")
        return stats is not None and (stats.ready, stats.leased) == (1, 0)

    # Well before the task's 30 s sleep (or any lease) could end.
    started = time.monotonic()
    wait_until(handed_back, 10, "the running message to be back in the queue as ready")
    assert time.monotonic() - started < 10
    assert result.state == "PENDING"
    worker.wait_for_log("handing back 1 messages")

    # Not lost: another worker runs it (its second run does not sleep).
    rescuer = start_worker(project)
    assert result.get(timeout=20) == rescuer.pid
    assert project.lines("started") == [str(worker.pid), str(rescuer.pid)]
    assert broker.dead_letters() == []


def test_second_sigterm_makes_a_thread_pool_worker_exit_promptly(make_project, start_worker):
    project = make_project(TASKS)
    worker, _ = _second_sigterm_during_a_long_task(project, start_worker)
    worker.wait_for_log("worker stopped")
    assert worker.wait_exit(5) == 0
