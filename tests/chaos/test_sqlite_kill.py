"""SQLite crash safety with real processes (RELIABILITY.md, test 9).

A publisher process publishes batches in a loop and reports each id only after `publish()`
returned; a consumer process fetches and acks in a loop and reports each id only after
`ack()` returned True. Both are killed with SIGKILL at random moments, round after round,
and restarted. Afterwards the database must pass `PRAGMA integrity_check`, and every id the
publisher reported must have been acked by a consumer or still be in the broker: 0 lost.

A consumer killed after `ack()` committed but before it wrote so cannot report its last
batch. So it writes the batch it is about to ack first ("T" lines), then the outcome ("A"
lines and a "D" line): an id is "in doubt" only if it is in the one batch a killed consumer
had started to ack and had not reported, and only such an id may be neither reported acked
nor left in the broker.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from celeriac.brokers.sqlite import SqliteBroker

ROUNDS = 8
LEASE = 0.5  # the consumers' lease

# Output goes straight to a file with os.write, one write per batch, so a line that is in
# the file was written whole before the process died; a kill mid-line leaves a line without
# its newline, which the reader ignores.
PUBLISHER = """
import os, random, sys, time
from celeriac.brokers import Outgoing, from_url

url, queue, prefix, seed, ready = sys.argv[1:6]
broker = from_url(url)
rng = random.Random(seed)
open(ready, "w").close()
n = 0
while True:
    batch = []
    for _ in range(rng.randint(1, 20)):
        n += 1
        mid = f"{prefix}-{n:08d}"
        batch.append(Outgoing(mid, queue, mid.encode(), priority=rng.randint(0, 9)))
    broker.publish(batch)
    os.write(1, "".join(m.id + "\\n" for m in batch).encode())
    time.sleep(rng.uniform(0, 0.004))  # about the pace one consumer keeps up with
"""

CONSUMER = """
import os, random, sys, time
from celeriac.brokers import from_url

url, queue, seed, lease, ready = sys.argv[1:6]
broker = from_url(url, max_lease_expiries=1_000_000)
rng = random.Random(seed)
open(ready, "w").close()
while True:
    deliveries = broker.fetch([queue], rng.randint(1, 25), float(lease))
    if not deliveries:
        time.sleep(0.002)
        continue
    for d in deliveries:
        assert d.body == d.id.encode(), d
    if rng.random() < 0.2:
        time.sleep(0.01)  # "work": leave a window to be killed while holding leases
    os.write(1, "".join(f"T {d.id}\\n" for d in deliveries).encode())
    acked = broker.ack(deliveries)
    lines = [f"A {d.id} {d.attempt}\\n" for d, ok in zip(deliveries, acked) if ok]
    os.write(1, "".join([*lines, "D\\n"]).encode())
