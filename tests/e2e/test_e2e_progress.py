"""An `async def` task reports progress; `celeriac result ID --wait` draws it and prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.slow

# What this checks is progress in the result backend and the CLI: two brokers do.
PROCESS_BROKERS = ["sqlite", "redis"]

STEPS = 4

TASKS = """
@shared_task(bind=True)
async def crunch(self, n):
    for i in range(n):
        self.update_progress(i, n, f"step {i}")
        await asyncio.sleep(0.05)
    self.update_progress(n, n, "waiting for release")
    # Finish only once the test has seen the progress from the outside.
    for _ in range(600):
        if lines("release"):
            break
        await asyncio.sleep(0.05)
    return {"steps": n, "pid": os.getpid()}
"""


@pytest.mark.parametrize("broker_kind", PROCESS_BROKERS)
def test_async_bound_task_progress_and_result_wait_cli(
    make_project, start_worker, wait_until, tmp_path
):
    project = make_project(TASKS)
    worker = start_worker(project)
    task_id = str(uuid.uuid4())
    out_path, err_path = tmp_path / "result.out", tmp_path / "result.err"
    command = [sys.executable, "-m", "celeriac", "-A", project.package]
    command += ["result", task_id, "--wait", "--timeout", "20"]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        waiter = subprocess.Popen(
            command, cwd=project.root, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
    try:
        project.app.send_task(project.name("crunch"), args=[STEPS], task_id=task_id)

        result = project.app.AsyncResult(task_id)
        last = f"{STEPS}/{STEPS} waiting for release"
        wait_until(lambda: last in err_path.read_text(), 20, "the CLI to draw the last progress")
        assert result.state == "STARTED"
        assert result.progress == {
            "current": STEPS,
            "total": STEPS,
            "message": "waiting for release",
        }
        (project.workdir / "release").write_text("go\n")
        code = waiter.wait(30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()

    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert code == 0, stderr
    shown = json.loads(stdout)
    assert shown["id"] == task_id
    assert shown["state"] == "SUCCESS"
    assert shown["result"] == {"steps": STEPS, "pid": worker.pid}
    # Not a terminal: one line per change of the progress, no carriage returns.
    progress = stderr.splitlines()
    assert progress, "no progress lines on stderr"
    assert all("%" in line for line in progress)
    assert "\r" not in stderr
    assert progress[-1].endswith(last)
    assert "Traceback" not in stderr
