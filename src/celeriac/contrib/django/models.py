"""The integration's tables (app label `celeriac`)."""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """A message sent inside a transaction, waiting for its commit to be published."""

    id = models.CharField(primary_key=True, max_length=64)
    queue = models.CharField(max_length=255)
    body = models.BinaryField()
    priority = models.SmallIntegerField(default=0)
    eta = models.FloatField(null=True)
    key = models.CharField(max_length=512, null=True)
    key_ttl = models.FloatField(default=0.0)
    created = models.FloatField(db_index=True)  # unix time

    class Meta:
        db_table = "celeriac_outbox"


class DoneMark(models.Model):
    """An atomic task's message that ran and committed, with its result."""

    id = models.CharField(primary_key=True, max_length=64)
    task = models.CharField(max_length=255)
    result = models.JSONField(null=True)
    done_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "celeriac_done"


class TaskResult(models.Model):
    """A task's state and result (`CELERY_RESULT_BACKEND = "django-db"`)."""

    task_id = models.CharField(primary_key=True, max_length=255)
    state = models.CharField(max_length=16, db_index=True)
    task = models.CharField(max_length=255, null=True)
    result = models.JSONField(null=True)
    traceback = models.TextField(null=True)
    info = models.JSONField(null=True)
    date_done = models.FloatField(null=True)  # unix time
    expires_at = models.FloatField(null=True, db_index=True)

    class Meta:
        db_table = "celeriac_taskresult"
        verbose_name = "task result"

    def __str__(self) -> str:
        return f"{self.task or 'task'}[{self.task_id}] {self.state}"


class GroupRecord(models.Model):
    group_id = models.CharField(primary_key=True, max_length=255)
    members = models.JSONField()
    expires_at = models.FloatField(db_index=True)

    class Meta:
        db_table = "celeriac_group"


class ChordMember(models.Model):
    group_id = models.CharField(max_length=255)
    member_id = models.CharField(max_length=255)
    expires_at = models.FloatField(db_index=True)

    class Meta:
        db_table = "celeriac_chord_member"
        constraints = (
            models.UniqueConstraint(fields=["group_id", "member_id"], name="celeriac_chord_once"),
        )