"""


@dataclass
class Child:
    """One incarnation of a child process; its stdout goes to `out`."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    ready: Path
    files: list[IO[bytes]] = field(default_factory=list)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the child has imported Celeriac and opened the database."""
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start:\n{self.stderr()}")
            time.sleep(0.005)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited by itself with {self.proc.returncode}:\n{self.stderr()}"
            )
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for f in self.files:
            f.close()

    def lines(self) -> list[str]:
        data = self.out.read_text()
        complete, _, _partial = data.rpartition("\n")
        return complete.splitlines()


def start(name: str, script: Path, args: list[str], tmp_path: Path) -> Child:
    out, err, ready = (tmp_path / f"{name}.{ext}" for ext in ("out", "err", "ready"))
    stdout, stderr = out.open("wb"), err.open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, str(ready)],
        stdout=stdout,
        stderr=stderr,
        cwd=tmp_path,
    )
    return Child(name, proc, out, err, ready, [stdout, stderr])


def run_rounds(tmp_path: Path, url: str, queue: str, seed: int) -> list[Child]:
    """Start a publisher and a consumer each round and SIGKILL each at its own random
    moment (mid-publish, mid-fetch, mid-ack, mid-write); return every incarnation."""
    rng = random.Random(seed)
    publisher_py, consumer_py = tmp_path / "publisher.py", tmp_path / "consumer.py"
    publisher_py.write_text(textwrap.dedent(PUBLISHER))
    consumer_py.write_text(textwrap.dedent(CONSUMER))
    children: list[Child] = []
    running: list[Child] = []
    try:
        for r in range(ROUNDS):
            running = [
                start(f"pub-{r}", publisher_py, [url, queue, f"p{r}", str(seed + r)], tmp_path),
                start(f"con-{r}", consumer_py, [url, queue, str(seed - r), str(LEASE)], tmp_path),
            ]
            children += running
            for child in running:  # kill moments count from when both are at work
                child.wait_ready()
            started = time.monotonic()
            for moment, index in sorted((rng.uniform(0.2, 0.5), i) for i in range(2)):
                time.sleep(max(0.0, started + moment - time.monotonic()))
                running[index].kill()
            running = []
    finally:
        for child in running:  # something failed: stop what is left, by pid
            child.proc.kill()
            child.proc.wait()
            for f in child.files:
                f.close()
    return children


@dataclass
class Reports:
    """What the children said, read from their output files."""

    published: list[str] = field(default_factory=list)
    acked: Counter[str] = field(default_factory=Counter)
    in_doubt: set[str] = field(default_factory=set)  # killed while acking these
    duplicated: int = 0  # deliveries before the one that was acked


def read_reports(children: list[Child]) -> Reports:
    reports = Reports()
    for child in children:
        pending: list[str] = []
        for line in child.lines():
            kind, *fields = line.split()
            if child.name.startswith("pub"):
                reports.published.append(line)
            elif kind == "T":
                pending.append(fields[0])
            elif kind == "A":
                reports.acked[fields[0]] += 1
                reports.duplicated += int(fields[1]) - 1
            else:  # "D": the outcome of the batch is reported
                pending = []
        assert len(pending) <= 25, "only the last batch of a consumer can be in doubt"
        reports.in_doubt.update(pending)
    return reports


def drain(url: str, queue: str) -> tuple[Counter[str], int, int]:
    """Fetch and ack what is left, an hour "later" so that every lease the killed consumers
    held has run out: (deliveries per id, earlier deliveries, dead letters)."""
    drainer = SqliteBroker(url, clock=lambda: time.time() + 3600, max_lease_expiries=1_000_000)
    remaining: Counter[str] = Counter()
    duplicated = 0
    try:
        while batch := drainer.fetch([queue], 1000, 60.0):
            assert drainer.ack(batch) == [True] * len(batch)
            for d in batch:
                assert d.body == d.id.encode()
                remaining[d.id] += 1
                duplicated += d.attempt - 1
        assert queue not in drainer.stats()
        assert drainer.integrity_check() == "ok"
        return remaining, duplicated, len(drainer.dead_letters(queue))
    finally:
        drainer.close()


@pytest.mark.timeout(60)
def test_sigkill_publisher_and_consumer_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chaos.db"
    queue = f"chaos-{uuid.uuid4().hex}"
    seed = random.randrange(1 << 30)
    print(f"\nsqlite kill test: seed {seed}")
    SqliteBroker(url).close()  # create the tables and WAL mode before the children start

    children = run_rounds(tmp_path, url, queue, seed)

    broker = SqliteBroker(url)
    assert broker.integrity_check() == "ok"
    broker.close()
    reports = read_reports(children)
    published, acked = reports.published, reports.acked
    remaining, redelivered, dead = drain(url, queue)
    duplicated = reports.duplicated + redelivered

    reported = set(published)
    lost = reported - acked.keys() - remaining.keys() - reports.in_doubt
    unreported = (acked.keys() | remaining.keys()) - reported  # killed before it could say
    print(
        f"sqlite kill test: {ROUNDS} rounds, published {len(reported)}"
        f" (+{len(unreported)} unreported), acked {sum(acked.values())}"
        f" (+{len(reports.in_doubt - remaining.keys())} killed before reporting),"
        f" left in broker {len(remaining)}, lost {len(lost)},"
        f" duplicated deliveries {duplicated}, dead letters {dead}"
    )
    assert len(published) == len(reported), "the publisher reported an id twice"
    assert not lost, f"{len(lost)} published messages lost, e.g. {sorted(lost)[:5]}"
    assert max(acked.values(), default=1) == 1, "a message was acked twice"
    assert not acked.keys() & remaining.keys(), "an acked message was still in the broker"
    assert all(mid.startswith("p") for mid in unreported)
    assert dead == 0
    assert reported and acked, "the children did no work: is the machine very slow?"
