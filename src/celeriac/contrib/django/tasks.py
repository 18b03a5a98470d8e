"""The integration's tasks (found by `app.autodiscover_tasks()` in this Django app)."""

from __future__ import annotations

import contextlib
from typing import Any

from ...task import shared_task
from .mail import DEFAULT_REAL_BACKEND, message_from_dict


@shared_task(
    name="celeriac.send_email", max_retries=5, autoretry_for=(OSError,), retry_backoff=True
)
def send_email(message: dict[str, Any]) -> int:
    """Send one email with the real backend (`CELERIAC_EMAIL_BACKEND`)."""
    from django.conf import settings
    from django.core.mail import get_connection

    backend = getattr(settings, "CELERIAC_EMAIL_BACKEND", DEFAULT_REAL_BACKEND)
    return int(get_connection(backend).send_messages([message_from_dict(message)]) or 0)


# Django's own Tasks framework: the backend lives in tasks_backend.py (it needs Django 6 or
# the django-tasks backport); it is named here, where TASKS settings look for it.
# Without either, ImportError: the rest of the integration works without it.
with contextlib.suppress(ImportError):
    from .tasks_backend import CeleriacBackend  # noqa: F401 - the TASKS setting names it here
