from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("queue", models.CharField(max_length=255)),
                ("body", models.BinaryField()),
                ("priority", models.SmallIntegerField(default=0)),
                ("eta", models.FloatField(null=True)),
                ("key", models.CharField(max_length=512, null=True)),
                ("key_ttl", models.FloatField(default=0.0)),
                ("created", models.FloatField(db_index=True)),
            ],
            options={"db_table": "celeriac_outbox"},
        ),
        migrations.CreateModel(
            name="DoneMark",
            fields=[
                ("id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("task", models.CharField(max_length=255)),
                ("result", models.JSONField(null=True)),
                ("done_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"db_table": "celeriac_done"},
        ),
    ]
