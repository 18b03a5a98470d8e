"""Workflows across real worker processes: a worker killed in the middle of a chain and of a
chord, and redelivered chord members; the next step and the body run exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from celeriac import Signature, chain, chord, group
from celeriac.brokers import Outgoing, QueueStats

pytestmark = pytest.mark.slow

TASKS = """
@shared_task
def step(value, name, seconds=0.0):
    append("steps", f"{name} {os.getpid()}")
    time.sleep(seconds)
    return value + [name]


@shared_task
def member(n, seconds=0.0):
    append("members", f"{n} {os.getpid()}")
    time.sleep(seconds)
    return n


@shared_task
def total(values):
    append("body", repr(values))
    return sum(values)


@shared_task(bind=True)
def counting(self, steps):
    for n in range(steps):
        self.update_progress(n + 1, steps)
    return steps
"""


def _sig(project, name, *args, **kwargs):
    return Signature(project.name(name), args, kwargs, app=project.app)


def test_a_chain_goes_on_when_its_worker_dies_between_steps(make_project, start_worker):
    project = make_project(TASKS)
    first = start_worker(project, "--lease", "1")
    flow = chain(
        _sig(project, "step", [], "one"),
        _sig(project, "step", "two", 2.0),  # the worker dies during this one
        _sig(project, "step", "three"),
    )
    result = flow.apply_async()
    project.wait_for_lines("steps", 2)
    first.send(signal.SIGKILL)
    first.wait_exit()

    start_worker(project)
    assert result.get(timeout=30) == ["one", "two", "three"]
    names = [line.split()[0] for line in project.lines("steps")]
    assert names.count("one") == 1
    assert names.count("two") == 2  # killed mid-run, so run again
    assert names.count("three") == 1


def test_a_chord_body_runs_once_when_a_worker_dies_mid_chord(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    first = start_worker(project, "--lease", "1", "-c", "2")
    header = [_sig(project, "member", n, 0.4) for n in range(6)]
    result = chord(header, _sig(project, "total")).apply_async()
    project.wait_for_lines("members", 3)
    first.send(signal.SIGKILL)
    first.wait_exit()

    start_worker(project, "-c", "2")
    assert result.get(timeout=30) == 15
    assert project.lines("body") == [repr([0, 1, 2, 3, 4, 5])]
    wait_until(
        lambda: project.app.broker.stats().get("celeriac", QueueStats()) == QueueStats(),
        10,
        "every message acked",
    )
    assert project.lines("body") == [repr([0, 1, 2, 3, 4, 5])]


def test_redelivered_chord_members_do_not_run_the_body_again(
    make_project, start_worker, wait_until
):
    project = make_project(TASKS)
    app = project.app
    result = chord(
        [_sig(project, "member", n) for n in range(3)], _sig(project, "total")
    ).apply_async()
    # Keep a copy of every member's message, as a broker would hand it out again.
    copies = app.broker.fetch(["celeriac"], 10, 30)
    app.broker.release(copies)
    start_worker(project)
    assert result.get(timeout=20) == 3

    app.broker.publish([Outgoing(d.id, d.queue, d.body) for d in copies])
    wait_until(
        lambda: (
            len(project.lines("members")) == 6
            and app.broker.stats().get("celeriac", QueueStats()) == QueueStats()
        ),
        20,
        "the copies to run and be acked",
    )
    assert project.lines("body") == [repr([0, 1, 2])]


def test_result_wait_draws_a_groups_progress(make_project, start_worker):
    project = make_project(TASKS)
    start_worker(project)
    result = group(_sig(project, "counting", 3), _sig(project, "member", 1)).apply_async()
    proc = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", project.package, "result", result.id, "--wait"],
        cwd=project.root,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["id"] == result.id
    assert shown["state"] == "SUCCESS"
    assert [r["result"] for r in shown["results"]] == [3, 1]
