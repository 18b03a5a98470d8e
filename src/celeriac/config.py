"""Every setting, in one place, with Celery's names.

Settings are lower-case (`broker_url`). `app.config_from_object(obj, namespace="CELERY")`
reads the upper-case names with that prefix (`CELERY_BROKER_URL`), as Celery does with
Django settings; without a namespace it reads lower-case names and upper-case ones alike.
`docs/configuration.md` lists them for users; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigurationError

log = logging.getLogger("celeriac")

DEFAULT_SQLITE_URL = "sqlite:///celeriac.db"
# Brokers that also keep results and state (amqp:// keeps neither).
STORE_SCHEMES = ("sqlite", "memory", "redis", "rediss", "unix", "postgresql", "postgres")


@dataclass
class Settings:
    # Where messages and results live. No broker: an SQLite file in the working directory.
    # No result backend: the broker's own store when it has one (sqlite, memory, redis).
    broker_url: str | None = None
    result_backend: str | None = None
    result_expires: float = 86400.0  # seconds a finished task's result is kept
    result_max_bytes: int = 10 * 1024 * 1024  # a bigger result is a failure, not stored

    # Sending.
    task_default_queue: str = "celeriac"
    task_default_priority: int = 0  # 0-9, higher runs first
    task_routes: Any = None  # {"name or glob*": "queue" | {"queue": ...}}, or a list of them
    task_ignore_result: bool = False
    task_track_started: bool = False  # store STARTED when a task begins
    # Django: a task sent inside transaction.atomic() is written to the outbox table in
    # that transaction and published after commit (contrib/django/outbox.py).
    task_outbox: bool = False
    # Defaults for tasks that set no soft_time_limit / time_limit of their own (seconds).
    task_soft_time_limit: float | None = None
    task_time_limit: float | None = None
    task_serializer: str = "json"  # JSON is the only serializer; listed so Celery configs load
    result_serializer: str = "json"
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    # Always on in Celeriac (a message is acked only after its outcome is stored); kept so
    # that a Celery config that sets it loads.
    task_acks_late: bool = True

    # Workers.
    worker_concurrency: int | None = None  # threads: 8; processes: CPU count
    worker_pool: str = "threads"  # threads | processes
    worker_prefetch_multiplier: int = 4  # messages fetched ahead, per slot
    worker_shutdown_timeout: float = 30.0  # SIGTERM: how long running tasks may finish
    broker_lease_seconds: float = 30.0  # a dead worker's messages run again after this
    broker_max_lease_expiries: int = 3  # then the message is dead-lettered
    broker_poll_interval: float = 0.1  # longest pause between fetches of an idle worker
    # delay() returns only once the message is fsynced: SQLite synchronous=FULL, Redis
    # WAITAOF (7.2+, appendonly yes). Slower; without it a crashed process loses nothing,
    # but a power loss (SQLite) or a server crash (Redis) can lose the last moments' tasks.
    broker_durable_publish: bool = False
    broker_key_prefix: str = "celeriac"  # Redis: the prefix of every key, to share a server
    # amqp://: where revocations, rate limits, idempotency keys and the beat's state live
    # (RabbitMQ has no place for them): a redis://, postgresql:// or sqlite:/// URL. Unset:
    # the result backend, when it is one of those.
    broker_state_url: str | None = None

    # Sign every message with HMAC-SHA256 (a secret shared by producers and workers); a
    # worker dead-letters unsigned or tampered messages. Old keys are still accepted, for
    # rotation. (Celery's security_key is a path to an X.509 key; this one is the secret.)
    security_key: str | None = None
    security_old_keys: list[str] = field(default_factory=list)

    # Periodic tasks, in Celery's format: {"name": {"task": ..., "schedule": seconds |
    # timedelta | crontab(...), "args": [...], "kwargs": {...}, "options": {...}}}.
    beat_schedule: dict[str, Any] = field(default_factory=dict)

    # Modules to import when the app starts (task modules that autodiscovery won't find).
    imports: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    timezone: str = "UTC"  # crontab entries are in this zone (DST included)
    enable_utc: bool = True

    def update(self, values: Mapping[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ConfigurationError(
                    f"unknown setting {key!r}; see docs/configuration.md for the settings"
                )
            setattr(self, key, value)
        self.validate()

    def validate(self) -> None:
        if self.worker_pool not in ("threads", "processes"):
            raise ConfigurationError(
                f"worker_pool must be 'threads' or 'processes', not {self.worker_pool!r}"
            )
        for key in ("task_serializer", "result_serializer"):
            if getattr(self, key) != "json":
                raise ConfigurationError(
                    f"{key}={getattr(self, key)!r}: Celeriac sends JSON only "
                    "(pickle would run code from the wire)"
                )
        if not 0 <= self.task_default_priority <= 9:
            raise ConfigurationError("task_default_priority must be between 0 and 9")

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or os.environ.get("CELERIAC_BROKER_URL") or DEFAULT_SQLITE_URL

    @property
    def effective_result_backend(self) -> str | None:
        if self.result_backend:
            return self.result_backend
        broker = self.effective_broker_url
        return broker if broker.split("://")[0] in STORE_SCHEMES else None

    @property
    def effective_broker_state_url(self) -> str | None:
        if self.broker_state_url:
            return self.broker_state_url
        backend = self.effective_result_backend
        return backend if backend and backend.split("://")[0] in STORE_SCHEMES else None


KNOWN = frozenset(f.name for f in dataclasses.fields(Settings))


def load_object(spec: str) -> Any:
    """Import `module` or `module:attribute` (`django.conf:settings`)."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def read_settings(source: Any, namespace: str | None) -> dict[str, Any]:
    """The Celeriac settings found in a module, object or mapping.

    Keys Celeriac does not know are logged once and ignored, so that a Celery settings
    module with options Celeriac lacks still loads.
    """
    if isinstance(source, str):
        source = load_object(source)
    if isinstance(source, Mapping):
        items = dict(source)
    else:
        items = {k: getattr(source, k) for k in dir(source) if not k.startswith("_")}
    found: dict[str, Any] = {}
    ignored = []
    for key, value in items.items():
        if namespace:
            prefix = namespace.upper() + "_"
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
        elif key.islower() or key.isupper():
            name = key.lower()
        else:
            continue
        if name in KNOWN:
            found[name] = value
        elif namespace:
            ignored.append(key)
    if ignored:
        log.warning("ignoring settings Celeriac does not support: %s", ", ".join(sorted(ignored)))
    return found
