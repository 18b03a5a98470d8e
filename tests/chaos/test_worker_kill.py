"""Worker SIGKILL chaos (RELIABILITY.md, "The tests that prove it", item 1).

Thousands of tasks go to three real `celeriac worker` processes; every 1-2 s a random one
is killed with SIGKILL (its whole process group) and a new one is started in its place,
for as long as the queue still has tasks waiting. Then the survivors drain what is left,
including the messages the dead workers held, which come back when their 1 s lease ends.

Every run of a task appends "<task id> <pid> start" and "<task id> <pid> end" to one log
file, each line in a single O_APPEND write. A checker then classifies every task id the
way RabbitMQ's Jepsen `total-queue` checker does:

    ok          sent, succeeded, ran once
    duplicated  sent, succeeded, started more than once
    lost        sent, no run finished with a stored SUCCESS (nor was it dead-lettered
                after its lease expired the maximum number of times)
    unexpected  a run of an id that was never sent

The invariant: 0 lost, 0 unexpected, and every duplicate is explained: all runs of the
task but the last were in a worker the test SIGKILLed (attempts that could never ack).
A message whose lease ran out `broker_max_lease_expiries` times is dead-lettered by
design; that is "dead-lettered after N worker deaths", explained and not lost, and the
limit is set high (10) so that it practically never happens here.

The seed is printed; CELERIAC_CHAOS_SEED=<seed> replays the same kill choices and task
durations (not the same timing, which is the machine's).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.brokers import QueueStats
from polling import wait_until
from services import amqp_url, new_prefix, postgres_url, redis_url

TASKS = 5000
WORKERS = 3
CONCURRENCY = 4
LEASE = 1.0  # a killed worker's messages are due again after this
MAX_LEASE_EXPIRIES = 10  # dead-lettering after this many worker deaths: made rare
TASK_MS = (10, 40)  # how long each task sleeps, in milliseconds
KILL_EVERY = (1.0, 2.0)  # seconds between kills
READY_TIMEOUT = 30.0  # a cold interpreter on a busy two-core machine
RUN_DEADLINE = 90.0  # from the send to every result in
QUEUE = "celeriac"
READY_LINE = "celeriac worker ready"
# Not services.new_prefix(): at its end every pytest session deletes all "celeriac-test:*"
# keys (tests/services.py, delete_test_keys), also those of a session still running on
# the same server, and a wipe in mid-run would look like thousands of lost tasks. This
# test deletes its own keys at teardown.
KEY_PREFIX = "celeriac-chaos"
LEASE_EXPIRED = re.compile(r"lease expired (\d+) times")

APP_MODULE = """\
from celeriac import Celeriac

app = Celeriac({package!r}, broker={broker!r}, **{settings!r})
app.autodiscover_tasks([{package!r}])
"""

TASKS_MODULE = """\
\"\"\"Tasks of the worker-kill chaos test (generated).\"\"\"

import os
import time

from celeriac import shared_task

RUNS = {runs!r}


def record(line):
    \"\"\"One line to the runs log, in one O_APPEND write: lines never mix.\"\"\"
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@shared_task(bind=True)
def work(self, n, ms):
    pid = os.getpid()
    record(f"{{self.request.id}} {{pid}} start\\n")
    time.sleep(ms / 1000)
    record(f"{{self.request.id}} {{pid}} end\\n")
    return n
"""


# The checker ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Every sent task id in exactly one of ok / duplicated / lost / dead_lettered, plus the
    ids that ran without being sent, and the duplicates that no kill explains."""

    ok: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    dead_lettered: dict[str, int] = field(default_factory=dict)  # id -> lease expiries
    unexpected: set[str] = field(default_factory=set)
    unexplained: dict[str, list[int]] = field(default_factory=dict)  # id -> pids of its runs
    malformed: list[str] = field(default_factory=list)  # run-log lines that do not parse

    def holds(self) -> bool:
        return not (self.lost or self.unexpected or self.unexplained or self.malformed)


