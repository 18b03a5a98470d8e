"""Fixtures for the broker conformance suite.

Every test in this directory runs once per broker kind in `BROKER_KINDS`. To add a broker
(redis, amqp, postgres), append one `BrokerKind` whose `connect` builds a broker from the
test's options; a kind that needs a server should `pytest.skip` with a reason when the
server is not configured (and fail instead under `CELERIAC_REQUIRE_SERVICES=1`, as in CI).
Servers are shared between tests, so every test works on fresh queue names (`queue`,
`new_queue`) and never assumes that `stats()` or `dead_letters()` without a queue show
only its own messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.brokers import Broker, from_url
from services import amqp_url, postgres_url, prefix_for, redis_url

T = TypeVar("T")

# A fixed, realistic start time: fake-clock tests are deterministic.
FAKE_EPOCH = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told to; pass it as a broker's `clock=`."""

    def __init__(self, start: float = FAKE_EPOCH) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class BrokerKind:
    """How to build one broker implementation for a test.

    `connect(tmp_path, options)` returns a new broker object; `shared` is True when two
    objects built for the same test see the same queues (a file or a server), as two
    processes would.
    """

    name: str
    connect: Callable[[Path, dict[str, Any]], Broker]
    shared: bool
    # What the kind does differently, each with the reason a test that needs it is skipped
    # (tests mark what they need with `@pytest.mark.needs("...")`).
    lacks: dict[str, str] = field(default_factory=dict)


def _memory(tmp_path: Path, options: dict[str, Any]) -> Broker:
    return from_url("memory://", **options)


def _sqlite(tmp_path: Path, options: dict[str, Any]) -> Broker:
    return from_url(f"sqlite:///{tmp_path}/b.db", **options)


def _postgres(tmp_path: Path, options: dict[str, Any]) -> Broker:
    return from_url(postgres_url(), prefix=prefix_for(tmp_path), **options)


def _redis(tmp_path: Path, options: dict[str, Any]) -> Broker:
    return from_url(redis_url(), prefix=prefix_for(tmp_path), **options)


def _amqp(tmp_path: Path, options: dict[str, Any]) -> Broker:
    # The state store in a file of the test's own: two brokers of one test share it.
    state = f"sqlite:///{tmp_path}/amqp-state.db"
    return from_url(amqp_url(), prefix=prefix_for(tmp_path), state_url=state, **options)


AMQP_LACKS = {
    "clock_leases": "a lease lasts as long as its connection, not for a time on the broker's"
    " clock (tests/brokers/test_amqp_broker.py checks leases lost with the connection)",
    "clock_etas": "delays run on RabbitMQ's clock (message TTLs), not the broker's",
    "eta_order": "messages of one priority run in the order they became due",
    "full_stats": "AMQP counts no leased or delayed messages",
    "id_dedup": "RabbitMQ stores a message id published twice twice",
    "shared_leases": "a delivery is acked on the connection that fetched it",
    "revoke_deletes": "a revoked message stays in its queue, and the worker that fetches it"
    " skips it (tests/brokers/test_amqp_broker.py)",
}

BROKER_KINDS = [
    BrokerKind("memory", _memory, shared=False),
    BrokerKind("sqlite", _sqlite, shared=True),
    BrokerKind("redis", _redis, shared=True),
    BrokerKind("postgres", _postgres, shared=True),
    BrokerKind("amqp", _amqp, shared=True, lacks=AMQP_LACKS),
]


MakeBroker = Callable[..., Broker]


@pytest.fixture(params=BROKER_KINDS, ids=lambda kind: kind.name)
def broker_kind(request: pytest.FixtureRequest) -> BrokerKind:
    kind: BrokerKind = request.param
    for marker in request.node.iter_markers("needs"):
        for need in marker.args:
            if need in kind.lacks:
                pytest.skip(f"{kind.name}: {kind.lacks[need]}")
    return kind


@pytest.fixture
def clock() -> FakeClock:
    """The fake clock that `make_broker` and `broker` use unless told otherwise."""
    return FakeClock()


@pytest.fixture
def make_broker(broker_kind: BrokerKind, tmp_path: Path, clock: FakeClock) -> Iterator[MakeBroker]:
    """`make_broker(**options)`: a new broker of the current kind; `clock` defaults to the
    test's fake clock (pass `clock=time.time` for real time). Closed after the test."""
    made: list[Broker] = []

    def make(**options: Any) -> Broker:
        options.setdefault("clock", clock)
        broker = broker_kind.connect(tmp_path, options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        if hasattr(broker, "delete_queues"):  # RabbitMQ keeps queues until deleted
            broker.delete_queues()
        broker.close()


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    """A fresh broker on the test's fake clock."""
    return make_broker()


@pytest.fixture
def new_queue() -> Callable[[], str]:
    """A queue name no other test (or other call) uses."""
    return lambda: f"test-{uuid.uuid4().hex}"


@pytest.fixture
def queue(new_queue: Callable[[], str]) -> str:
    return new_queue()
