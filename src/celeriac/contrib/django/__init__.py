"""Celeriac for Django: add `"celeriac.contrib.django"` to `INSTALLED_APPS`.

    apps.py       the Django app (label `celeriac`): its tables are the outbox and the
                  done-marks of atomic tasks
    outbox.py     `CELERY_TASK_OUTBOX`: messages sent inside `transaction.atomic()` are
                  written to a table in the same transaction and published after commit
    atomic.py     `@shared_task(atomic=True)`: the task's writes and its done-mark commit
                  together, so a redelivered message does not repeat them
    mail.py       `EMAIL_BACKEND = "celeriac.contrib.django.mail.CeleriacEmailBackend"`
    tasks.py      the integration's own tasks (sending an email)

The worker also closes stale database connections around every task, as Django's request
cycle does (`connections.task_scope`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


def django_ready() -> bool:
    """Is Django imported, configured and set up in this process?"""
    if "django.apps" not in sys.modules:
        return False
    from django.apps import apps
    from django.conf import settings

    return bool(settings.configured and apps.ready)


@contextlib.contextmanager
def task_scope() -> Iterator[None]:
    """Around a task in a worker: drop database connections that are broken or past
    CONN_MAX_AGE, before and after, as Django does around a request."""
    if not django_ready():
        yield
        return
    from django.db import close_old_connections

    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()
