"""The README's first command: a worker runs tasks on the embedded SQLite broker.

Starts `celeriac -A proj worker`, sends tasks the way a web view would, prints their
results as they arrive, and stops the worker with SIGTERM. No server is needed.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
os.chdir(HERE)
sys.path.insert(0, str(HERE))

from proj.tasks import export_orders, fetch_rate, send_order_confirmation_email  # noqa: E402


def start_worker() -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "celeriac", "-A", "proj", "worker", "--loglevel=info"]
    print("$ celeriac -A proj worker --loglevel=info")
    worker = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()

    def relay() -> None:  # show the worker's log, and notice when it is ready
        assert worker.stderr is not None
        for line in worker.stderr:
            print("  worker | " + line.rstrip())
            if "celeriac worker ready" in line:
                ready.set()
        ready.set()

    threading.Thread(target=relay, daemon=True).start()
    if not ready.wait(30) or worker.poll() is not None:
        sys.exit("the worker did not start; see its log above")
    return worker


def main() -> None:
    for leftover in HERE.glob("celeriac.db*"):
        leftover.unlink()
    worker = start_worker()
    try:
        started = time.perf_counter()
        emails = [
            send_order_confirmation_email.delay(order_id, f"user{order_id}@example.com")
            for order_id in range(1, 6)
        ]
        print(f"sent 5 emails in {1000 * (time.perf_counter() - started):.1f} ms")
        rate = fetch_rate.delay("EUR")
        export = export_orders.delay(20)
        for result in emails:
            print("result:", result.get(timeout=30))
        print("EUR rate (async task, retried once):", rate.get(timeout=30))
        print("export:", export.get(timeout=30))
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    print(f"worker stopped with exit code {code}")
    sys.exit(code)


if __name__ == "__main__":
    main()
