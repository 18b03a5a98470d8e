"""Client side of one benchmark phase, run in the system's own interpreter (cwd bench/):

    python -m peers_tasks MODULE enqueue|bulk|roundtrip N

Prints one JSON object: {"version", "seconds"} for the enqueue phases (time of the sends
alone, connecting excluded), {"version", "latencies"} (seconds each) for N sequential
round trips. The first round trip waits for the worker to start; it and WARMUP more are
not counted.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import time
from importlib import metadata
from types import ModuleType
from typing import Any

WARMUP = 5
FIRST_TIMEOUT = 90.0
TIMEOUT = 30.0


def run_sync(mod: ModuleType, phase: str, n: int) -> dict[str, Any]:
    if hasattr(mod, "connect"):
        mod.connect()
    started = time.perf_counter()
    if phase == "enqueue":
        for _ in range(n):
            mod.send()
    elif phase == "bulk":
        mod.send_many(n)
    else:
        mod.wait(mod.send(), FIRST_TIMEOUT)
        latencies = []
        for i in range(WARMUP + n):
            started = time.perf_counter()
            mod.wait(mod.send(), TIMEOUT)
            if i >= WARMUP:
                latencies.append(time.perf_counter() - started)
        return {"latencies": latencies}
    return {"seconds": time.perf_counter() - started}


async def run_async(mod: ModuleType, phase: str, n: int) -> dict[str, Any]:
    if hasattr(mod, "connect"):
        await mod.connect()
    try:
        started = time.perf_counter()
        if phase == "enqueue":
            for _ in range(n):
                await mod.send()
        elif phase == "bulk":
            await mod.send_many(n)
        else:
            await mod.wait(await mod.send(), FIRST_TIMEOUT)
            latencies = []
            for i in range(WARMUP + n):
                started = time.perf_counter()
                await mod.wait(await mod.send(), TIMEOUT)
                if i >= WARMUP:
                    latencies.append(time.perf_counter() - started)
            return {"latencies": latencies}
        return {"seconds": time.perf_counter() - started}
    finally:
        if hasattr(mod, "close"):
            await mod.close()


def main() -> None:
    name, phase, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if phase not in ("enqueue", "bulk", "roundtrip"):
        raise SystemExit(f"unknown phase {phase!r}")
    mod = importlib.import_module(f"peers_tasks.{name}")
    if inspect.iscoroutinefunction(mod.send):
        result = asyncio.run(run_async(mod, phase, n))
    else:
        result = run_sync(mod, phase, n)
    result["version"] = metadata.version(mod.DIST)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
