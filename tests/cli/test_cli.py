"""The `celeriac` command, run as a subprocess in a temporary project directory.

Errors a user can cause print one line, `celeriac: error: ...`, on stderr and exit with 2;
none prints a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# The installed console script when there is one (it is what users run), else the module.
_SCRIPT = Path(sys.executable).with_name("celeriac")
CELERIAC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "celeriac"]
if not _SCRIPT.exists() and shutil.which("celeriac"):
    CELERIAC = [str(shutil.which("celeriac"))]

RUN_TIMEOUT = 60.0
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Project:
    root: Path
    package: str

    @property
    def task(self) -> str:
        return f"{self.package}.tasks.add"


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project dir holding `proj_<hex>/` (an app on an SQLite file in tmp_path, and a
    task `add`), a module without an app and a module that fails to import."""
    package = f"proj_{uuid.uuid4().hex[:12]}"
    root = tmp_path / "project"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "celeriac.py").write_text(
        "from celeriac import Celeriac\n\n"
        f"app = Celeriac({package!r}, broker={f'sqlite:///{tmp_path}/celeriac.db'!r})\n"
        f"app.autodiscover_tasks([{package!r}])\n"
    )
    (root / package / "tasks.py").write_text(
        "from celeriac import shared_task\n\n\n@shared_task\ndef add(a, b):\n    return a + b\n"
    )
    (root / "noapp.py").write_text("VALUE = 1\n")
    (root / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    return Project(root, package)


@pytest.fixture
def run(project: Project) -> Run:
    """`run(*args)`: the celeriac command in the project dir, stdin not a terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}

    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CELERIAC, *args],
            cwd=project.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    return run_cli


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, and exactly one line on stderr, `celeriac: error: ...`, with no traceback."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("celeriac: error: "), lines[0]
    assert proc.stdout == ""
    for text in expected:
        assert text in lines[0]
    return lines[0]


def queue_table(output: str) -> dict[str, dict[str, int]]:
    """Parse `inspect queues`: {queue: {"ready": n, "delayed": n, "running": n, "dead": n}}."""
    lines = output.splitlines()
    header = lines[0].split()
    assert header == ["queue", "ready", "delayed", "running", "dead"], output
    table = {}
    for line in lines[1:]:
        queue, *counts = line.split()
        table[queue] = dict(zip(header[1:], map(int, counts), strict=True))
    return table


# Help ------------------------------------------------------------------------------------


def test_help_lists_options_and_commands(run: Run) -> None:
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for text in ("-A", "--app", "--broker", "worker", "call", "result", "purge", "inspect"):
        assert text in proc.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "worker",
            [
                "--loglevel",
                "--concurrency",
                "--queues",
                "--pool",
                "--processes",
                "--lease",
                "--shutdown-timeout",
            ],
        ),
        ("call", ["--args", "--kwargs", "--queue", "--countdown", "--priority"]),
        ("result", ["--wait", "--timeout"]),
        ("purge", ["--queue", "--force"]),
        ("revoke", ["--terminate"]),
        ("inspect", ["queues"]),
    ],
)
def test_command_help(run: Run, command: str, options: list[str]) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: celeriac {command}")
    for option in options:
        assert option in proc.stdout, f"{command} --help does not mention {option}"


# Errors a user can make -------------------------------------------------------------------


@pytest.mark.parametrize("command", [["inspect", "queues"], ["worker"], ["call", "x.y"]])
def test_missing_app_module(run: Run, command: list[str]) -> None:
    missing = f"nosuch_{uuid.uuid4().hex[:8]}"
    assert_one_line_error(run("-A", missing, *command), f"no module named {missing!r}")


def test_module_without_an_app(run: Run) -> None:
    assert_one_line_error(run("-A", "noapp", "inspect", "queues"), "found no Celeriac app")


def test_attribute_that_is_not_an_app(run: Run, project: Project) -> None:
    line = assert_one_line_error(run("-A", f"{project.package}:nothing", "inspect", "queues"))
    assert "is not a Celeriac app" in line


def test_module_that_fails_to_import(run: Run) -> None:
    line = assert_one_line_error(run("-A", "broken", "inspect", "queues"))
    assert "importing broken failed" in line
    assert "broken on purpose" in line


def test_missing_dependency_of_the_app_module_is_named(run: Run, project: Project) -> None:
    (project.root / "shop_app.py").write_text("import shop\n")
    line = assert_one_line_error(run("-A", "shop_app", "inspect", "queues"))
    assert "No module named 'shop'" in line


def test_worker_without_app(run: Run) -> None:
    assert_one_line_error(run("worker"), "worker needs -A")


def test_unknown_broker_scheme(run: Run, project: Project) -> None:
    assert_one_line_error(run("--broker", "nosuch://x", "inspect", "queues"), "nosuch://x")
    assert_one_line_error(
        run("-A", project.package, "--broker", "nosuch://x", "call", project.task),
        "unknown broker URL",
    )


def test_sqlite_broker_in_a_missing_directory(run: Run, project: Project, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    url = f"sqlite:///{missing}/celeriac.db"
    line = assert_one_line_error(run("-A", project.package, "--broker", url, "inspect", "queues"))
    assert str(missing) in line
    assert not missing.exists()


def test_malformed_sqlite_url(run: Run) -> None:
    assert_one_line_error(run("--broker", "sqlite://", "inspect", "queues"), "bad SQLite URL")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--args", "not json", "--args is not valid JSON"),
        ("--args", '{"a": 1}', "--args must be a JSON list"),
        ("--kwargs", "{a: 1}", "--kwargs is not valid JSON"),
        ("--kwargs", "[1, 2]", "--kwargs must be a JSON object"),
    ],
)
def test_call_with_bad_json(
    run: Run, project: Project, option: str, value: str, expected: str
) -> None:
    assert_one_line_error(run("-A", project.package, "call", project.task, option, value), expected)
    # Nothing was sent.
    assert run("-A", project.package, "inspect", "queues").stdout == "no queues have messages\n"


def test_worker_with_negative_concurrency(run: Run, project: Project) -> None:
    assert_one_line_error(run("-A", project.package, "worker", "-c", "-1"), "--concurrency")


@pytest.mark.slow
def test_supervisor_with_a_missing_app_module_exits_2(project: Project) -> None:
    command = [*CELERIAC, "-A", f"nosuch_{uuid.uuid4().hex[:8]}", "worker", "--processes", "2"]
    proc = subprocess.Popen(
        command,
        cwd=project.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=6)
    except subprocess.TimeoutExpired:
        stderr = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if stderr is None:
        proc.communicate()
        raise AssertionError("the supervisor was still running 6s after its children failed")
    assert proc.returncode == 2
    assert stderr.splitlines()[-1].startswith("celeriac: error: ")


# Sending, inspecting, purging -------------------------------------------------------------


def test_call_then_inspect_queues(run: Run, project: Project) -> None:
    assert run("-A", project.package, "inspect", "queues").stdout == "no queues have messages\n"

    proc = run("-A", project.package, "call", project.task, "--args", "[1, 2]")
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    assert UUID_RE.match(task_id), proc.stdout

    proc = run("-A", project.package, "inspect", "queues")
    assert proc.returncode == 0, proc.stderr
    assert queue_table(proc.stdout) == {
        "celeriac": {"ready": 1, "delayed": 0, "running": 0, "dead": 0}
    }

    # Queue and countdown options land where they say.
    sent = run(
        "-A", project.package, "call", project.task, "--kwargs", '{"a": 1, "b": 2}',
        "--queue", "mail", "--countdown", "600", "--priority", "9",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert queue_table(run("-A", project.package, "inspect", "queues").stdout) == {
        "celeriac": {"ready": 1, "delayed": 0, "running": 0, "dead": 0},
        "mail": {"ready": 0, "delayed": 1, "running": 0, "dead": 0},
    }


def test_result_of_an_unknown_id_is_pending(run: Run, project: Project) -> None:
    task_id = str(uuid.uuid4())
    proc = run("-A", project.package, "result", task_id)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"id": task_id, "state": "PENDING"}


def test_result_wait_times_out_with_exit_1(run: Run, project: Project) -> None:
    proc = run("-A", project.package, "result", str(uuid.uuid4()), "--wait", "--timeout", "0.3")
    assert proc.returncode == 1
    assert "still PENDING" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_purge_asks_unless_forced(run: Run, project: Project) -> None:
    for n in range(3):
        sent = run("-A", project.package, "call", project.task, "--args", f"[{n}, 1]")
        assert sent.returncode == 0, sent.stderr

    # stdin is not a terminal: refuse instead of waiting for an answer.
    line = assert_one_line_error(run("-A", project.package, "purge"))
    assert "-f" in line
    assert queue_table(run("-A", project.package, "inspect", "queues").stdout)["celeriac"] == {
        "ready": 3,
        "delayed": 0,
        "running": 0,
        "dead": 0,
    }

    proc = run("-A", project.package, "purge", "-f")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deleted 3 messages from queue 'celeriac'"
    assert run("-A", project.package, "inspect", "queues").stdout == "no queues have messages\n"

    proc = run("-A", project.package, "purge", "-f")
    assert proc.returncode == 0
    assert "no waiting messages" in proc.stdout


def test_purge_of_another_queue_leaves_the_default_alone(run: Run, project: Project) -> None:
    assert run("-A", project.package, "call", project.task, "--queue", "other").returncode == 0
    assert run("-A", project.package, "call", project.task).returncode == 0
    proc = run("-A", project.package, "purge", "-f", "-Q", "other")
    assert proc.stdout.strip() == "deleted 1 messages from queue 'other'"
    assert queue_table(run("-A", project.package, "inspect", "queues").stdout) == {
        "celeriac": {"ready": 1, "delayed": 0, "running": 0, "dead": 0}
    }


def test_dlq_list_show_replay_purge(run: Run, project: Project, tmp_path: Path) -> None:
    from celeriac.brokers import Outgoing, from_url

    broker = from_url(f"sqlite:///{tmp_path}/celeriac.db")
    broker.publish([Outgoing(f"m{n}", "celeriac", f"body {n}".encode()) for n in range(3)])
    for delivery in broker.fetch(["celeriac"], 10, 30):
        broker.dead_letter(delivery, f"TypeError: bad {delivery.id}")
    pkg = ["-A", project.package]

    listed = run(*pkg, "dlq", "list")
    assert listed.returncode == 0
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == ["m0", "m1", "m2"]
    assert "TypeError: bad m1" in listed.stdout

    shown = run(*pkg, "dlq", "show", "m1")
    assert "reason:  TypeError: bad m1" in shown.stdout
    assert "message: body 1" in shown.stdout
    assert_one_line_error(run(*pkg, "dlq", "show", "nope"))
    assert_one_line_error(run(*pkg, "dlq", "replay"))  # neither ids nor --all

    assert run(*pkg, "dlq", "replay", "m1").stdout.strip() == "replayed 1 dead letters"
    assert [d.id for d in broker.fetch(["celeriac"], 10, 30)] == ["m1"]

    assert_one_line_error(run(*pkg, "dlq", "purge"))  # asks; stdin is no terminal
    assert run(*pkg, "dlq", "purge", "-f").stdout.strip() == "deleted 2 dead letters"
    assert run(*pkg, "dlq", "list").stdout.strip() == "no dead letters"
    assert run(*pkg, "dlq", "--help").returncode == 0
    broker.close()


def test_revoke_deletes_a_queued_task_and_marks_it_revoked(run: Run, project: Project) -> None:
    sent = run("-A", project.package, "call", project.task, "--args", "[1, 2]")
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()

    proc = run("-A", project.package, "revoke", task_id)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "revoked 1 task(s)"
    assert run("-A", project.package, "inspect", "queues").stdout == "no queues have messages\n"
    shown = json.loads(run("-A", project.package, "result", task_id).stdout)
    assert shown["state"] == "REVOKED"


def test_beat_entries_from_the_command_line(run: Run, project: Project) -> None:
    app = ("-A", project.package)
    # Only the built-in one: expired results are deleted daily.
    assert run(*app, "beat", "list").stdout.startswith("celeriac.backend_cleanup ")
    added = run(*app, "beat", "add", "nightly", project.task, "--crontab", "30 2 * * mon-fri")
    assert added.returncode == 0, added.stderr
    assert "crontab(minute='30', hour='2', day_of_week='mon-fri')" in added.stdout
    assert (
        run(
            *app, "beat", "add", "often", project.task, "--every", "5", "--args", "[1, 2]"
        ).returncode
        == 0
    )
    listed = run(*app, "beat", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["celeriac.backend_cleanup", "nightly", "often"]
    assert "every 5s" in listed[2] and "next: " in listed[2]
    assert run(*app, "beat", "pause", "often").stdout.strip() == "often paused"
    assert "next: paused" in run(*app, "beat", "list").stdout
    assert run(*app, "beat", "remove", "often").returncode == 0
    assert_one_line_error(run(*app, "beat", "remove", "often"), "no beat entry named 'often'")
    assert_one_line_error(
        run(*app, "beat", "add", "x", project.task, "--crontab", "* *"), "5 fields"
    )
