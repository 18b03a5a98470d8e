"""What the `amqp://` broker does its own way (see `celeriac/brokers/amqp.py`): a lease is
the unacked delivery and ends with the connection, delays run on RabbitMQ's clock, and
what AMQP has no place for lives in the state store. The shared contract is in
test_broker_contract.py; these run on a real RabbitMQ."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.brokers import Broker, Delivery, Outgoing, QueueStats, from_url
from celeriac.brokers.amqp import AmqpBroker
from celeriac.exceptions import ConfigurationError
from polling import wait_until
from services import amqp_url, prefix_for

MakeAmqp = Callable[..., AmqpBroker]


@pytest.fixture
def make_amqp(tmp_path: Path) -> Iterator[MakeAmqp]:
    """`make_amqp(**options)`: a broker of this test's prefix and state store, on the real
    clock; its queues are deleted after the test."""
    made: list[AmqpBroker] = []

    def make(**options: Any) -> AmqpBroker:
        broker = from_url(
            amqp_url(),
            prefix=prefix_for(tmp_path),
            state_url=f"sqlite:///{tmp_path}/state.db",
            **options,
        )
        assert isinstance(broker, AmqpBroker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.delete_queues()
        broker.close()


@pytest.fixture
def queue() -> str:
    return f"test-{uuid.uuid4().hex}"


def lose_connection(broker: AmqpBroker) -> None:
    """What a killed worker's connection does: it closes, and RabbitMQ takes back what it
    held. The broker object connects again on its next call."""

    async def close() -> None:
        await broker._conn.close()

    broker._run(close)


def fetch_one(broker: Broker, queue: str) -> Delivery:
    [delivery] = wait_until(lambda: broker.fetch([queue], 1, 30), what=f"a message in {queue}")
    return delivery


def test_a_lease_ends_with_its_connection(make_amqp: MakeAmqp, queue: str) -> None:
    worker, other = make_amqp(), make_amqp()
    worker.publish([Outgoing("a", queue, b"body")])
    held = fetch_one(worker, queue)
    assert (held.attempt, held.lease_expiries) == (1, 0)
    assert other.fetch([queue], 10, 30) == []  # leased: nobody else gets it
    lose_connection(worker)
    again = fetch_one(other, queue)
    assert (again.id, again.attempt, again.lease_expiries) == ("a", 2, 1)
    # The old holder is fenced off: its lease is gone, and so is its ack.
    assert worker.renew([held], 30) == [False]
    assert worker.ack([held]) == [False]
    assert other.renew([again], 30) == [True]
    assert other.ack([again]) == [True]
    assert other.fetch([queue], 10, 30) == []


@pytest.mark.parametrize("max_lease_expiries", [1, 3])
def test_lost_leases_dead_letter_the_message(
    make_amqp: MakeAmqp, queue: str, max_lease_expiries: int
) -> None:
    """RabbitMQ's delivery limit moves it to the dead letters after the last loss."""
    broker = make_amqp(max_lease_expiries=max_lease_expiries)
    broker.publish([Outgoing("poison", queue, b"p")])
    for _ in range(max_lease_expiries):
        fetch_one(broker, queue)
        lose_connection(broker)
    letters = wait_until(lambda: broker.dead_letters(queue), what="the dead letter")
    assert [(dl.id, dl.body) for dl in letters] == [("poison", b"p")]
    assert letters[0].reason == (
        f"lease expired {max_lease_expiries} times: its worker died or hung"
    )
    assert abs(letters[0].dead_at - time.time()) < 60
    assert broker.fetch([queue], 10, 30) == []


def test_copies_carry_the_attempt_and_the_lost_leases(make_amqp: MakeAmqp, queue: str) -> None:
    """nack and release publish a copy and ack the delivery; the counts go with it, so
    a lease lost before the nack still counts towards the limit, and a nack does not."""
    broker = make_amqp(max_lease_expiries=2)
    broker.publish([Outgoing("a", queue, b"one")])
    fetch_one(broker, queue)
    lose_connection(broker)  # loss 1
    second = fetch_one(broker, queue)
    assert (second.attempt, second.lease_expiries) == (2, 1)
    assert broker.nack(second, 0.0, b"two") is True
    assert broker.ack([second]) == [False]  # the copy is the message now
    third = fetch_one(broker, queue)
    assert (third.attempt, third.lease_expiries, third.body) == (3, 1, b"two")
    broker.release([third])
    fourth = fetch_one(broker, queue)
    assert (fourth.attempt, fourth.lease_expiries) == (4, 1)
    lose_connection(broker)  # loss 2: the copy carries the first, so this is the limit
    # RabbitMQ counts the copy's own losses only: the fetch that meets it dead-letters it.
    [letter] = wait_until(
        lambda: broker.fetch([queue], 10, 30) == [] and broker.dead_letters(queue),
        what="the dead letter",
    )
    assert letter.reason == "lease expired 2 times: its worker died or hung"


