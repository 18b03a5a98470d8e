"""Waiting for something to become true, with a deadline: the suite's only way to wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy and return that; past `timeout`
    seconds raise AssertionError naming `what`. Polls fast at first, then every 20 ms."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} ({value!r})")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
