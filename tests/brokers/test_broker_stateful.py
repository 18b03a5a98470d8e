"""A Hypothesis state machine of the broker contract, on a fake clock.

A model holds every message's state (queued, leased, dead, acked, purged) and predicts each
call's answer; after every step the broker's stats and dead letters must match the model,
and at the end a drain must hand out exactly the messages the model says are still queued.

One point the contract leaves open: a lease that ran out is taken back at "some" fetch
(SQLite: any fetch; memory: a fetch of that message's queue), and until then its holder may
still ack it. So when a lease has run out, fetch asks for every queue of the test, which
makes the moment of the take-back the same everywhere.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from celeriac.brokers import Broker, Delivery, Outgoing, QueueStats

MAX_LEASE_EXPIRIES = 2
N_QUEUES = 2

QUEUED, LEASED, DEAD, ACKED, PURGED = "queued", "leased", "dead", "acked", "purged"


@dataclass
class Model:
    """What the broker should hold for one message id."""

    id: str
    queue: str
    body: bytes
    priority: int
    eta: float
    seq: int
    status: str = QUEUED
    attempt: int = 0
    lease_until: float = 0.0
    lease_expiries: int = 0
    reason: str = ""
    dead_at: float = 0.0
    dead_event: int = 0  # dead letters of one event (a fetch) may come in any order


class BrokerContract(RuleBasedStateMachine):
    """Subclassed per test with `connect(clock)` returning a broker on that clock."""

    shared: bool = False  # two broker objects see the same queues: "restart" is possible

    def connect(self, clock: Callable[[], float]) -> Broker:
        raise NotImplementedError

    deliveries = Bundle("deliveries")

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_700_000_000.0
        self.broker = self.connect(self.clock)
        self.tag = tag = uuid.uuid4().hex[:12]  # ids and queues unique across examples
        self.queues = [f"sm-{tag}-{i}" for i in range(N_QUEUES)]
        self.messages: dict[str, Model] = {}
        self.counter = 0  # message ids, seqs and events

    def clock(self) -> float:
        return self.now

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    # -- the model -------------------------------------------------------------------------

    def _in(self, *statuses: str) -> list[Model]:
        return [m for m in self.messages.values() if m.status in statuses]

    def _lease_ran_out(self) -> bool:
        return any(m.lease_until <= self.now for m in self._in(LEASED))

    def _owned(self, d: Delivery) -> Model | None:
        m = self.messages.get(d.id)
        if m is None or m.status != LEASED or m.attempt != d.attempt:
            event("stale delivery refused")
            return None
        return m

    def _model_fetch(self, queues: list[str], limit: int, lease: float) -> list[Model]:
        if not queues or limit <= 0:
            return []
        fetch_event = self._next()
        for m in self._in(LEASED):
            if m.queue in queues and m.lease_until <= self.now:
                m.lease_expiries += 1
                if m.lease_expiries >= MAX_LEASE_EXPIRIES:
                    m.status, m.dead_at, m.dead_event = DEAD, self.now, fetch_event
                    m.reason = "lease expired"
                    event("dead-lettered by lease expiry")
                else:
                    m.status = QUEUED
                    event("lease expired")
        due = [m for m in self._in(QUEUED) if m.queue in queues and m.eta <= self.now]
        due.sort(key=lambda m: (-m.priority, m.eta, m.seq))
        for m in due[:limit]:
            m.status, m.attempt, m.lease_until = LEASED, m.attempt + 1, self.now + lease
        return due[:limit]

    def _check_fetch(self, queues: list[str], limit: int, lease: float) -> list[Delivery]:
        expected = [
            (m.id, m.queue, m.body, m.attempt, m.lease_expiries)
            for m in self._model_fetch(queues, limit, lease)
        ]
        got = self.broker.fetch(queues, limit, lease)
        assert [(d.id, d.queue, d.body, d.attempt, d.lease_expiries) for d in got] == expected
        return got

    # -- rules -----------------------------------------------------------------------------

    @rule(
        batch=st.lists(
            st.tuples(
                st.integers(0, N_QUEUES - 1),
                st.integers(0, 9),
                st.sampled_from([None, -1.0, 0.0, 0.5, 3.0]),
                st.binary(max_size=6),
            ),
            min_size=1,
            max_size=4,
        ),
        data=st.data(),
    )
    def publish(self, batch: list[tuple[int, int, float | None, bytes]], data: Any) -> None:
        outgoing = []
        for queue, priority, delay, body in batch:
            mid = f"{self.tag}-{self._next()}"
            eta = None if delay is None else self.now + delay
            outgoing.append(Outgoing(mid, self.queues[queue], body, priority, eta))
        waiting = sorted(m.id for m in self._in(QUEUED, LEASED))
        if waiting and data.draw(st.booleans(), label="republish"):
            again = data.draw(st.sampled_from(waiting), label="id already queued")
            outgoing.insert(
                data.draw(st.integers(0, len(outgoing))), Outgoing(again, self.queues[0], b"dup", 9)
            )
            event("republished a queued id")
        self.broker.publish(outgoing)
        for o in outgoing:
            if o.id not in self.messages:
                eta = self.now if o.eta is None else o.eta
                seq = self._next()
                self.messages[o.id] = Model(o.id, o.queue, o.body, o.priority, eta, seq)

    @rule(
        target=deliveries,
        which=st.lists(st.integers(0, N_QUEUES - 1), min_size=1, max_size=3),
        limit=st.integers(0, 4),
        lease=st.sampled_from([0.5, 1.5, 4.0]),
    )
    def fetch(self, which: list[int], limit: int, lease: float) -> MultipleResults[Delivery]:
        queues = [self.queues[i] for i in which]
        if queues and self._lease_ran_out():
            queues = list(self.queues)  # see the module docstring
        return multiple(*self._check_fetch(queues, limit, lease))

    @rule(d=deliveries, more=st.lists(deliveries, max_size=2))
    def ack(self, d: Delivery, more: list[Delivery]) -> None:
        ds = [d, *more]
        expected = []
        for delivery in ds:
            m = self._owned(delivery)
            if m is not None:
                m.status = ACKED
                event("acked")
            expected.append(m is not None)
        assert self.broker.ack(ds) == expected

    @rule(d=deliveries, more=st.lists(deliveries, max_size=2), lease=st.sampled_from([1.0, 4.0]))
    def renew(self, d: Delivery, more: list[Delivery], lease: float) -> None:
        ds = [d, *more]
        expected = []
        for delivery in ds:
            m = self._owned(delivery)
            if m is not None:
                m.lease_until = self.now + lease
            expected.append(m is not None)
        assert self.broker.renew(ds, lease) == expected

    @rule(
        d=deliveries,
        delay=st.sampled_from([0.0, 0.5, 2.0]),
        body=st.none() | st.binary(max_size=6),
    )
    def nack(self, d: Delivery, delay: float, body: bytes | None) -> None:
        m = self._owned(d)
        if m is not None:
            m.status, m.eta, m.seq = QUEUED, self.now + delay, self._next()
            if body is not None:
                m.body = body
            event("nacked")
        assert self.broker.nack(d, delay, body) is (m is not None)

    @rule(d=deliveries, more=st.lists(deliveries, max_size=2))
    def release(self, d: Delivery, more: list[Delivery]) -> None:
        ds = [d, *more]
        for delivery in ds:
            m = self._owned(delivery)
            if m is not None:
                m.status = QUEUED
                event("released")
        self.broker.release(ds)

    @rule(d=deliveries, reason=st.text("abc xyz:", min_size=1, max_size=12))
    def dead_letter(self, d: Delivery, reason: str) -> None:
        m = self._owned(d)
        if m is not None:
            m.status, m.reason, m.dead_at, m.dead_event = DEAD, reason, self.now, self._next()
            event("dead-lettered by a worker")
        assert self.broker.dead_letter(d, reason) is (m is not None)

    @rule(queue=st.integers(0, 3 * N_QUEUES - 1))
    def purge(self, queue: int) -> None:
        """Purge one of the queues, or (more often, so that purges do not empty the test
        too fast) a queue nobody uses."""
        if queue >= N_QUEUES:
            assert self.broker.purge(f"{self.tag}-unused") == 0
            return
        doomed = [m for m in self._in(QUEUED) if m.queue == self.queues[queue]]
        for m in doomed:
            m.status = PURGED
            event("purged")
        assert self.broker.purge(self.queues[queue]) == len(doomed)

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.0, 8.0]), restart=st.integers(0, 3))
    def advance_clock(self, seconds: float, restart: int) -> None:
        """Let time pass; sometimes restart too: a new broker object on the same store, as
        after a crash, where the broker keeps its state outside the process."""
        self.now += seconds
        if restart == 0 and self.shared:
            self.broker.close()
            self.broker = self.connect(self.clock)
            event("restarted")

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def stats_match(self) -> None:
        stats = self.broker.stats()
        for queue in self.queues:
            mine = [m for m in self.messages.values() if m.queue == queue]
            expected = QueueStats(
                ready=sum(
                    (m.status == QUEUED and m.eta <= self.now)
                    or (m.status == LEASED and m.lease_until <= self.now)
                    for m in mine
                ),
                delayed=sum(m.status == QUEUED and m.eta > self.now for m in mine),
                leased=sum(m.status == LEASED and m.lease_until > self.now for m in mine),
                dead=sum(m.status == DEAD for m in mine),
            )
            assert stats.get(queue, QueueStats()) == expected, queue

    @invariant()
    def dead_letters_match(self) -> None:
        for queue in self.queues:
            found = self.broker.dead_letters(queue, limit=100_000)
            expected = {m.id: m for m in self._in(DEAD) if m.queue == queue}
            assert sorted(d.id for d in found) == sorted(expected)
            for d in found:
                m = expected[d.id]
                assert (d.queue, d.body, d.dead_at) == (m.queue, m.body, m.dead_at)
                assert m.reason in d.reason
            events = [expected[d.id].dead_event for d in found]
            assert events == sorted(events, reverse=True), "not newest first"

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # a failing step has already said what is wrong
                self._drain()
        finally:
            self.broker.close()

    def _drain(self) -> None:
        """Nothing lost: once every lease and eta has passed, exactly the queued messages
        come out, and after acking them only the dead letters are left."""
        self.now += 1000.0
        got = self._check_fetch(list(self.queues), 100_000, 1.0)
        assert self.broker.ack(got) == [True] * len(got)
        for d in got:
            self.messages[d.id].status = ACKED
        assert not self._in(QUEUED, LEASED)
        self.stats_match()
        self.dead_letters_match()


@pytest.mark.needs("clock_leases", "full_stats", "id_dedup")
def test_broker_contract_state_machine(
    broker_kind: Any, make_broker: Callable[..., Broker]
) -> None:
    class Machine(BrokerContract):
        shared = broker_kind.shared

        def connect(self, clock: Callable[[], float]) -> Broker:
            return make_broker(clock=clock, max_lease_expiries=MAX_LEASE_EXPIRIES)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
