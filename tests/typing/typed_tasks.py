"""Checked by mypy in test_types.py, never run: `Task[P, R]` types `delay()` and `get()`."""

from __future__ import annotations

from typing import Any, assert_type

from celeriac import AsyncResult, Celeriac, shared_task

app = Celeriac("typing", broker="memory://")


@shared_task
def add(a: int, b: int) -> int:
    return a + b


@shared_task(bind=True, max_retries=3)
async def fetch_rate(self: Any, currency: str) -> float:
    return 1.0


@app.task(queue="mail")
def send_email(order_id: int, user_email: str) -> None:
    return None


assert_type(add.delay(1, 2), AsyncResult[int])
assert_type(add.delay(1, 2).get(), int)
assert_type(fetch_rate.delay("EUR").get(timeout=5), float)
assert_type(send_email.delay(42, "a@example.com"), AsyncResult[None])

add.delay("x", 1)  # type: ignore[arg-type]
add.delay(1)  # type: ignore[call-arg]
fetch_rate.delay(1)  # type: ignore[arg-type]
send_email.delay(42, user_email=3)  # type: ignore[arg-type]
assert_type(add.delay_many([(1, 2), (3, 4)]), list[AsyncResult[int]])
