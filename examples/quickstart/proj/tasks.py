"""Tasks, declared the way a Celery user does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celeriac import shared_task


@shared_task
def send_order_confirmation_email(order_id: int, user_email: str) -> str:
    time.sleep(0.2)  # the slow part a web request should not wait for
    return f"order {order_id} confirmed to {user_email}"


@shared_task(bind=True, max_retries=3)
async def fetch_rate(self: Any, currency: str) -> float:
    if self.request.retries == 0:
        raise self.retry(countdown=0.5)  # the rate service hiccups once
    await asyncio.sleep(0.1)
    return {"EUR": 1.08, "GBP": 1.27}[currency]


@shared_task(bind=True)
def export_orders(self: Any, count: int) -> str:
    for done in range(1, count + 1):
        time.sleep(0.05)
        self.update_progress(done, count, "orders exported")
    return f"orders-{count}.xlsx"
