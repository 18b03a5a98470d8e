"""`CELERY_RESULT_BACKEND = "django-db"`: task states and results in Django's database,
with an admin page (Celeriac > Task results). Expired results are deleted by the beat's
daily `celeriac.backend_cleanup` entry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ...backends.base import ResultBackend, TaskMeta
from ...envelope import dumps, loads


def _json(value: Any) -> Any:
    """As the other backends store it: through Celeriac's JSON (datetime, Decimal, UUID
    become strings), so Django's JSONField can hold it."""
    return loads(dumps(value))


class DjangoBackend(ResultBackend):
    def store(self, metas: Sequence[TaskMeta]) -> None:
        from django.db import transaction

        from .models import TaskResult

        now = time.time()
        with transaction.atomic():
            for m in metas:
                TaskResult.objects.update_or_create(
                    task_id=m.task_id,
                    defaults={
                        "state": m.state,
                        "task": m.task,
                        "result": _json(m.result),
                        "traceback": m.traceback,
                        "info": _json(m.info),
                        "date_done": m.date_done,
                        "expires_at": now + self.expires if m.ready else None,
                    },
                )

    def get(self, task_id: str) -> TaskMeta | None:
        found = self.get_many([task_id])
        return found[0]

    def get_many(self, task_ids: Sequence[str]) -> list[TaskMeta | None]:
        from django.db.models import Q

        from .models import TaskResult

        live = Q(expires_at__isnull=True) | Q(expires_at__gt=time.time())
        rows = {r.task_id: r for r in TaskResult.objects.filter(live, task_id__in=task_ids)}
        return [
            TaskMeta(r.task_id, r.state, r.task, r.result, r.traceback, r.info, r.date_done)
            if (r := rows.get(i)) is not None
            else None
            for i in task_ids
        ]

    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        from .models import GroupRecord

        GroupRecord.objects.update_or_create(
            group_id=group_id,
            defaults={"members": list(member_ids), "expires_at": time.time() + self.expires},
        )

    def get_group(self, group_id: str) -> list[str] | None:
        from .models import GroupRecord

        record = GroupRecord.objects.filter(group_id=group_id, expires_at__gt=time.time()).first()
        return None if record is None else list(record.members)

    def chord_done(self, group_id: str, member_id: str) -> int:
        from django.db import transaction

        from .models import ChordMember

        with transaction.atomic():
            ChordMember.objects.get_or_create(
                group_id=group_id,
                member_id=member_id,
                defaults={"expires_at": time.time() + self.expires},
            )
            return int(ChordMember.objects.filter(group_id=group_id).count())

    def forget(self, task_id: str) -> None:
        from .models import TaskResult

        TaskResult.objects.filter(task_id=task_id).delete()

    def cleanup(self) -> int:
        from .models import ChordMember, GroupRecord, TaskResult

        now = time.time()
        GroupRecord.objects.filter(expires_at__lte=now).delete()
        ChordMember.objects.filter(expires_at__lte=now).delete()
        deleted, _ = TaskResult.objects.filter(expires_at__lte=now).delete()
        return int(deleted)
