"""`celeriac worker --processes N`: run N worker processes and keep them running.

Each child is a full `celeriac worker` (its own loop, pool and leases). A child that exits
unexpectedly is started again after a pause that grows while it keeps failing; a child that
exits with 2 (a configuration error, which a restart cannot mend) stops them all.

Signals: children ignore SIGINT (`CELERIAC_SUPERVISED`), so a Ctrl-C from the terminal,
which reaches the whole process group, is acted on once: the supervisor sends each child
SIGTERM for SIGTERM or SIGINT alike. A second signal is passed on again (hand back at
once). The supervisor exits when every child has, with 0 if every child exited 0.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("celeriac.worker")

MAX_RESTART_PAUSE = 10.0
CONFIGURATION_ERROR = 2  # the exit code of `celeriac` for an error a restart cannot mend
SUPERVISED_ENV = "CELERIAC_SUPERVISED"


class Supervisor:
    def __init__(self, command: Sequence[str], processes: int) -> None:
        self.command = list(command)
        self.processes = processes
        self.children: list[subprocess.Popen[bytes] | None] = [None] * processes
        self.failures = [0] * processes
        self.stopping = False

    def _start(self, slot: int) -> None:
        env = {**os.environ, SUPERVISED_ENV: "1"}
        self.children[slot] = subprocess.Popen(self.command, env=env)
        log.info("started worker process %d (pid %d)", slot, self.children[slot].pid)  # type: ignore[union-attr]

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        restart_at = [0.0] * self.processes
        for slot in range(self.processes):
            self._start(slot)
        while not self.stopping:
            time.sleep(0.2)
            for slot, child in enumerate(self.children):
                if child is None or self.stopping:
                    continue
                code = child.poll()
                if code is None:
                    continue
                if code == CONFIGURATION_ERROR:
                    log.error("worker process %d has a configuration error; stopping", slot)
                    self._signal(signal.SIGTERM, None)
                    break
                if restart_at[slot] == 0.0:
                    self.failures[slot] += 1
                    pause = min(MAX_RESTART_PAUSE, 0.5 * 2 ** (self.failures[slot] - 1))
                    log.error(
                        "worker process %d exited with %s; restarting in %.1fs", slot, code, pause
                    )
                    restart_at[slot] = time.monotonic() + pause
                elif time.monotonic() >= restart_at[slot]:
                    restart_at[slot] = 0.0
                    self._start(slot)
        codes = [child.wait() for child in self.children if child is not None]
        if CONFIGURATION_ERROR in codes:
            return CONFIGURATION_ERROR
        return 0 if all(code == 0 for code in codes) else 1