def check(
    *,
    sent: set[str],
    succeeded: set[str],
    dead: dict[str, str],
    run_lines: list[str],
    killed: set[int],
    max_lease_expiries: int,
) -> Verdict:
    """Classify every task. `dead` maps a dead-lettered id to the reason the broker gave."""
    verdict = Verdict()
    starts: dict[str, list[int]] = {}
    ends: dict[str, list[int]] = {}
    for line in run_lines:
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("start", "end") or not parts[1].isdigit():
            verdict.malformed.append(line)
            continue
        task_id, pid, what = parts[0], int(parts[1]), parts[2]
        (starts if what == "start" else ends).setdefault(task_id, []).append(pid)
    verdict.unexpected = (starts.keys() | ends.keys()) - sent

    for task_id in sent:
        runs = starts.get(task_id, [])
        if task_id in succeeded and task_id in ends:
            # All attempts but the last must have died with their worker: a live worker
            # finishes what it starts, stores the result and acks.
            if len(runs) > 1:
                verdict.duplicated.add(task_id)
                if any(pid not in killed for pid in runs[:-1]):
                    verdict.unexplained[task_id] = runs
            else:
                verdict.ok.add(task_id)
            continue
        match = LEASE_EXPIRED.search(dead.get(task_id, ""))
        expiries = int(match.group(1)) if match else 0
        if (
            task_id not in succeeded
            and expiries >= max_lease_expiries
            and all(pid in killed for pid in runs)
        ):
            verdict.dead_lettered[task_id] = expiries
        else:
            verdict.lost.add(task_id)
    return verdict


def summary(broker: str, tasks: int, kills: int, verdict: Verdict) -> str:
    explained = "all in killed workers" if not verdict.unexplained else "NOT all explained"
    line = (
        f"broker={broker} tasks={tasks} kills={kills} ok={len(verdict.ok)}"
        f" duplicated={len(verdict.duplicated)} ({explained}) lost={len(verdict.lost)}"
        f" unexpected={len(verdict.unexpected)}"
    )
    if verdict.dead_lettered:
        deaths = sorted(verdict.dead_lettered.values())
        line += f" dead-lettered={len(deaths)} (after {deaths} worker deaths)"
    if verdict.malformed:
        line += f" malformed-run-lines={len(verdict.malformed)}"
    return line


def test_checker_classifies_every_case() -> None:
    """The checker itself, on a made-up history: each class is recognised."""
    killed = {100, 101}
    lines = [
        "a 200 start",
        "a 200 end",  # ok
        "b 100 start",
        "b 200 start",
        "b 200 end",  # duplicated, explained: the first run died with pid 100
        "c 200 start",
        "c 200 end",
        "c 201 start",
        "c 201 end",  # duplicated, unexplained: pid 200 was never killed
        "d 100 start",  # lost: never succeeded, not dead-lettered
        "e 100 start",
        "e 101 start",  # dead-lettered after its workers died
        "x 200 start",  # unexpected
        "garbage",
    ]
    sent = {"a", "b", "c", "d", "e", "f"}
    dead = {"e": "lease expired 3 times: its worker died or hung", "f": "NotRegistered: f"}
    history = {"dead": dead, "run_lines": lines, "killed": killed}
    verdict = check(sent=sent, succeeded={"a", "b", "c"}, max_lease_expiries=3, **history)
    assert verdict.ok == {"a"}
    assert verdict.duplicated == {"b", "c"}
    assert verdict.unexplained == {"c": [200, 201]}
    assert verdict.lost == {"d", "f"}
    assert verdict.dead_lettered == {"e": 3}
    assert verdict.unexpected == {"x"}
    assert verdict.malformed == ["garbage"]
    assert not verdict.holds()
    # Fewer expiries than the limit is no excuse for a dead letter.
    verdict = check(sent={"e"}, succeeded=set(), max_lease_expiries=4, **history)
    assert verdict.lost == {"e"}


# Worker processes ----------------------------------------------------------------------------


