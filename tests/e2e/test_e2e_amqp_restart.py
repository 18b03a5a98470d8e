"""RabbitMQ restarted under a draining worker: the worker reconnects by itself, and every
task whose `delay()` returned runs (quorum queues keep their messages)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow

TASKS = 300
RESULT_TIMEOUT = 120.0

RECORD_TASKS = """
@shared_task(bind=True)
def record(self, n):
    append("runs.log", self.request.id)
    time.sleep(0.02)
    return n
"""


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker_kind", ["amqp"])
def test_a_broker_restart_loses_no_task(make_project, start_worker, wait_until):
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on this machine: cannot restart RabbitMQ")
    project = make_project(RECORD_TASKS)
    app = project.app
    results = [app.send_task(project.name("record"), args=[n]) for n in range(TASKS)]
    worker = start_worker(project)
    project.wait_for_lines("runs.log", 20)
    try:
        rabbitmqctl("stop_app")  # every connection dropped, the node down
    finally:
        rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    worker.wait_for_log("fetch failed")  # it noticed, and goes on trying

    deadline = time.monotonic() + RESULT_TIMEOUT
    values = [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in results]
    assert values == list(range(TASKS))
    ran = set(project.lines("runs.log"))
    assert ran == {r.id for r in results}  # none lost (a held one may have run twice)
    assert worker.alive()
