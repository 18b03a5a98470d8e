"""Idempotency keys at execution: at most one run per key records a success, even when the
message is delivered again."""

from __future__ import annotations

import signal

import pytest

from celeriac import states
from celeriac.backends.base import TaskMeta

pytestmark = pytest.mark.slow

TASKS = """
@shared_task(idempotent=True)
def charge(order):
    append("ran", str(os.getpid()))
    time.sleep(0.5)
    return os.getpid()
"""


def test_a_redelivered_task_that_already_succeeded_is_not_run_again(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    app = project.app
    result = app.send_task(project.name("charge"), args=[7], idempotency_key="order-7")
    # A worker took it, ran it, stored its success and died before its ack: done by hand.
    [delivery] = app.broker.fetch(["celeriac"], 1, 0.5)
    app.backend.store([TaskMeta(result.id, states.SUCCESS, project.name("charge"), "done")])
    app.close()  # its connection, too, as a dead worker's (RabbitMQ's lease ends with it)

    worker = start_worker(project)
    worker.wait_for_log(f"[{result.id}] already succeeded: not run again")
    wait_until(lambda: app.broker.stats().get("celeriac") is None, 10, "the message acked")
    assert project.lines("ran") == []
    assert result.get(timeout=5) == "done"
    assert delivery.attempt == 1


def test_of_two_runs_after_a_lost_lease_only_the_lease_holder_records_success(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    first = start_worker(project, "--lease", "1")
    # Sent by name: the worker knows the task is idempotent, the message carries no key.
    result = project.app.send_task(project.name("charge"), args=[8])
    project.wait_for_lines("ran")
    first.send(signal.SIGSTOP)  # frozen mid-task: its lease runs out
    try:
        second = start_worker(project)
        [_, second_pid] = project.wait_for_lines("ran", 2)
        assert result.get(timeout=20) == int(second_pid)
    finally:
        first.send(signal.SIGCONT)
    first.wait_for_log("lost its lease while running; its result is dropped")
    assert result.get(timeout=5) == second.pid
