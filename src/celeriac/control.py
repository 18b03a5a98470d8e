"""`app.control`: acting on tasks already sent, by id, as Celery's `app.control` does.

Revocations are kept in the broker (not in each worker's memory, as in Celery), so they
hold across every worker and survive worker restarts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import states
from .backends.base import TaskMeta

if TYPE_CHECKING:
    from .app import Celeriac

REVOKED_ERROR = {"type": "TaskRevokedError", "message": "revoked"}


class Control:
    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def revoke(
        self, task_id: str | Sequence[str], terminate: bool = False, signal: str | None = None
    ) -> None:
        """Revoke tasks: a queued or delayed one never runs; one a worker holds is skipped,
        or, with `terminate=True`, stopped if it is running (without it, a running task
        finishes). `signal` is accepted for Celery code and ignored: a process-pool child
        is always killed, an async task cancelled (see docs/tasks.md for threads)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        deleted = self.app.broker.revoke(ids, terminate)
        # Messages a worker holds get their REVOKED state from it, when it skips or stops
        # them; the ones deleted from the queue get theirs here.
        backend = self.app.backend
        if backend is not None and deleted:
            now = time.time()
            backend.store(
                [TaskMeta(i, states.REVOKED, None, REVOKED_ERROR, date_done=now) for i in deleted]
            )
