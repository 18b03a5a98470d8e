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
