"""Fixtures for the result-backend conformance suite.

Every test in this directory runs once per backend kind in `BACKEND_KINDS`; to add one
(redis, postgres), append a `BackendKind`. Servers are shared between tests, so each test
uses fresh task ids (`task_id`, `new_task_id`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.backends import ResultBackend, from_url
from services import postgres_url, prefix_for, redis_url

T = TypeVar("T")


@dataclass(frozen=True)
class BackendKind:
    """`connect(tmp_path, options)` returns a new backend object; `shared` is True when two
    objects built for the same test see the same results (a file or a server)."""

    name: str
    connect: Callable[[Path, dict[str, Any]], ResultBackend]
    shared: bool
    expires_by_itself: bool = False  # the server deletes expired results; cleanup() finds none


def _memory(tmp_path: Path, options: dict[str, Any]) -> ResultBackend:
    return from_url("memory://", **options)


def _sqlite(tmp_path: Path, options: dict[str, Any]) -> ResultBackend:
    return from_url(f"sqlite:///{tmp_path}/r.db", **options)


def _redis(tmp_path: Path, options: dict[str, Any]) -> ResultBackend:
    return from_url(redis_url(), prefix=prefix_for(tmp_path), **options)


def _postgres(tmp_path: Path, options: dict[str, Any]) -> ResultBackend:
    return from_url(postgres_url(), prefix=prefix_for(tmp_path), **options)


_django_db: list[Path] = []


def _django(tmp_path: Path, options: dict[str, Any]) -> ResultBackend:
    """Django's database (django-db): Django is set up once for the session, on an SQLite
    file, with the integration's tables migrated."""
    if not _django_db:
        import tempfile

        import django
        from django.conf import settings
        from django.core.management import call_command

        path = Path(tempfile.mkdtemp()) / "django.sqlite3"
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}},
            INSTALLED_APPS=["django.contrib.contenttypes", "celeriac.contrib.django"],
            USE_TZ=True,
        )
        django.setup()
        call_command("migrate", verbosity=0)
        _django_db.append(path)
    return from_url("django-db", **options)


BACKEND_KINDS = [
    BackendKind("memory", _memory, shared=False),
    BackendKind("sqlite", _sqlite, shared=True),
    BackendKind("redis", _redis, shared=True, expires_by_itself=True),
    BackendKind("django", _django, shared=True),
    BackendKind("postgres", _postgres, shared=True),
]


MakeBackend = Callable[..., ResultBackend]


@pytest.fixture(params=BACKEND_KINDS, ids=lambda kind: kind.name)
def backend_kind(request: pytest.FixtureRequest) -> BackendKind:
    kind: BackendKind = request.param
    return kind


@pytest.fixture
def make_backend(backend_kind: BackendKind, tmp_path: Path) -> Iterator[MakeBackend]:
    """`make_backend(**options)`: a new backend of the current kind, closed after the test."""
    made: list[ResultBackend] = []

    def make(**options: Any) -> ResultBackend:
        backend = backend_kind.connect(tmp_path, options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: MakeBackend) -> ResultBackend:
    return make_backend()


@pytest.fixture
def new_task_id() -> Callable[[], str]:
    return lambda: str(uuid.uuid4())


@pytest.fixture
def task_id(new_task_id: Callable[[], str]) -> str:
    return new_task_id()
