"""The broker contract (`celeriac.brokers.base`), checked on every broker kind.

Most tests run on a fake clock (`clock.advance(...)`), so lease and eta checks are exact and
take no time; a few run on the real clock to check that the default clock works too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from celeriac.brokers import Broker, Delivery, Outgoing, QueueStats

LEASE = 30.0  # seconds on the fake clock


def out(queue: str, id: str, body: bytes | None = None, **fields: Any) -> Outgoing:
    return Outgoing(id=id, queue=queue, body=body if body is not None else id.encode(), **fields)


def fetch_all(broker: Broker, queues: Sequence[str], lease: float = LEASE) -> list[Delivery]:
    """Fetch until nothing is due; every message stays leased."""
    found: list[Delivery] = []
    while batch := broker.fetch(queues, 100, lease):
        found.extend(batch)
    return found


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def stats_of(broker: Broker, queue: str) -> QueueStats:
    return broker.stats().get(queue, QueueStats())


# -- publish and fetch ---------------------------------------------------------------------


def test_publish_then_fetch(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a", b"\x00body\xff")])
    [d] = broker.fetch([queue], 10, LEASE)
    assert (d.id, d.queue, d.body, d.attempt, d.lease_expiries) == (
        "a",
        queue,
        b"\x00body\xff",
        1,
        0,
    )
    assert broker.fetch([queue], 10, LEASE) == []


def test_empty_body_round_trips(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a", b"")])
    assert [d.body for d in broker.fetch([queue], 1, LEASE)] == [b""]


def test_fetch_returns_at_most_limit(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, f"m{i}") for i in range(7)])
    assert len(broker.fetch([queue], 3, LEASE)) == 3
    assert len(broker.fetch([queue], 3, LEASE)) == 3
    assert len(broker.fetch([queue], 3, LEASE)) == 1
    assert broker.fetch([queue], 3, LEASE) == []


@pytest.mark.parametrize("limit", [0, -1])
def test_fetch_with_no_room_returns_nothing(broker: Broker, queue: str, limit: int) -> None:
    broker.publish([out(queue, "a"), out(queue, "b"), out(queue, "c")])
    assert broker.fetch([queue], limit, LEASE) == []
    assert stats_of(broker, queue) == QueueStats(ready=3)


def test_fetch_from_no_queues_returns_nothing(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    assert broker.fetch([], 10, LEASE) == []
    assert stats_of(broker, queue) == QueueStats(ready=1)


def test_fetch_from_an_unknown_queue_returns_nothing(
    broker: Broker, queue: str, new_queue: Callable[[], str]
) -> None:
    broker.publish([out(queue, "a")])
    assert broker.fetch([new_queue()], 10, LEASE) == []


@pytest.mark.needs("full_stats")
def test_leased_message_is_not_fetched_again(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a")])
    assert ids(broker.fetch([queue], 10, LEASE)) == ["a"]
    clock.advance(LEASE - 0.5)
    assert broker.fetch([queue], 10, LEASE) == []
    assert stats_of(broker, queue) == QueueStats(leased=1)


@pytest.mark.needs("eta_order")
def test_order_is_priority_then_eta_then_publish_order(
    broker: Broker, queue: str, clock: Any
) -> None:
    now = clock.now
    broker.publish(
        [
            out(queue, "a"),
            out(queue, "b", priority=5),
            out(queue, "c", priority=5, eta=now - 10),
            out(queue, "d", eta=now - 5),
            out(queue, "e"),
            out(queue, "f", priority=9),
            out(queue, "g", priority=5),
        ]
    )
    broker.publish([out(queue, "h", priority=5)])
    expected = ["f", "c", "b", "g", "h", "d", "a", "e"]
    assert ids(broker.fetch([queue], 3, LEASE)) == expected[:3]
    assert ids(broker.fetch([queue], 100, LEASE)) == expected[3:]


def test_order_in_one_fetch_and_one_by_one_agree(broker: Broker, queue: str) -> None:
    messages = [out(queue, f"m{i}", priority=(i * 7) % 10) for i in range(30)]
    expected = [m.id for m in sorted(messages, key=lambda m: -m.priority)]  # stable sort
    broker.publish(messages)
    assert ids([d for _ in range(30) for d in broker.fetch([queue], 1, LEASE)]) == expected


def test_fetch_from_several_queues(broker: Broker, new_queue: Callable[[], str]) -> None:
    q1, q2, q3 = new_queue(), new_queue(), new_queue()
    broker.publish([out(q1, "a1"), out(q2, "b1", priority=3), out(q3, "c1", priority=9)])
    broker.publish([out(q1, "a2", priority=5), out(q2, "b2")])
    got = broker.fetch([q1, q2], 10, LEASE)
    assert ids(got) == ["a2", "b1", "a1", "b2"]
    assert [d.queue for d in got] == [q1, q2, q1, q2]
    assert stats_of(broker, q3) == QueueStats(ready=1)
    assert ids(broker.fetch([q2, q3, q3], 10, LEASE)) == ["c1"]


def test_queues_are_isolated(broker: Broker, new_queue: Callable[[], str]) -> None:
    q1, q2 = new_queue(), new_queue()
    broker.publish([out(q1, "a"), out(q2, "b")])
    assert ids(broker.fetch([q2], 10, LEASE)) == ["b"]
    assert ids(broker.fetch([q1], 10, LEASE)) == ["a"]


# -- delays ----------------------------------------------------------------------------------


@pytest.mark.needs("clock_etas")
def test_delayed_message_waits_for_its_eta(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "later", eta=clock.now + 10), out(queue, "now")])
    assert stats_of(broker, queue) == QueueStats(ready=1, delayed=1)
    assert ids(broker.fetch([queue], 10, LEASE)) == ["now"]
    clock.advance(9.9)
    assert broker.fetch([queue], 10, LEASE) == []
    assert stats_of(broker, queue) == QueueStats(delayed=1, leased=1)
    clock.advance(0.2)
    assert stats_of(broker, queue) == QueueStats(ready=1, leased=1)
    [d] = broker.fetch([queue], 10, LEASE)
    assert (d.id, d.attempt, d.lease_expiries) == ("later", 1, 0)


@pytest.mark.needs("eta_order")
def test_eta_now_or_past_is_due_at_once(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "now", eta=clock.now), out(queue, "past", eta=clock.now - 60)])
    assert stats_of(broker, queue) == QueueStats(ready=2)
    assert ids(broker.fetch([queue], 10, LEASE)) == ["past", "now"]


def test_delayed_message_on_the_real_clock(
    make_broker: Callable[..., Broker], queue: str, wait_until: Callable[..., Any]
) -> None:
    broker = make_broker(clock=time.time)
    broker.publish([out(queue, "a", eta=time.time() + 0.1)])
    got = wait_until(lambda: broker.fetch([queue], 1, 5.0))
    assert ids(got) == ["a"]


# -- ack -------------------------------------------------------------------------------------


def test_ack_removes_and_reports(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a"), out(queue, "b")])
    a, b = broker.fetch([queue], 10, LEASE)
    assert broker.ack([a]) == [True]
    assert broker.ack([a, b, a]) == [False, True, False]
    assert broker.ack([]) == []
    clock.advance(10 * LEASE)
    assert broker.fetch([queue], 10, LEASE) == []
    assert queue not in broker.stats()


def test_ack_of_something_never_fetched_is_refused(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    assert broker.ack([Delivery("a", queue, b"a", 1)]) == [False]  # queued, not leased
    assert broker.ack([Delivery("nope", queue, b"", 1)]) == [False]
    assert stats_of(broker, queue) == QueueStats(ready=1)


@pytest.mark.needs("clock_leases")
def test_stale_delivery_is_fenced_off(broker: Broker, queue: str, clock: Any) -> None:
    """After a lease runs out and the message is fetched again, the old delivery can change
    nothing; the new owner can still ack."""
    broker.publish([out(queue, "a")])
    [old] = broker.fetch([queue], 1, LEASE)
    clock.advance(LEASE + 1)
    [new] = broker.fetch([queue], 1, LEASE)
    assert (new.id, new.attempt, new.lease_expiries) == ("a", old.attempt + 1, 1)

    assert broker.ack([old]) == [False]
    assert broker.renew([old], 1000.0) == [False]
    assert broker.nack(old, 0.0, b"changed") is False
    assert broker.dead_letter(old, "stale worker") is False
    broker.release([old])

    assert broker.dead_letters(queue) == []
    assert stats_of(broker, queue) == QueueStats(leased=1)
    assert broker.fetch([queue], 1, LEASE) == []  # not released, nacked or renewed
    clock.advance(LEASE - 1)  # still within the new owner's lease
    assert broker.fetch([queue], 1, LEASE) == []
    assert broker.ack([new]) == [True]
    assert queue not in broker.stats()


@pytest.mark.needs("clock_leases")
def test_renew_by_the_new_owner_only(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a")])
    [old] = broker.fetch([queue], 1, LEASE)
    clock.advance(LEASE + 1)
    [new] = broker.fetch([queue], 1, LEASE)
    assert broker.renew([old, new], 100.0) == [False, True]
    clock.advance(LEASE + 1)
    assert broker.fetch([queue], 1, LEASE) == []


# -- leases ----------------------------------------------------------------------------------


@pytest.mark.needs("clock_leases")
def test_renew_extends_the_lease(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a")])
    [d] = broker.fetch([queue], 1, 10.0)
    clock.advance(8)
    assert broker.renew([d], 10.0) == [True]
    clock.advance(8)  # 16 s after the fetch: past the first lease, within the renewed one
    assert broker.fetch([queue], 1, 10.0) == []
    assert stats_of(broker, queue) == QueueStats(leased=1)
    clock.advance(3)  # 19 s: past the renewed lease (18 s)
    [again] = broker.fetch([queue], 1, 10.0)
    assert (again.attempt, again.lease_expiries) == (2, 1)


def test_renew_of_a_gone_message_is_refused(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a"), out(queue, "b")])
    a, b = broker.fetch([queue], 2, LEASE)
    broker.ack([a])
    assert broker.renew([a, b], LEASE) == [False, True]


@pytest.mark.needs("clock_leases")
def test_expired_lease_is_delivered_again(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a", b"payload")])
    [first] = broker.fetch([queue], 1, 5.0)
    assert (first.attempt, first.lease_expiries) == (1, 0)
    clock.advance(5.5)
    assert stats_of(broker, queue) == QueueStats(ready=1)  # no longer owned
    [second] = broker.fetch([queue], 1, 5.0)
    assert (second.id, second.body, second.attempt, second.lease_expiries) == (
        "a",
        b"payload",
        2,
        1,
    )


@pytest.mark.needs("clock_leases")
def test_expired_lease_keeps_its_place_in_line(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a")])
    broker.fetch([queue], 1, 5.0)
    broker.publish([out(queue, "b")])
    clock.advance(6)
    assert ids(broker.fetch([queue], 10, 5.0)) == ["a", "b"]


@pytest.mark.needs("clock_leases")
def test_lease_runs_out_on_the_real_clock(
    make_broker: Callable[..., Broker], queue: str, wait_until: Callable[..., Any]
) -> None:
    broker = make_broker(clock=time.time)
    broker.publish([out(queue, "a")])
    [first] = broker.fetch([queue], 1, 0.05)
    [second] = wait_until(lambda: broker.fetch([queue], 1, 5.0))
    assert (second.id, second.attempt, second.lease_expiries) == ("a", 2, 1)
    assert broker.ack([first, second]) == [False, True]


@pytest.mark.needs("clock_leases")
@pytest.mark.parametrize("max_lease_expiries", [None, 1, 2])
def test_too_many_lease_expiries_dead_letter_the_message(
    make_broker: Callable[..., Broker], queue: str, clock: Any, max_lease_expiries: int | None
) -> None:
    options = {} if max_lease_expiries is None else {"max_lease_expiries": max_lease_expiries}
    broker = make_broker(**options)
    limit = broker.max_lease_expiries
    assert limit == (3 if max_lease_expiries is None else max_lease_expiries)
    broker.publish([out(queue, "poison", b"\x01original"), out(queue, "fine")])
    for expiries in range(limit):
        deliveries = {d.id: d for d in broker.fetch([queue], 10, 5.0)}
        assert deliveries["poison"].lease_expiries == expiries
        assert deliveries["poison"].attempt == expiries + 1
        if "fine" in deliveries:
            broker.ack([deliveries["fine"]])
        clock.advance(6)
    assert broker.fetch([queue], 10, 5.0) == []
    [dead] = broker.dead_letters(queue)
    assert (dead.id, dead.queue, dead.body) == ("poison", queue, b"\x01original")
    assert "lease expired" in dead.reason
    assert dead.dead_at == clock.now
    assert stats_of(broker, queue) == QueueStats(dead=1)


# -- nack and release ------------------------------------------------------------------------


@pytest.mark.needs("clock_etas")
def test_nack_with_delay_and_new_body(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a", b"try 1")])
    [d] = broker.fetch([queue], 1, LEASE)
    assert broker.nack(d, 10.0, b"try 2") is True
    assert stats_of(broker, queue) == QueueStats(delayed=1)
    clock.advance(9.9)
    assert broker.fetch([queue], 1, LEASE) == []
    clock.advance(0.2)
    [again] = broker.fetch([queue], 1, LEASE)
    assert (again.id, again.body, again.attempt, again.lease_expiries) == ("a", b"try 2", 2, 0)
    assert broker.ack([d, again]) == [False, True]


def test_nack_without_body_keeps_it(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a", b"original")])
    [d] = broker.fetch([queue], 1, LEASE)
    assert broker.nack(d) is True
    [again] = broker.fetch([queue], 1, LEASE)
    assert again.body == b"original"


def test_nack_goes_behind_messages_already_waiting(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a"), out(queue, "b")])
    [a] = broker.fetch([queue], 1, LEASE)
    clock.advance(1)
    broker.nack(a)
    assert ids(broker.fetch([queue], 10, LEASE)) == ["b", "a"]


@pytest.mark.needs("clock_leases")
def test_nack_is_not_a_lease_expiry(
    make_broker: Callable[..., Broker], queue: str, clock: Any
) -> None:
    broker = make_broker(max_lease_expiries=2)
    broker.publish([out(queue, "a")])
    for attempt in range(1, 6):
        [d] = broker.fetch([queue], 1, LEASE)
        assert (d.attempt, d.lease_expiries) == (attempt, 0)
        assert broker.nack(d, 1.0) is True
        clock.advance(1.5)
    assert broker.dead_letters(queue) == []
    assert stats_of(broker, queue) == QueueStats(ready=1)


def test_release_makes_the_message_due_at_once(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a"), out(queue, "b")])
    a, b = broker.fetch([queue], 2, LEASE)
    broker.release([a, b])
    assert stats_of(broker, queue) == QueueStats(ready=2)
    got = broker.fetch([queue], 10, LEASE)
    assert [(d.id, d.attempt, d.lease_expiries) for d in got] == [("a", 2, 0), ("b", 2, 0)]


def test_release_is_not_a_lease_expiry(make_broker: Callable[..., Broker], queue: str) -> None:
    broker = make_broker(max_lease_expiries=1)
    broker.publish([out(queue, "a")])
    for _ in range(3):
        [d] = broker.fetch([queue], 1, LEASE)
        assert d.lease_expiries == 0
        broker.release([d])
    assert broker.dead_letters(queue) == []


def test_release_of_a_gone_message_changes_nothing(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    [d] = broker.fetch([queue], 1, LEASE)
    broker.ack([d])
    broker.release([d])
    broker.release([])
    assert broker.fetch([queue], 1, LEASE) == []
    assert queue not in broker.stats()


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letter(broker: Broker, queue: str, new_queue: Callable[[], str], clock: Any) -> None:
    other = new_queue()
    broker.publish([out(queue, "a", b"A"), out(queue, "b", b"B"), out(other, "c")])
    a, b = broker.fetch([queue], 2, LEASE)
    [c] = broker.fetch([other], 1, LEASE)
    t1 = clock.now
    assert broker.dead_letter(a, "cannot decode") is True
    t2 = clock.advance(1)
    assert broker.dead_letter(b, "unknown task") is True
    assert broker.dead_letter(b, "twice") is False
    clock.advance(1)
    assert broker.dead_letter(c, "elsewhere") is True

    found = [(d.id, d.queue, d.body, d.reason, d.dead_at) for d in broker.dead_letters(queue)]
    assert found == [
        ("b", queue, b"B", "unknown task", t2),
        ("a", queue, b"A", "cannot decode", t1),
    ]
    assert [d.id for d in broker.dead_letters(queue, limit=1)] == ["b"]
    assert [d.id for d in broker.dead_letters(other)] == ["c"]
    everywhere = [d.id for d in broker.dead_letters(limit=1000) if d.queue in (queue, other)]
    assert everywhere == ["c", "b", "a"]

    assert broker.ack([a]) == [False]
    clock.advance(10 * LEASE)
    assert broker.fetch([queue, other], 10, LEASE) == []
    assert stats_of(broker, queue) == QueueStats(dead=2)
    assert stats_of(broker, other) == QueueStats(dead=1)


def test_dead_letter_needs_a_lease(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    assert broker.dead_letter(Delivery("a", queue, b"a", 0), "not leased") is False
    assert broker.dead_letters(queue) == []


def test_dead_letters_of_an_unknown_queue(broker: Broker, new_queue: Callable[[], str]) -> None:
    assert broker.dead_letters(new_queue()) == []


# -- purge and stats -------------------------------------------------------------------------


@pytest.mark.needs("clock_etas")
def test_purge_removes_ready_and_delayed_not_leased(
    broker: Broker, queue: str, new_queue: Callable[[], str], clock: Any
) -> None:
    other = new_queue()
    broker.publish([out(queue, "leased", priority=9)])
    assert ids(broker.fetch([queue], 1, LEASE)) == ["leased"]
    broker.publish(
        [
            out(queue, "r1"),
            out(queue, "r2"),
            out(queue, "later", eta=clock.now + 100),
            out(other, "keep"),
        ]
    )
    assert broker.purge(queue) == 3
    assert stats_of(broker, queue) == QueueStats(leased=1)
    assert stats_of(broker, other) == QueueStats(ready=1)
    assert broker.purge(queue) == 0
    assert broker.purge(new_queue()) == 0
    clock.advance(200)  # the delayed one would be due now, had it survived
    assert ids(broker.fetch([queue], 10, LEASE)) == ["leased"]  # its lease ran out


def test_purge_keeps_the_leased_message_ackable(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a"), out(queue, "b")])
    [a] = broker.fetch([queue], 1, LEASE)
    assert broker.purge(queue) == 1
    assert broker.ack([a]) == [True]
    assert queue not in broker.stats()


def test_purge_keeps_dead_letters(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    [a] = broker.fetch([queue], 1, LEASE)
    broker.dead_letter(a, "bad")
    assert broker.purge(queue) == 0
    assert [d.id for d in broker.dead_letters(queue)] == ["a"]


@pytest.mark.needs("full_stats")
def test_stats_per_queue(
    broker: Broker, queue: str, new_queue: Callable[[], str], clock: Any
) -> None:
    other, empty = new_queue(), new_queue()
    broker.publish([out(queue, f"m{i}") for i in range(5)])
    broker.publish([out(queue, "later", eta=clock.now + 60), out(other, "x")])
    m0, m1, _ = broker.fetch([queue], 3, LEASE)
    broker.dead_letter(m0, "bad")
    broker.ack([m1])
    stats = broker.stats()
    assert stats[queue] == QueueStats(ready=2, delayed=1, leased=1, dead=1)
    assert stats[other] == QueueStats(ready=1)
    assert empty not in stats
    assert isinstance(stats[queue], QueueStats)


def test_stats_of_a_queue_with_only_dead_letters(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    [a] = broker.fetch([queue], 1, LEASE)
    broker.dead_letter(a, "bad")
    assert broker.stats()[queue] == QueueStats(dead=1)


# -- publishing the same id ------------------------------------------------------------------


@pytest.mark.needs("id_dedup")
def test_publishing_a_queued_id_again_is_a_no_op(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a", b"first")])
    broker.publish([out(queue, "a", b"second", priority=9)])
    assert stats_of(broker, queue) == QueueStats(ready=1)
    [d] = broker.fetch([queue], 10, LEASE)
    assert d.body == b"first"
    broker.publish([out(queue, "a", b"third")])  # while leased
    assert broker.fetch([queue], 10, LEASE) == []
    assert broker.ack([d]) == [True]
    assert queue not in broker.stats()


@pytest.mark.needs("id_dedup")
def test_publishing_a_delayed_id_again_is_a_no_op(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "a", b"first", eta=clock.now + 60)])
    broker.publish([out(queue, "a", b"second")])
    assert broker.fetch([queue], 10, LEASE) == []
    assert stats_of(broker, queue) == QueueStats(delayed=1)


def test_an_acked_id_can_be_published_again(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a", b"first")])
    [d] = broker.fetch([queue], 1, LEASE)
    broker.ack([d])
    broker.publish([out(queue, "a", b"second")])
    [again] = broker.fetch([queue], 1, LEASE)
    assert (again.body, again.attempt) == (b"second", 1)


# -- batches and concurrency -----------------------------------------------------------------


def test_batches(broker: Broker, queue: str) -> None:
    all_ids = [f"msg-{i:04d}" for i in range(1000)]
    broker.publish([out(queue, i) for i in all_ids])
    assert stats_of(broker, queue) == QueueStats(ready=1000)
    seen: list[str] = []
    while batch := broker.fetch([queue], 100, LEASE):
        assert len(batch) == 100
        assert broker.ack(batch) == [True] * len(batch)
        seen.extend(ids(batch))
    assert seen == all_ids  # publish order, each exactly once
    assert queue not in broker.stats()


def test_concurrent_consumers_get_each_message_once(
    broker_kind: Any, broker: Broker, make_broker: Callable[..., Broker], queue: str
) -> None:
    """Several threads (each with its own broker object where the kind is shared, as
    separate processes would) fetch and ack: every message is acked exactly once."""
    all_ids = {f"m{i}" for i in range(600)}
    broker.publish([out(queue, i) for i in sorted(all_ids)])
    consumers = [make_broker() if broker_kind.shared else broker for _ in range(4)]
    acked: list[list[str]] = [[] for _ in consumers]
    errors: list[BaseException] = []
    start = threading.Barrier(len(consumers))

    def consume(index: int) -> None:
        try:
            start.wait()
            while batch := consumers[index].fetch([queue], 7, LEASE):
                results = consumers[index].ack(batch)
                assert results == [True] * len(batch)
                acked[index].extend(ids(batch))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(consumers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    everything = [i for part in acked for i in part]
    assert len(everything) == len(all_ids)
    assert set(everything) == all_ids
    assert queue not in broker.stats()


@pytest.mark.needs("shared_leases")
def test_a_second_broker_object_sees_the_same_queues(
    broker_kind: Any, broker: Broker, make_broker: Callable[..., Broker], queue: str
) -> None:
    if not broker_kind.shared:
        pytest.skip(f"{broker_kind.name} brokers do not share state between objects")
    broker.publish([out(queue, "a")])
    other = make_broker()
    [d] = other.fetch([queue], 1, LEASE)
    assert broker.fetch([queue], 1, LEASE) == []
    assert broker.ack([d]) == [True]  # the lease lives in the broker, not the object
    assert other.stats().get(queue) is None


def _bury(broker: Broker, queue: str, names: Sequence[str]) -> None:
    broker.publish([out(queue, n, priority=7) for n in names])
    for d in fetch_all(broker, [queue]):
        assert broker.dead_letter(d, f"reason {d.id}")


def test_replay_puts_dead_letters_back(broker: Broker, queue: str, new_queue: Any) -> None:
    other = new_queue()
    _bury(broker, queue, ["a", "b", "c"])
    _bury(broker, other, ["x"])
    assert broker.replay(["b"]) == 1
    [d] = fetch_all(broker, [queue])
    assert (d.id, d.attempt, d.lease_expiries) == ("b", 1, 0)
    assert d.body == out(queue, "b").body  # the original bytes
    assert sorted(dl.id for dl in broker.dead_letters(queue)) == ["a", "c"]
    assert broker.replay(queue=queue) == 2
    assert sorted(ids(fetch_all(broker, [queue]))) == ["a", "c"]
    assert broker.dead_letters(queue) == []
    assert [dl.id for dl in broker.dead_letters(other)] == ["x"]  # other queues untouched
    assert broker.replay([]) == 0
    assert broker.replay(["nope"]) == 0


@pytest.mark.needs("id_dedup")
def test_replay_skips_an_id_that_is_queued_again(broker: Broker, queue: str) -> None:
    _bury(broker, queue, ["a"])
    broker.publish([out(queue, "a", b"new")])
    assert broker.replay(["a"]) == 0
    assert [dl.id for dl in broker.dead_letters(queue)] == ["a"]
    assert [d.body for d in fetch_all(broker, [queue])] == [b"new"]


def test_purge_dead(broker: Broker, queue: str, new_queue: Any) -> None:
    other = new_queue()
    _bury(broker, queue, ["a", "b"])
    _bury(broker, other, ["x"])
    assert broker.purge_dead(queue) == 2
    assert broker.dead_letters(queue) == []
    assert stats_of(broker, queue) == QueueStats()
    assert broker.purge_dead(other) == 1
    assert broker.dead_letters(other) == []


# -- revoke ----------------------------------------------------------------------------------


@pytest.mark.needs("revoke_deletes")
def test_revoke_deletes_ready_and_delayed_messages(broker: Broker, queue: str, clock: Any) -> None:
    broker.publish([out(queue, "ready"), out(queue, "later", eta=clock() + 60), out(queue, "kept")])
    assert sorted(broker.revoke(["ready", "later", "never-sent"])) == ["later", "ready"]
    assert broker.revoked(["ready", "later", "never-sent", "kept"]) == {
        "ready": False,
        "later": False,
        "never-sent": False,
    }
    clock.advance(120)
    assert ids(fetch_all(broker, [queue])) == ["kept"]


@pytest.mark.needs("revoke_deletes")
def test_a_revoked_id_published_later_is_dropped(broker: Broker, queue: str) -> None:
    broker.revoke(["early"], terminate=True)
    broker.publish([out(queue, "early"), out(queue, "other")])
    assert ids(fetch_all(broker, [queue])) == ["other"]
    assert broker.revoked(["early", "other"]) == {"early": True}


@pytest.mark.needs("revoke_deletes")
def test_a_revoked_leased_message_stays_with_its_worker(broker: Broker, queue: str) -> None:
    broker.publish([out(queue, "a")])
    [d] = broker.fetch([queue], 10, LEASE)
    assert broker.revoke(["a"]) == []
    assert broker.renew([d], LEASE) == [True]
    assert broker.ack([d]) == [True]
    assert stats_of(broker, queue) == QueueStats()


@pytest.mark.needs("revoke_deletes")
@pytest.mark.parametrize("ending", ["expiry", "nack", "release"])
def test_a_revoked_leased_message_comes_back_as_a_redelivery(
    broker: Broker, queue: str, clock: Any, ending: str
) -> None:
    """The worker that fetches it again sees attempt > 1 and asks `revoked()` first."""
    broker.publish([out(queue, "a")])
    [d] = broker.fetch([queue], 10, LEASE)
    broker.revoke(["a"])
    if ending == "expiry":
        clock.advance(LEASE + 1)
    elif ending == "nack":
        broker.nack(d, 0.0, b"again")
    else:
        broker.release([d])
    [again] = broker.fetch([queue], 10, LEASE)
    assert (again.id, again.attempt) == ("a", 2)
    assert broker.revoked(["a"]) == {"a": False}


def test_revoked_ids_are_forgotten_after_a_day(broker: Broker, queue: str, clock: Any) -> None:
    broker.revoke(["a"])
    clock.advance(86400 + 1)
    assert broker.revoked(["a"]) == {}
    broker.publish([out(queue, "a")])
    assert ids(fetch_all(broker, [queue])) == ["a"]


# -- rate limits -----------------------------------------------------------------------------


def test_throttle_spaces_the_slots_of_a_key(broker: Broker, clock: Any) -> None:
    start = clock()
    assert [broker.throttle("k", 0.5) for _ in range(3)] == pytest.approx(
        [start, start + 0.5, start + 1.0]
    )
    assert broker.throttle("other", 0.5) == pytest.approx(start)
    clock.advance(10)  # a quiet spell does not bank slots for a burst later
    assert broker.throttle("k", 0.5) == pytest.approx(start + 10)
    assert broker.throttle("k", 0.5) == pytest.approx(start + 10.5)


# -- idempotency keys ------------------------------------------------------------------------


def test_a_taken_key_is_not_published_again(broker: Broker, queue: str, clock: Any) -> None:
    assert broker.publish([out(queue, "first", key="k", key_ttl=60)]) == {}
    assert broker.publish([out(queue, "second", key="k", key_ttl=60), out(queue, "free")]) == {
        "second": "first"
    }
    fetched = fetch_all(broker, [queue])
    assert ids(fetched) == ["first", "free"]
    broker.ack(fetched)
    # The key outlives the message: within its ttl a done task is not sent again either.
    assert broker.publish([out(queue, "third", key="k", key_ttl=60)]) == {"third": "first"}
    clock.advance(61)
    assert broker.publish([out(queue, "fourth", key="k", key_ttl=60)]) == {}
    assert ids(fetch_all(broker, [queue])) == ["fourth"]


def test_one_key_twice_in_one_batch(broker: Broker, queue: str) -> None:
    taken = broker.publish(
        [out(queue, "a", key="same", key_ttl=60), out(queue, "b", key="same", key_ttl=60)]
    )
    assert taken == {"b": "a"}
    assert ids(fetch_all(broker, [queue])) == ["a"]


def test_take_keys_takes_them_without_storing_messages(
    broker: Broker, queue: str, clock: Any
) -> None:
    assert broker.take_keys([out(queue, "a", key="k", key_ttl=60), out(queue, "unkeyed")]) == {}
    assert broker.fetch([queue], 10, LEASE) == []
    # The same keys as publish takes: either way, the first holder wins.
    assert broker.publish([out(queue, "b", key="k", key_ttl=60)]) == {"b": "a"}
    assert broker.publish([out(queue, "c", key="k2", key_ttl=60)]) == {}
    assert broker.take_keys([out(queue, "d", key="k2", key_ttl=60)]) == {"d": "c"}
    clock.advance(61)
    assert broker.take_keys([out(queue, "e", key="k", key_ttl=60)]) == {}


# -- the beat's state --------------------------------------------------------------------------


def test_beat_lease_has_one_holder_and_a_fencing_token(broker: Broker, clock: Any) -> None:
    first = broker.beat_lead("a", 5)
    assert first is not None
    assert broker.beat_lead("b", 5) is None
    assert broker.beat_lead("a", 5) == first  # kept: the same token
    clock.advance(6)
    second = broker.beat_lead("b", 5)  # a's lease ran out: b takes it
    assert second is not None and second > first
    assert broker.beat_lead("a", 5) is None
    # The old leader's writes are refused; the new one's are kept, and never move back.
    assert broker.beat_record(first, {"e": 100.0}) is False
    assert broker.beat_record(second, {"e": 100.0, "f": 5.0}) is True
    assert broker.beat_record(second, {"e": 90.0}) is True
    assert broker.beat_ticks() == {"e": 100.0, "f": 5.0}


def test_beat_entries_are_stored_by_name(broker: Broker) -> None:
    assert broker.beat_entries() == {}
    broker.beat_set_entry("x", b'{"task": "t"}')
    broker.beat_set_entry("y", b"{}")
    broker.beat_set_entry("x", b'{"task": "u"}')
    broker.beat_set_entry("y", None)
    broker.beat_set_entry("never-added", None)
    assert broker.beat_entries() == {"x": b'{"task": "u"}'}
