"""The transactional outbox: `CELERY_TASK_OUTBOX = True` (or a task's `outbox=True`).

A message sent inside `transaction.atomic()` is written to the `celeriac_outbox` table in
that same transaction, and published once the transaction commits:

    commit    -> on_commit publishes it at once (and deletes its row)
    rollback  -> the row is gone with the rest: nothing is sent
    the broker is down, or the process dies after the commit
              -> the row stays; the relay (in every worker whose app has task_outbox on,
                 or `celeriac outbox-relay`) publishes it within a second of the broker
                 being back

A row published twice (a relay that died between publishing and deleting it) is stored
once: it goes out with an idempotency key made from its id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...brokers.base import Outgoing

if TYPE_CHECKING:
    from ...app import Celeriac

log = logging.getLogger("celeriac.outbox")

RELAY_BATCH = 500
RELAY_INTERVAL = 1.0  # seconds between relay rounds
DEDUP_TTL = 86400.0  # seconds an outbox row's key blocks publishing it again


def stage(app: Celeriac, messages: Sequence[Outgoing]) -> bool:
    """Inside a transaction: write the messages to the outbox and publish them after
    commit (True). Outside one, do nothing (False): the caller publishes now."""
    from django.db import transaction

    from .models import OutboxMessage

    if not transaction.get_connection().in_atomic_block:
        return False
    now = time.time()
    OutboxMessage.objects.bulk_create(
        [
            OutboxMessage(
                id=m.id,
                queue=m.queue,
                body=m.body,
                priority=m.priority,
                eta=m.eta,
                key=m.key,
                key_ttl=m.key_ttl,
                created=now,
            )
            for m in messages
        ]
    )
    ids = [m.id for m in messages]
    # robust: a broker that is down must not fail the caller's commit; the relay retries.
    transaction.on_commit(lambda: relay(app, ids), robust=True)
    return True


def relay(app: Celeriac, ids: Sequence[str] | None = None) -> int:
    """Publish committed outbox rows (these ids, or the oldest ones) and delete them;
    returns how many."""
    from django.db import connection, transaction

    from .models import OutboxMessage

    with transaction.atomic():
        rows = OutboxMessage.objects.order_by("created")
        if ids is not None:
            rows = rows.filter(id__in=list(ids))
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        batch = list(rows[:RELAY_BATCH])
        if not batch:
            return 0
        app.broker.publish(
            [
                Outgoing(
                    r.id,
                    r.queue,
                    bytes(r.body),
                    r.priority,
                    r.eta,
                    r.key or f"outbox:{r.id}",
                    r.key_ttl or DEDUP_TTL,
                )
                for r in batch
            ]
        )
        OutboxMessage.objects.filter(id__in=[r.id for r in batch]).delete()
    return len(batch)


def run_relay(app: Celeriac, stop: threading.Event) -> None:
    """Relay rounds until `stop` is set (a worker's thread, or `celeriac outbox-relay`)."""
    from django.db import close_old_connections

    log.info("outbox relay started")
    while not stop.is_set():
        try:
            close_old_connections()
            while (sent := relay(app)) and not stop.is_set():
                log.info("outbox: published %d messages", sent)
        except Exception as exc:  # the broker or the database is away: next round
            log.error("outbox relay failed, trying again: %s", exc)
        stop.wait(RELAY_INTERVAL)