class WorkerDied(Exception):
    """A worker exited without being killed by the test: a failure in itself."""


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise WorkerDied(
                f"worker {self.pid} exited by itself with {self.proc.returncode}; log:\n"
                + self.notable()
            )

    def notable(self, lines: int = 10) -> str:
        """The log without the routine "succeeded" lines, and its last lines."""
        log = self.log().splitlines()
        unusual = [line for line in log[:-lines] if " succeeded in " not in line]
        return "\n".join(unusual + log[-lines:])

    def wait_ready(self) -> None:
        def ready() -> bool:
            if READY_LINE in self.log():
                return True
            self.check_alive()
            return False

        wait_until(ready, READY_TIMEOUT, f"{READY_LINE!r} from worker {self.pid}")

    def kill(self) -> None:
        """SIGKILL the worker and anything in its process group; reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)


@dataclass
class Project:
    root: Path
    package: str
    broker_url: str
    settings: dict[str, Any]
    runs: Path

    def run_lines(self) -> list[str]:
        return self.runs.read_text().splitlines() if self.runs.exists() else []

    def delete_keys(self) -> None:
        """Remove this test's Redis keys and RabbitMQ queues (nothing to do on SQLite:
        tmp_path goes)."""
        if self.broker_url.startswith("amqp"):
            app = Celeriac(broker=self.broker_url, set_as_current=False, **self.settings)
            app.broker.delete_queues(["celeriac"])  # type: ignore[attr-defined]
            app.close()
            self.broker_url = self.settings["result_backend"]  # and the Redis keys
        prefix = self.settings.get("broker_key_prefix")
        if prefix is None or not self.broker_url.startswith("redis"):
            return
        import redis

        client = redis.Redis.from_url(self.broker_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


def make_project(tmp_path: Path, broker_kind: str) -> Project:
    """Write a package with the app and the tasks module into `tmp_path`."""
    package = f"chaos_{uuid.uuid4().hex[:12]}"
    root = tmp_path / "project"
    (root / package).mkdir(parents=True)
    runs = tmp_path / "runs.log"
    settings: dict[str, Any] = {
        "broker_lease_seconds": LEASE,
        "broker_max_lease_expiries": MAX_LEASE_EXPIRIES,
        "worker_shutdown_timeout": 5.0,
    }
    if broker_kind == "redis":
        broker_url = redis_url()  # skips (fails in CI) without a server
        settings["broker_key_prefix"] = f"{KEY_PREFIX}:{uuid.uuid4().hex[:12]}"
    elif broker_kind == "postgres":
        broker_url = postgres_url()
        settings["broker_key_prefix"] = new_prefix()  # its schema, dropped after the session
    elif broker_kind == "amqp":
        broker_url = amqp_url()
        settings["broker_key_prefix"] = new_prefix()  # its queues, deleted by delete_keys
        settings["result_backend"] = redis_url()
    else:
        broker_url = f"sqlite:///{tmp_path / 'celeriac.db'}"
    (root / package / "__init__.py").write_text("")
    app_source = APP_MODULE.format(package=package, broker=broker_url, settings=settings)
    (root / package / "celeriac.py").write_text(app_source)
    (root / package / "tasks.py").write_text(TASKS_MODULE.format(runs=str(runs)))
    return Project(root, package, broker_url, settings, runs)


class Fleet:
    """The worker processes of one test: `WORKERS` running at a time, and every one ever
    started (each is SIGKILLed at teardown, with its process group)."""

    def __init__(self, project: Project, log_dir: Path) -> None:
        self.project = project
        self.log_dir = log_dir
        self.running: list[Worker] = []
        self.started: list[Worker] = []
        self.killed: set[int] = set()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        self.env["PYTHONUNBUFFERED"] = "1"

    def spawn(self) -> Worker:
        """Start `celeriac -A <package> worker` (without waiting for it to be ready)."""
        log_path = self.log_dir / f"worker-{len(self.started)}.log"
        command = [sys.executable, "-m", "celeriac", "-A", self.project.package, "worker"]
        command += ["--loglevel=info", "--concurrency", str(CONCURRENCY), "--lease", str(LEASE)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=self.project.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log_path)
        self.started.append(worker)
        return worker

    def start(self) -> None:
        self.running = [self.spawn() for _ in range(WORKERS)]
        for worker in self.running:
            worker.wait_ready()

    def kill_and_replace(self, index: int) -> None:
        victim = self.running[index]
        victim.check_alive()
        victim.kill()
        self.killed.add(victim.pid)
        self.running[index] = self.spawn()
        self.running[index].wait_ready()

    def check_alive(self) -> None:
        for worker in self.running:
            worker.check_alive()

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()

    def dump(self) -> None:
        for worker in self.started:
            state = "killed" if worker.pid in self.killed else worker.proc.returncode
            print(f"----- worker {worker.pid} ({state})\n{worker.notable()}")


def queue_stats(app: Celeriac) -> QueueStats:
    return app.broker.stats().get(QUEUE, QueueStats())


def run_chaos(app: Celeriac, fleet: Fleet, rng: random.Random, deadline: float) -> None:
    """While tasks are still waiting in the queue, SIGKILL a random worker every 1-2 s
    (counted from the previous kill) and start a new one in its place."""
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)

    def next_step() -> str | None:
        fleet.check_alive()
        if queue_stats(app).ready == 0:
            return "stop"
        return "kill" if time.monotonic() >= next_kill else None

    while time.monotonic() < deadline:
        if wait_until(next_step, deadline - time.monotonic(), "the next kill") == "stop":
            return
        kill_time = time.monotonic()
        fleet.kill_and_replace(rng.randrange(WORKERS))
        next_kill = kill_time + rng.uniform(*KILL_EVERY)


def settle(
    app: Celeriac, fleet: Fleet, expected: dict[str, int], deadline: float
) -> tuple[set[str], dict[str, str]]:
    """Wait until the queue has nothing ready, delayed or leased and every task succeeded
    or was dead-lettered; return (succeeded ids, dead letters' reasons by id) as far as
    they got by the deadline: the checker says what is missing."""
    backend = app.backend
    assert backend is not None
    succeeded: set[str] = set()
    dead: dict[str, str] = {}

    def settled() -> bool:
        fleet.check_alive()
        stats = queue_stats(app)
        if stats.ready or stats.leased or stats.delayed:
            return False
        dead.update({d.id: d.reason for d in app.broker.dead_letters(QUEUE, limit=len(expected))})
        for task_id, n in expected.items():
            if task_id not in succeeded and task_id not in dead:
                meta = backend.get(task_id)
                if meta is not None and meta.state == "SUCCESS":
                    assert meta.result == n, f"{task_id}: result {meta.result!r}, expected {n}"
                    succeeded.add(task_id)
        return len(succeeded) + len(dead.keys() - succeeded) >= len(expected)

    with contextlib.suppress(AssertionError):  # a timeout; not WorkerDied
        wait_until(settled, max(1.0, deadline - time.monotonic()), "every task to finish")
    return succeeded, dead


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    """Things to undo at teardown, last first: kill every worker, then delete keys."""
    undo: list[Callable[[], None]] = []
    try:
        yield undo
    finally:
        for step in reversed(undo):
            step()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("broker_kind", ["sqlite", "redis", "postgres", "amqp"])
def test_sigkilled_workers_lose_nothing(
    tmp_path: Path, broker_kind: str, cleanup: list[Callable[[], None]]
) -> None:
    seed = int(os.environ.get("CELERIAC_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"\nworker-kill chaos: broker={broker_kind} seed={seed}")
    project = make_project(tmp_path, broker_kind)
    cleanup.append(project.delete_keys)
    fleet = Fleet(project, tmp_path)
    cleanup.append(fleet.kill_all)
    app = Celeriac(broker=project.broker_url, set_as_current=False, **project.settings)
    try:
        began = time.monotonic()
        fleet.start()
        name = f"{project.package}.tasks.work"
        results = app.send_many([(name, [n, rng.randint(*TASK_MS)], {}) for n in range(TASKS)])
        expected = {r.id: n for n, r in enumerate(results)}
        assert len(expected) == TASKS, "task ids must be unique"
        sent_at = time.monotonic()
        deadline = sent_at + RUN_DEADLINE

        run_chaos(app, fleet, rng, deadline)
        chaos_seconds = time.monotonic() - sent_at
        # The survivors run what is left, and what the dead held once its lease ends.
        succeeded, dead = settle(app, fleet, expected, deadline)
        settled_seconds = time.monotonic() - sent_at
        fleet.check_alive()
        stats = queue_stats(app)
        run_lines = project.run_lines()
        verdict = check(
            sent=set(expected),
            succeeded=succeeded,
            dead=dead,
            run_lines=run_lines,
            killed=fleet.killed,
            max_lease_expiries=MAX_LEASE_EXPIRIES,
        )
        line = summary(broker_kind, TASKS, len(fleet.killed), verdict)
        print(line)
        print(
            f"worker-kill chaos: kills for {chaos_seconds:.1f}s, all settled"
            f" {settled_seconds:.1f}s after the send, {time.monotonic() - began:.1f}s in all;"
            f" {sum(x.endswith(' start') for x in run_lines)} runs"
        )
        for task_id, pids in sorted(verdict.unexplained.items())[:10]:
            print(f"  unexplained duplicate {task_id}: runs in {pids}, killed {fleet.killed}")
        context = f"{line}; seed={seed}"
        assert not verdict.lost, f"{context}; lost e.g. {sorted(verdict.lost)[:5]}"
        assert not verdict.unexpected, f"{context}; e.g. {sorted(verdict.unexpected)[:5]}"
        assert not verdict.unexplained, (
            f"{context}; duplicates no kill explains: {sorted(verdict.unexplained.items())[:5]}"
        )
        assert not verdict.malformed, f"{context}; malformed run lines {verdict.malformed[:5]}"
        assert (stats.ready, stats.delayed, stats.leased) == (0, 0, 0), f"{context}; {stats}"
        assert stats.dead == len(verdict.dead_lettered), (
            f"{context}; {stats.dead} dead letters, {len(verdict.dead_lettered)} explained: {dead}"
        )
        assert fleet.killed, f"{context}; all done before the first kill: make the run longer"
    except Exception:
        fleet.dump()
        raise
    finally:
        app.close()
