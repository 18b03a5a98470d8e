"""Enqueue N no-op tasks and drain them with one worker process, on the SQLite broker.

    python bench/sqlite_throughput.py [--tasks 20000]

Prints tasks/s for: enqueue one by one (`delay()`), enqueue in one batch, and drain by a
single `celeriac worker` process, for a plain (thread pool) and an `async def` task.
Peers are compared on Redis in `bench/peers.py` (the Redis issue adds it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent


def drain(url: str, queue_size: int, env: dict[str, str]) -> float:
    """Start one worker on a full queue; return seconds from its first fetch until the
    queue is empty (process start-up is not counted)."""
    from celeriac import Celeriac

    app = Celeriac("bench-observer", broker=url, set_as_current=False)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "benchproj", "worker", "--loglevel=warning"],
        cwd=HERE,
        env=env,
    )
    try:
        started = None
        while True:
            stats = app.broker.stats().get("celeriac")
            if started is None and (stats is None or stats.ready < queue_size):
                started = time.perf_counter()
            if stats is None or stats.ready + stats.leased + stats.delayed == 0:
                assert started is not None
                return time.perf_counter() - started
            if worker.poll() is not None:
                raise SystemExit("the worker died")
            time.sleep(0.02)
    finally:
        worker.terminate()
        worker.wait(30)
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per run (default 20000)")
    args = parser.parse_args()
    n = args.tasks
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        env = {**os.environ, "CELERIAC_BROKER_URL": url}
        os.environ["CELERIAC_BROKER_URL"] = url
        from benchproj.celeriac import anoop, app, noop

        from celeriac.envelope import Envelope

        print(
            f"SQLite broker, {n} tasks, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}"
        )
        rows = []
        for task in (noop, anoop):
            started = time.perf_counter()
            for _ in range(n):
                task.delay()
            one_by_one = n / (time.perf_counter() - started)
            drained = n / drain(url, n, env)

            started = time.perf_counter()
            app.publish([Envelope(id=str(uuid.uuid4()), task=task.name) for _ in range(n)])
            batch = n / (time.perf_counter() - started)
            drain(url, n, env)
            rows.append((task.name, one_by_one, batch, drained))

        print(f"{'task':<12} {'delay()/s':>12} {'batch/s':>12} {'drain/s (1 proc)':>18}")
        for name, one, batch, drained in rows:
            print(f"{name:<12} {one:>12,.0f} {batch:>12,.0f} {drained:>18,.0f}")


if __name__ == "__main__":
    main()
