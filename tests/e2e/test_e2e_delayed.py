"""Delayed tasks wait in the broker, not in a worker's memory, and run once when due."""

from __future__ import annotations

import time

import pytest

from celeriac.brokers import QueueStats

pytestmark = pytest.mark.slow

TASKS = """
@shared_task(bind=True)
def later(self):
    append("runs.log", f"{self.request.id} {time.time()}")
"""

COUNT = 2000
DELAY = 4.0


def test_thousands_of_delayed_tasks_run_exactly_once_when_due(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    app = project.app
    worker = start_worker(project)
    name = project.name("later")
    sent_at = time.time()
    envelopes = [app.envelope(name, eta=sent_at + DELAY) for _ in range(COUNT)]
    app.publish(envelopes)

    # While they wait, the worker holds none of them: they are all delayed in the broker.
    stats = app.broker.stats()["celeriac"]
    if time.time() < sent_at + DELAY - 1:  # only if this machine was quick enough to look
        assert stats == QueueStats(delayed=COUNT), stats
        assert project.lines("runs.log") == []

    wait_until(lambda: len(project.lines("runs.log")) >= COUNT, 60, f"{COUNT} runs")
    wait_until(lambda: app.broker.stats().get("celeriac") is None, 20, "an empty queue")
    runs = [line.split() for line in project.lines("runs.log")]
    assert len(runs) == COUNT, f"{len(runs) - COUNT} extra runs"
    assert {task_id for task_id, _ in runs} == {e.id for e in envelopes}
    first_run = min(float(at) for _, at in runs)
    assert first_run >= sent_at + DELAY, f"ran {sent_at + DELAY - first_run:.3f}s early"
    assert worker.alive()
