"""`@shared_task(atomic=True)`: exactly-once database effects.

The task runs inside `transaction.atomic()`, which first takes the message's done-mark
(a row keyed by the message id). If the mark exists, the message already ran and
committed — this is a redelivery — so the task is not run again and its stored result is
returned. Otherwise the task's writes and the new mark commit together, or neither does.
Delivery stays at-least-once; the database effects happen once.
"""

from __future__ import annotations

from typing import Any

from ...exceptions import Retry
from ...task import Request, Task, current_request
from ...worker.executors import Outcome, failed_outcome, retry_outcome


def run_atomic(task: Task[Any, Any], request: Request) -> Outcome:
    from django.db import transaction

    from .models import DoneMark

    token = current_request.set(request)
    try:
        with transaction.atomic():
            mark, created = DoneMark.objects.select_for_update().get_or_create(
                id=request.id, defaults={"task": request.task}
            )
            if not created:  # ran and committed before: its effects are there already
                return Outcome("success", mark.result)
            value = task(*request.args, **request.kwargs)
            mark.result = value
            mark.save(update_fields=["result"])
        return Outcome("success", value)
    except Retry as exc:
        return retry_outcome(exc)
    except Exception as exc:
        return failed_outcome(task, request, exc)
    finally:
        current_request.reset(token)
