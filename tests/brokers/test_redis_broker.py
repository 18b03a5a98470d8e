"""What only the Redis broker has: server checks, durable publish, connection errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.brokers import Outgoing, from_url
from celeriac.brokers.base import redacted
from celeriac.exceptions import BrokerError, ConfigurationError
from polling import wait_until
from services import new_prefix, redis_url


def test_warns_about_settings_that_lose_tasks() -> None:
    broker = from_url(redis_url(), prefix=new_prefix())
    appendonly = broker.client.config_get("appendonly")["appendonly"]
    warnings = broker.warnings()
    if appendonly in ("no", b"no"):
        assert any("appendonly" in w for w in warnings), warnings
    broker.close()


def test_durable_publish_waits_for_fsync_or_says_what_it_needs() -> None:
    broker = from_url(redis_url(), prefix=new_prefix(), durable_publish=True)
    info = broker.client.info("server")
    version = tuple(int(x) for x in info["redis_version"].split(".")[:2])
    message = Outgoing("m1", "q", b"body")
    if version < (7, 2):
        with pytest.raises(ConfigurationError, match=r"needs Redis 7\.2"):
            broker.publish([message])
    else:
        appendonly = broker.client.config_get("appendonly")["appendonly"]
        if appendonly in ("yes", b"yes"):
            broker.publish([message])
        else:
            with pytest.raises((BrokerError, ConfigurationError)):
                broker.publish([message])
    broker.close()


def test_passwords_never_reach_logs() -> None:
    assert redacted("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


def test_an_unreachable_server_is_a_broker_error_that_names_it() -> None:
    broker = from_url("redis://127.0.0.1:1/0", prefix=new_prefix())
    with pytest.raises(BrokerError, match=r"Redis at redis://127\.0\.0\.1:1/0"):
        broker.fetch(["q"], 1, 1.0)


def test_cli_reports_an_unreachable_server_in_one_line() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "celeriac",
            "--broker",
            "redis://:pw@127.0.0.1:1/0",
            "inspect",
            "queues",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("celeriac: error: Redis at")
    assert "pw" not in out.stderr


def test_a_message_whose_keys_were_deleted_is_skipped_not_fatal() -> None:
    # Keys deleted by hand, or evicted under a maxmemory-policy other than noeviction.
    broker = from_url(redis_url(), prefix=new_prefix())
    broker.publish([Outgoing("a", "q", b"A"), Outgoing("b", "q", b"B"), Outgoing("c", "q", b"C")])
    broker.client.delete(f"{broker.prefix}:m:a")
    (b, c) = broker.fetch(["q"], 10, 0.01)
    assert (b.id, c.id) == ("b", "c")
    broker.client.delete(f"{broker.prefix}:m:b")  # gone while leased
    assert broker.ack([c]) == [True]
    assert broker.fetch(["q"], 10, 30) == []  # b's expired lease is dropped, not fatal
    assert broker.stats() == {}
    assert broker.client.keys(f"{broker.prefix}:m:*") == []
    broker.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Path]:
    """A Redis server of this test's own, on a unix socket, with an ACL user alice."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    socket = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [
            server,
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--user",
            "alice",
            "on",
            ">s3cret",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(socket.exists, 10, "the private Redis server's socket")
        yield socket
    finally:
        proc.kill()
        proc.wait()


def test_unix_socket_and_acl_user(private_redis: Path) -> None:
    url = f"unix://alice:s3cret@{private_redis}?db=0"
    broker = from_url(url, prefix=new_prefix())
    broker.publish([Outgoing("m", "q", b"body")])
    (delivery,) = broker.fetch(["q"], 1, 30)
    assert delivery.body == b"body"
    assert broker.ack([delivery]) == [True]
    broker.close()
    wrong = from_url(f"unix://alice:wrong@{private_redis}?db=0", prefix=new_prefix())
    with pytest.raises(BrokerError) as info:
        wrong.fetch(["q"], 1, 30)
    assert "wrong" not in str(info.value)
