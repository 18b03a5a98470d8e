"""The admin page of task results (with `CELERY_RESULT_BACKEND = "django-db"`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin

from .models import TaskResult


@admin.register(TaskResult)
class TaskResultAdmin(admin.ModelAdmin):
    list_display = ("task_id", "task", "state", "done")
    list_filter = ("state", "task")
    search_fields = ("task_id", "task")
    readonly_fields = ("task_id", "task", "state", "result", "traceback", "info", "done")
    exclude = ("date_done", "expires_at")

    @admin.display(description="done (UTC)", ordering="date_done")
    def done(self, obj: TaskResult) -> str:
        if obj.date_done is None:
            return "-"
        return dt.datetime.fromtimestamp(obj.date_done, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False
