"""Result backends. `from_url` picks the implementation by URL scheme."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError
from .base import ResultBackend, TaskMeta

__all__ = ["ResultBackend", "TaskMeta", "from_url"]


def from_url(url: str, *, prefix: str = "celeriac", **options: Any) -> ResultBackend:
    """`prefix`: the key prefix on servers that several apps may share (Redis)."""
    scheme = url.partition("://")[0]
    if scheme == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(url, **options)
    if scheme == "sqlite":
        from .sqlite import SqliteBackend

        return SqliteBackend(url, **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBackend

        return PostgresBackend(url, prefix=prefix, **options)
    if url == "django-db":
        from ..contrib.django.results import DjangoBackend

        return DjangoBackend(url, **options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBackend

        return RedisBackend(url, prefix=prefix, **options)
    raise ConfigurationError(
        f"unknown result backend URL {url!r}: Celeriac supports memory://, sqlite:///path.db,"
        " redis://host:port/db (also rediss:// and unix://), postgresql://user@host/db and"
        " django-db (Django's database)"
    )
