"""Celeriac and its peers on one local Redis, the same task everywhere (INCR of a counter).

    .venv/bin/pip install -e '.[bench]'       # the peers; arq gets bench/.venvs/arq by itself
    .venv/bin/python bench/peers.py [--tasks 2000] [--round-trips 200]
                                    [--only celeriac,celery-threads] [--redis-url URL]

Per system, on a FLUSHDB'd dedicated db (default redis://127.0.0.1:6379/15; db 0 is refused):
enqueue N one by one with no worker running, start one worker process and time the drain
from the first task done (the counter moves) until the counter reaches N; the same with the
system's bulk API (else one by one again) and one worker process per core; then sequential
delay-to-result round trips with one worker. Prints one Markdown table. bench/README.md says
what each column means and how concurrency is set; task modules are in bench/peers_tasks/.
celeriac-amqp and celery-amqp put their broker on RabbitMQ (PEERS_AMQP_URL, default
amqp://guest:guest@127.0.0.1:5672//); their counter and results stay on this Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ARQ_VENV = HERE / ".venvs" / "arq"
ARQ_REQUIREMENT = "arq>=0.26"  # caps redis-py < 6, which taskiq-redis (>= 8) cannot share
KEY = "peers:counter"  # the same key as peers_tasks.KEY
SLOTS = 8  # threads or async slots per worker process, for every system that has them
POLL = 0.002  # seconds between reads of the counter during a drain
STARTUP = 120.0  # seconds a worker may take to run its first task
STALL = 30.0  # seconds without progress after which a drain is given up

Command = Callable[[int, str], list[list[str]]]  # (processes, url) -> one argv per OS process


def celeriac(module: str) -> Command:
    def command(procs: int, url: str) -> list[list[str]]:
        argv = [str(BIN / "celeriac"), "-A", f"peers_tasks.{module}", "worker"]
        argv += ["--loglevel=warning", "--concurrency", str(SLOTS)]
        return [argv + (["--processes", str(procs)] if procs > 1 else [])]

    return command


def celery_prefork(module: str) -> Command:
    def command(procs: int, url: str) -> list[list[str]]:
        argv = [str(BIN / "celery"), "-A", f"peers_tasks.{module}", "worker", "-P", "prefork"]
        return [[*argv, "-c", str(procs), "--loglevel=WARNING"]]

    return command


def celery_threads(procs: int, url: str) -> list[list[str]]:
    argv = [str(BIN / "celery"), "-A", "peers_tasks.celery_tasks", "worker", "-P", "threads"]
    argv += ["-c", str(SLOTS), "--loglevel=WARNING"]
    return [[*argv, "-n", f"peers{i}@%h"] for i in range(procs)]


def dramatiq(procs: int, url: str) -> list[list[str]]:
    argv = [str(BIN / "dramatiq"), "peers_tasks.dramatiq_tasks"]
    return [[*argv, "-p", str(procs), "-t", str(SLOTS)]]


def rq(procs: int, url: str) -> list[list[str]]:
    return [[str(BIN / "rq"), "worker", "--url", url, "--logging_level", "WARNING"]] * procs


def arq(procs: int, url: str) -> list[list[str]]:
    return [[str(ARQ_VENV / "bin" / "arq"), "peers_tasks.arq_tasks.WorkerSettings"]] * procs


def taskiq(procs: int, url: str) -> list[list[str]]:
    argv = [str(BIN / "taskiq"), "worker", "peers_tasks.taskiq_tasks:broker", "-w", str(procs)]
    return [[*argv, "--max-async-tasks", str(SLOTS), "--log-level", "WARNING"]]


def streaq(procs: int, url: str) -> list[list[str]]:
    return [[str(BIN / "streaq"), "run", "peers_tasks.streaq_tasks:worker", "-w", str(procs)]]


@dataclass
class System:
    name: str
    module: str  # in peers_tasks/
    command: Command
    bulk: bool = False  # has a bulk / pipelined enqueue API
    python: Path = BIN / "python"


SYSTEMS = [
    System("celeriac-threads", "celeriac_threads", celeriac("celeriac_threads"), bulk=True),
    System("celeriac-async", "celeriac_async", celeriac("celeriac_async"), bulk=True),
    # The same on the PostgreSQL broker (PEERS_POSTGRES_URL), to compare brokers.
    System("celeriac-postgres", "celeriac_postgres", celeriac("celeriac_postgres"), bulk=True),
    # And on RabbitMQ (PEERS_AMQP_URL), beside Celery's own RabbitMQ broker (celery-amqp).
    System("celeriac-amqp", "celeriac_amqp", celeriac("celeriac_amqp"), bulk=True),
    System("celery-prefork", "celery_tasks", celery_prefork("celery_tasks")),
    System("celery-threads", "celery_tasks", celery_threads),
    System("celery-amqp", "celery_amqp_tasks", celery_prefork("celery_amqp_tasks")),
    System("dramatiq", "dramatiq_tasks", dramatiq),
    System("rq", "rq_tasks", rq, bulk=True),
    System("arq", "arq_tasks", arq, python=ARQ_VENV / "bin" / "python"),
    System("taskiq", "taskiq_tasks", taskiq),
    System("streaq", "streaq_tasks", streaq, bulk=True),
]


@dataclass
class Row:
    name: str
    version: str = ""
    enqueue: float | None = None
    bulk: float | None = None
    drain1: float | None = None
    drain_cores: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_mb: float | None = None
    error: str = ""


@dataclass
class Bench:
    url: str
    tasks: int
    round_trips: int
    cores: int
    logs: Path
    db: redis.Redis = field(init=False)
    env: dict[str, str] = field(init=False)
    log_of: dict[int, Path] = field(default_factory=dict)  # worker pid -> its output

    def __post_init__(self) -> None:
        self.db = redis.Redis.from_url(self.url)
        self.env = {**os.environ, "PEERS_REDIS_URL": self.url, "PYTHONPATH": str(HERE)}

    def failed(self, what: str, proc: subprocess.Popen[bytes]) -> RuntimeError:
        return RuntimeError(f"{what}; worker said: {last_line(self.log_of[proc.pid].read_text())}")

    def client(self, system: System, phase: str, n: int) -> dict[str, Any]:
        """Run one client phase in the system's interpreter; its JSON answer."""
        argv = [str(system.python), "-m", "peers_tasks", system.module, phase, str(n)]
        done = subprocess.run(
            argv, cwd=HERE, env=self.env, capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{phase} client: {last_line(done.stderr)}")
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer

    @contextmanager
    def workers(self, system: System, procs: int) -> Iterator[list[subprocess.Popen[bytes]]]:
        started: list[subprocess.Popen[bytes]] = []
        try:
            for i, argv in enumerate(system.command(procs, self.url)):
                log = self.logs / f"{system.name}-{procs}p-{i}.log"
                with log.open("ab") as out:
                    started.append(
                        subprocess.Popen(
                            argv,
                            cwd=HERE,
                            env=self.env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                self.log_of[started[-1].pid] = log
            yield started
        finally:
            stop(started)

    def drain(self, system: System, procs: int) -> tuple[float, float]:
        """N tasks wait in the queue: start the workers and return (tasks/s from the first
        task done until the counter reaches N, peak RSS of the worker trees in MB)."""
        n, peak, first = self.tasks, 0, None
        with self.workers(system, procs) as started:
            progress, last = time.perf_counter(), 0
            next_rss = 0.0
            while True:
                count, now = int(self.db.get(KEY) or 0), time.perf_counter()
                if first is None and count:
                    first = (now, count)
                if count >= n:
                    break
                if now >= next_rss:
                    peak, next_rss = max(peak, tree_rss(started)), now + 0.1
                if count != last:
                    progress, last = now, count
                elif now - progress > (STALL if count else STARTUP):
                    raise self.failed(f"drain stalled at {count}/{n} tasks", started[0])
                for proc in started:
                    if proc.poll() is not None:
                        raise self.failed(f"worker exited with {proc.returncode}", proc)
                time.sleep(POLL)
            peak = max(peak, tree_rss(started))
        assert first is not None
        if first[1] >= n:
            raise RuntimeError("drain done before the first poll: raise --tasks")
        return (n - first[1]) / (now - first[0]), peak / 2**20

    def run(self, system: System) -> Row:
        row, n = Row(system.name), self.tasks
        try:
            if system.python.parent.parent == ARQ_VENV:
                make_arq_venv()
            self.db.flushdb()
            answer = self.client(system, "enqueue", n)
            row.version, row.enqueue = answer["version"], n / answer["seconds"]
            note(f"enqueue {row.enqueue:,.0f}/s")
            row.drain1, row.rss_mb = self.drain(system, 1)
            note(f"drain with 1 process {row.drain1:,.0f}/s, {row.rss_mb:.0f} MB")
            self.db.delete(KEY)
            answer = self.client(system, "bulk" if system.bulk else "enqueue", n)
            row.bulk = n / answer["seconds"] if system.bulk else None
            row.drain_cores, _ = self.drain(system, self.cores)
            note(f"drain with {self.cores} processes {row.drain_cores:,.0f}/s")
            with self.workers(system, 1):
                latencies = self.client(system, "roundtrip", self.round_trips)["latencies"]
            row.p50_ms = statistics.median(latencies) * 1000
            row.p99_ms = statistics.quantiles(latencies, n=100, method="inclusive")[98] * 1000
            note(f"round trip p50 {row.p50_ms:.1f} ms")
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
            note(f"error: {row.error}")
        finally:
            self.db.flushdb()
        return row


def note(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def stop(started: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker we started, then every process left of its tree (as systemd
    would; some CLIs leave their extra processes to the terminal's Ctrl-C), then SIGKILL."""
    tree: list[psutil.Process] = []
    for proc in started:
        with suppress(psutil.NoSuchProcess):
            leader = psutil.Process(proc.pid)
            tree += [leader, *leader.children(recursive=True)]
        if proc.poll() is None:
            proc.terminate()
    for signal_all in (psutil.Process.terminate, psutil.Process.kill):
        _, tree = psutil.wait_procs(tree, timeout=3)
        for survivor in tree:
            with suppress(psutil.NoSuchProcess):
                signal_all(survivor)
    psutil.wait_procs(tree, timeout=5)
    for proc in started:
        proc.wait()


def tree_rss(started: list[subprocess.Popen[bytes]]) -> int:
    total = 0
    for proc in started:
        try:
            leader = psutil.Process(proc.pid)
            for member in [leader, *leader.children(recursive=True)]:
                total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def make_arq_venv() -> None:
    if (ARQ_VENV / "bin" / "arq").exists():
        return
    print(f"creating {ARQ_VENV} for arq (it needs redis-py < 6) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(ARQ_VENV)], check=True)
    pip = [str(ARQ_VENV / "bin" / "python"), "-m", "pip", "install", "-q", ARQ_REQUIREMENT]
    subprocess.run(pip, check=True, stdout=subprocess.DEVNULL)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def machine(db: redis.Redis, args: argparse.Namespace) -> str:
    cpu = platform.processor() or platform.machine()
    with Path("/proc/cpuinfo").open() as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if "model name" in line), cpu)
    memory = psutil.virtual_memory().total / 2**30
    redis_version = db.info("server")["redis_version"]
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: {cpu}, {os.cpu_count()} cores, "
        f"{memory:.0f} GiB, {platform.platform()}\n"
        f"Python {platform.python_version()}, Redis {redis_version}, {args.tasks} tasks per "
        f"drain, {args.round_trips} round trips, load average {os.getloadavg()[0]:.1f} at start"
    )


def table(rows: list[Row], cores: int) -> str:
    head = [
        "system", "version", "enqueue/s", "bulk enqueue/s", "drain/s 1 proc",
        f"drain/s {cores} procs", "p50 ms", "p99 ms", "RSS MB", "drain vs celeriac",
        "enqueue vs celeriac",
    ]  # fmt: skip
    ref = next((r for r in rows if r.name.startswith("celeriac") and not r.error), None)
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        if r.error:
            cells = [r.name, r.version, f"error: {r.error}"] + [""] * (len(head) - 3)
        else:
            cells = [
                r.name, r.version, num(r.enqueue), num(r.bulk), num(r.drain1),
                num(r.drain_cores), num(r.p50_ms, 1), num(r.p99_ms, 1), num(r.rss_mb),
                ratio(r.drain1, ref and ref.drain1), ratio(r.enqueue, ref and ref.enqueue),
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, ref: float | None) -> str:
    return "—" if value is None or not ref else f"{value / ref:.2f}"


def parse_args() -> argparse.Namespace:
    names = [s.name for s in SYSTEMS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per drain (default 2000)")
    parser.add_argument(
        "--round-trips", type=int, default=200, help="sequential round trips (default 200)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    db = urlsplit(args.redis_url).path.strip("/")
    if not db.isdigit() or db == "0":
        parser.error("--redis-url needs a dedicated db number other than 0: it is FLUSHDB'd")
    wanted = args.only.split(",") if args.only else names
    args.systems = [s for s in SYSTEMS if any(s.name.startswith(w) for w in wanted)]
    unknown = [w for w in wanted if not any(n.startswith(w) for n in names)]
    if unknown or not args.systems:
        parser.error(f"--only: unknown {','.join(unknown)}; choose from {','.join(names)}")
    return args


def main() -> None:
    args = parse_args()
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peers-") as logs:
        bench = Bench(args.redis_url, args.tasks, args.round_trips, cores, Path(logs))
        try:
            header, rows = machine(bench.db, args), []
        except redis.RedisError as exc:
            raise SystemExit(f"Redis at {args.redis_url}: {exc}") from None
        for system in args.systems:
            print(f"{system.name} ...", file=sys.stderr, flush=True)
            rows.append(bench.run(system))
    print(header)
    print(table(rows, cores))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
