"""Fixtures for the end-to-end tests: real `celeriac worker` processes, on SQLite and Redis.

`make_project(tasks_source, **settings)` writes a package `proj_<hex>` into the test's
`tmp_path` (an app module and a tasks module) and returns a `Project`. The tasks module
starts with a header that imports `asyncio`, `os`, `time`, `shared_task`, defines `WORKDIR`
(a directory for marker files) and `append(name, text)`, which adds one line to
`WORKDIR/name` with a single `O_APPEND` write, so lines of concurrent writers never mix.

`start_worker(project, *args)` runs `python -m celeriac -A proj_<hex> worker *args` (or
another command: `command_name="beat"`) in the project directory, in a session of its own,
with stdout and stderr going to a log file; it waits (with a deadline) for the "celeriac
worker ready" line (beat: its "started:" line). At teardown every process
group that was started is killed with SIGKILL, so no worker, pool child or supervised
child outlives its test.

The test process never imports the project: it sends tasks by name with
`project.app.send_task(project.name("add"), ...)` and reads results from the same file.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac import Celeriac
from polling import wait_until
from services import amqp_url, new_prefix, postgres_url, redis_url

T = TypeVar("T")

READY_LINE = "celeriac worker ready"
READY_TIMEOUT = 30.0  # a cold interpreter on a busy two-core CI machine
EXIT_TIMEOUT = 20.0


def process_gone(pid: int) -> bool:
    """True when no process has this pid any more (a zombie, exited but not yet reaped by
    its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # the pid was reused by another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


TASKS_HEADER = '''\
"""Tasks of an end-to-end test project (generated)."""

import asyncio
import os
import time
from pathlib import Path

from celeriac import shared_task

WORKDIR = Path({workdir!r})


def append(name, text):
    """Add one line to WORKDIR/name in a single O_APPEND write."""
    fd = os.open(WORKDIR / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


def lines(name):
    """The lines of WORKDIR/name, or [] if it does not exist."""
    try:
        return (WORKDIR / name).read_text().splitlines()
    except FileNotFoundError:
        return []

'''

APP_MODULE = """\
from celeriac import Celeriac

app = Celeriac({package!r}, broker={broker!r}, **{settings!r})
app.autodiscover_tasks([{package!r}])
"""

# Leases long enough that a busy machine never takes a live worker for a dead one; tests
# that rely on a lease running out pass --lease 1 to the worker that dies.
DEFAULT_SETTINGS: dict[str, Any] = {"broker_lease_seconds": 10.0, "worker_shutdown_timeout": 10.0}


class Project:
    """A project package on disk, and a sending app in the test process."""

    def __init__(
        self, root: Path, package: str, broker_url: str, workdir: Path, settings: dict[str, Any]
    ) -> None:
        self.root = root
        self.package = package
        self.broker_url = broker_url
        self.settings = settings
        self.workdir = workdir
        self._app: Celeriac | None = None

    def name(self, function: str) -> str:
        """The registered name of a task in the project's tasks module."""
        return f"{self.package}.tasks.{function}"

    @property
    def app(self) -> Celeriac:
        """An app on the project's broker, for sending by name and reading results."""
        if self._app is None:
            self._app = Celeriac(broker=self.broker_url, set_as_current=False, **self.settings)
        return self._app

    def lines(self, name: str) -> list[str]:
        path = self.workdir / name
        return path.read_text().splitlines() if path.exists() else []

    def wait_for_lines(self, name: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until the marker file `name` has at least `count` lines; return them."""
        return wait_until(
            lambda: found if len(found := self.lines(name)) >= count else None,
            timeout,
            f"{count} line(s) in marker file {name}",
        )

    def close(self) -> None:
        if self._app is not None:
            delete_queues = getattr(self._app.broker, "delete_queues", None)
            if delete_queues is not None:  # RabbitMQ keeps queues until deleted
                delete_queues()
            self._app.close()
            self._app = None


@pytest.fixture(params=["sqlite", "redis", "postgres", "amqp"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Every e2e test runs on each broker that has real worker processes share it
    (RabbitMQ with its results and state on Redis)."""
    kind: str = request.param
    if kind in ("redis", "amqp"):
        redis_url()  # skips (or fails in CI) without a server
    if kind == "postgres":
        postgres_url()
    if kind == "amqp":
        amqp_url()
    return kind


@pytest.fixture
def make_project(tmp_path: Path, broker_kind: str) -> Iterator[Callable[..., Project]]:
    """`make_project(tasks_source, **settings)`: a new project package (see module doc)."""
    made: list[Project] = []

    def make(tasks_source: str, **settings: Any) -> Project:
        package = f"proj_{uuid.uuid4().hex[:12]}"
        base = tmp_path / f"p{len(made)}"
        root, workdir = base / "project", base / "work"
        (root / package).mkdir(parents=True)
        workdir.mkdir()
        settings = {**DEFAULT_SETTINGS, **settings}
        if broker_kind in ("redis", "postgres", "amqp"):
            broker_url = {"redis": redis_url, "postgres": postgres_url, "amqp": amqp_url}[
                broker_kind
            ]()
            settings["broker_key_prefix"] = new_prefix()
            if broker_kind == "amqp":
                settings.setdefault("result_backend", redis_url())
        else:
            broker_url = f"sqlite:///{base / 'celeriac.db'}"
        (root / package / "__init__.py").write_text("")
        app_source = APP_MODULE.format(package=package, broker=broker_url, settings=settings)
        (root / package / "celeriac.py").write_text(app_source)
        tasks = TASKS_HEADER.format(workdir=str(workdir)) + textwrap.dedent(tasks_source)
        (root / package / "tasks.py").write_text(tasks)
        project = Project(root, package, broker_url, workdir, settings)
        made.append(project)
        return project

    yield make
    for project in made:
        project.close()


class WorkerProcess:
    """A `celeriac worker` subprocess (or supervisor) and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, args: list[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.args = args

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.pid} {' '.join(self.args)}>"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        """Wait until `text` appears `count` times in the log; fail at once if the process
        exits before that."""

        def seen() -> str | None:
            log = self.log()
            if log.count(text) >= count:
                return log
            if not self.alive():
                raise AssertionError(
                    f"{self!r} exited with {self.proc.returncode} before logging {text!r}"
                    f" {count} time(s); log:\n{self.log_tail()}"
                )
            return None

        return wait_until(seen, timeout, f"{text!r} x{count} in {self.log_path} of {self!r}")

    def ready_pids(self) -> list[int]:
        """Pids of the processes that logged the ready line (several under a supervisor)."""
        return [int(p) for p in re.findall(r"/(\d+)\] " + READY_LINE, self.log())]

    def send(self, signum: int) -> None:
        """Signal the worker process only (not its pool or supervised children)."""
        os.kill(self.pid, signum)

    def send_group(self, signum: int) -> None:
        """Signal the whole process group, as a terminal's Ctrl-C or systemd would."""
        os.killpg(self.pid, signum)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self!r} still running {timeout:g}s later; log:\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the process and everything in its process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(project, *worker_args, ready=1)`: start `celeriac -A <package> worker`
    and wait until `ready` processes logged the ready line (2 for `--processes 2`; 0 to
    not wait). Everything started is SIGKILLed at teardown."""
    started: list[WorkerProcess] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["PYTHONUNBUFFERED"] = "1"

    def start(
        project: Project,
        *args: str,
        ready: int = 1,
        command_name: str = "worker",
        extra_env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        log_path = tmp_path / f"{command_name}-{len(started)}.log"
        command = [sys.executable, "-m", "celeriac", "-A", project.package, command_name]
        command += ["--loglevel=info", *args]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=project.root,
                env={**env, **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log_path, command[3:])
        started.append(worker)
        if ready:
            line = READY_LINE if command_name == "worker" else "started:"  # beat's line
            worker.wait_for_log(line, count=ready, timeout=READY_TIMEOUT)
        return worker

    yield start
    for worker in started:
        worker.kill()
    for worker in started:
        # Shown by pytest only when the test failed.
        print(f"----- {worker!r} (exit {worker.proc.returncode})\n{worker.log()}")


@pytest.fixture(name="process_gone")
def process_gone_fixture() -> Callable[[int], bool]:
    return process_gone