def test_delays_run_on_rabbitmqs_clock(make_amqp: MakeAmqp, queue: str) -> None:
    broker = make_amqp()
    start = time.time()
    broker.publish([Outgoing("later", queue, b"", eta=start + 0.6), Outgoing("now", queue, b"")])
    assert [d.id for d in broker.fetch([queue], 10, 30)] == ["now"]
    later = fetch_one(broker, queue)
    assert later.id == "later"
    assert time.time() - start >= 0.6
    assert broker.nack(later, 0.4) is True
    again = time.time()
    assert fetch_one(broker, queue).attempt == 2
    assert time.time() - again >= 0.4


def test_a_message_that_arrives_before_its_eta_goes_round_again(
    make_amqp: MakeAmqp, queue: str
) -> None:
    """The delay levels hold a message up to 3.1 days in one pass: one that comes out early
    (a longer eta; here, a consumer whose clock is behind) is sent round again."""
    producer = make_amqp()
    behind = make_amqp(clock=lambda: time.time() - 0.8)
    start = time.time()
    producer.publish([Outgoing("a", queue, b"", eta=start + 0.3)])
    delivery = fetch_one(behind, queue)
    assert time.time() - start >= 1.0  # its eta on the consumer's clock
    assert delivery.id == "a"


def test_priorities_each_have_a_queue(make_amqp: MakeAmqp, queue: str) -> None:
    producer, consumer = make_amqp(), make_amqp()
    producer.publish([Outgoing(f"p{p}", queue, b"", priority=p) for p in (0, 3, 9, 3)])
    assert [d.id for d in consumer.fetch([queue], 10, 30)] == ["p9", "p3", "p3", "p0"]


def test_a_revoked_message_stays_queued_for_its_worker_to_skip(
    make_amqp: MakeAmqp, queue: str
) -> None:
    """AMQP cannot take one message out of a queue: the worker that fetches it asks the
    state store (every message, not only redeliveries) and skips it."""
    broker = make_amqp()
    assert broker.revoke_deletes_queued is False
    broker.publish([Outgoing("a", queue, b""), Outgoing("b", queue, b"")])
    assert broker.revoke(["a"], terminate=True) == []
    assert [d.id for d in broker.fetch([queue], 10, 30)] == ["a", "b"]
    assert broker.revoked(["a", "b"]) == {"a": True}


def test_stats_count_ready_messages_and_dead_letters(make_amqp: MakeAmqp, queue: str) -> None:
    broker = make_amqp()
    broker.publish([Outgoing(i, queue, b"", priority=n) for n, i in enumerate("abc")])
    d = fetch_one(broker, queue)
    assert broker.dead_letter(d, "ValueError: bad") is True
    assert broker.stats()[queue] == QueueStats(ready=2, dead=1)
    assert broker.replay(queue=queue) == 1
    assert broker.stats()[queue] == QueueStats(ready=3)
    assert broker.purge(queue) == 3


def test_wait_returns_when_a_message_is_published(make_amqp: MakeAmqp, queue: str) -> None:
    idle, producer = make_amqp(), make_amqp()
    idle.wait([queue], 0.01)  # binds its wake-up queue
    woke = threading.Event()

    def wait() -> None:
        idle.wait([queue], 30)
        woke.set()

    threading.Thread(target=wait, daemon=True).start()
    producer.publish([Outgoing("a", queue, b"")])
    assert woke.wait(10), "the publish did not wake the waiting broker"


def test_it_reconnects_after_the_connection_is_lost(make_amqp: MakeAmqp, queue: str) -> None:
    broker = make_amqp()
    broker.publish([Outgoing("a", queue, b"")])
    lose_connection(broker)
    broker.publish([Outgoing("b", queue, b"")])
    assert sorted(d.id for d in broker.fetch([queue], 10, 30)) == ["a", "b"]


def test_a_queue_with_other_arguments_is_a_clear_error(make_amqp: MakeAmqp, queue: str) -> None:
    make_amqp(max_lease_expiries=3).publish([Outgoing("a", queue, b"")])
    with pytest.raises(ConfigurationError, match="broker_max_lease_expiries"):
        make_amqp(max_lease_expiries=5).publish([Outgoing("b", queue, b"")])


def test_a_bad_queue_name_is_a_clear_error(make_amqp: MakeAmqp) -> None:
    with pytest.raises(ConfigurationError, match="queue names may have"):
        make_amqp().publish([Outgoing("a", "emails!", b"")])


def test_the_state_store_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="broker_state_url"):
        Celeriac("t", broker=amqp_url()).broker  # noqa: B018
    app = Celeriac("t", broker=amqp_url(), result_backend=f"sqlite:///{tmp_path}/r.db")
    assert app.conf.effective_broker_state_url == f"sqlite:///{tmp_path}/r.db"
    app.close()


def test_a_priority_level_made_later_is_found_at_once(make_amqp: MakeAmqp, queue: str) -> None:
    """A worker that found a level missing asks again only after a while, unless the
    publish that made it says so in its wake-up."""
    worker, producer = make_amqp(), make_amqp()
    producer.publish([Outgoing("low", queue, b"")])
    worker.wait([queue], 0.01)  # binds its wake-up queue
    assert [d.id for d in worker.fetch([queue], 10, 30)] == ["low"]  # levels 1-9: missing
    producer.publish([Outgoing("high", queue, b"", priority=7)])
    worker.wait([queue], 5)
    assert [d.id for d in worker.fetch([queue], 10, 30)] == ["high"]
