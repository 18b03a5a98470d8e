"""Test servers: a test that needs one skips with a reason when it cannot be reached, and
fails instead under CELERIAC_REQUIRE_SERVICES=1 (as CI runs). Each test gets key prefixes
of its own, so tests share a server without seeing each other's queues."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# One prefix per test session: a session cleans up its own keys and no other session's.
TEST_PREFIX = f"celeriac-test:{uuid.uuid4().hex[:8]}"


@functools.cache
def _redis_problem() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # any failure means: no usable server
        return f"Redis at {REDIS_URL} is not reachable ({exc})"
    return None


def require(problem: str | None) -> None:
    if problem is None:
        return
    if os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1":
        pytest.fail(problem + "; CELERIAC_REQUIRE_SERVICES=1 requires it")
    pytest.skip(problem)


def redis_url() -> str:
    """The test Redis server's URL, or skip (fail in CI) when it is not reachable."""
    require(_redis_problem())
    return REDIS_URL


POSTGRES_URL = os.environ.get(
    "CELERIAC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@functools.cache
def _postgres_problem() -> str | None:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception as exc:  # any failure means: no usable server
        return f"PostgreSQL at {POSTGRES_URL} is not reachable ({exc})"
    return None


def postgres_url() -> str:
    """The test PostgreSQL server's URL (each test uses schemas of its own, named by its
    prefix), or skip (fail in CI) when it is not reachable."""
    require(_postgres_problem())
    return POSTGRES_URL


def drop_test_schemas() -> None:
    """Drop every schema this test session made (their names start with TEST_PREFIX's)."""
    if _postgres_problem() is not None:
        return
    import psycopg

    from celeriac._postgres import schema_name

    start = schema_name(TEST_PREFIX)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        names = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (start,)
        ).fetchall()
        for (name,) in names:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


AMQP_URL = os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@functools.cache
def _amqp_problem() -> str | None:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError as exc:
        return f"RabbitMQ at {parts.hostname}:{parts.port} is not reachable ({exc})"
    return None


def amqp_url() -> str:
    """The test RabbitMQ server's URL, or skip (fail in CI) when it is not reachable. Each
    test's queues are named by its prefix; `AmqpBroker.delete_queues` removes them."""
    require(_amqp_problem())
    return AMQP_URL


def delete_test_queues() -> None:
    """Delete every RabbitMQ queue this test session made (their names start with
    TEST_PREFIX), found with `rabbitmqctl` where the server runs on this machine: quorum
    queues hold files open, and a server with few file handles stops taking connections."""
    import shutil
    import subprocess

    if _amqp_problem() is not None or shutil.which("rabbitmqctl") is None:
        return
    listing = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    names = [n for n in listing.stdout.split() if n.startswith(TEST_PREFIX)]
    if not names:
        return
    import asyncio

    import aiormq

    async def delete() -> None:
        connection = await aiormq.connect(AMQP_URL)
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
        await connection.close()

    asyncio.run(delete())


def new_prefix() -> str:
    return f"{TEST_PREFIX}:{uuid.uuid4().hex[:12]}"


def prefix_for(tmp_path: Path) -> str:
    """The same prefix for every broker or backend of one test (each test has its own
    tmp_path), so that two objects made by one test share their queues."""
    return f"{TEST_PREFIX}:{tmp_path.name}:{abs(hash(str(tmp_path))):x}"


def delete_test_keys() -> None:
    """Remove every key this test session made (all start with TEST_PREFIX)."""
    if _redis_problem() is not None:
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for batch in _batched(client.scan_iter(match=f"{TEST_PREFIX}:*", count=1000), 500):
        client.delete(*batch)
    client.close()


def _batched(items, size):  # type: ignore[no-untyped-def]
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
