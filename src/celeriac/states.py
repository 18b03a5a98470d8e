"""Task states, with Celery's names."""

from __future__ import annotations

PENDING = "PENDING"  # unknown to the backend: queued, or never sent, or forgotten
STARTED = "STARTED"  # running (stored when `task_track_started` is on, or on progress)
RETRY = "RETRY"  # failed and will run again
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
EXPIRED = "EXPIRED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED, EXPIRED})
ALL_STATES = frozenset({PENDING, STARTED, RETRY, *READY_STATES})
