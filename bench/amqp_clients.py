"""Compare three Python AMQP 0-9-1 clients against a local RabbitMQ, on a quorum queue.

Run (from the repository root, with RabbitMQ listening on 127.0.0.1:5672, guest/guest)::

    .venv/bin/python bench/amqp_clients.py
    .venv/bin/python bench/amqp_clients.py --url amqp://user:pw@host:5672/vhost --repeats 3

Clients: aiormq (raw channel API), aio-pika (Channel / Exchange / Queue objects) and
pika (``BlockingConnection``).  For every client, and every repetition, the script
declares a durable quorum queue (``x-queue-type: quorum``) with a fresh random name
and measures:

1. publishing N persistent messages (~200-byte body) through the default exchange
   with publisher confirms, (a) one at a time, waiting for each confirm, and
   (b) pipelined: all N publishes in flight, then waiting for every confirm.
   pika's BlockingConnection waits for the confirm inside each ``basic_publish``
   once ``confirm_delivery()`` is on, so (b) is reported as "n/a" for pika;
2. consuming those N messages with ``basic.consume``, ``basic.qos(prefetch_count=64)``
   and a ``multiple=True`` ack every 32 messages, reported in msgs/s;
3. the round trip of a ``basic.get`` on the (now) empty queue: p50 over 500 tries, in µs.

Each measurement is run ``--repeats`` times (default 2; clients interleaved so
background load hits them alike) and the best value is printed, as one Markdown
table.  Every queue the script declares is deleted at the end, also on error or
Ctrl-C; an unreachable broker gives a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import NoReturn
from urllib.parse import urlsplit

import aio_pika
import aiormq
import pika
import pika.exceptions
from pamqp.commands import Basic
from pika.adapters.blocking_connection import BlockingChannel

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
BODY = b"celeriac-bench:" + b"x" * 185  # 200 bytes
QUEUE_ARGS = {"x-queue-type": "quorum"}
PREFETCH = 64
ACK_BATCH = 32
GET_TRIES = 500
GET_WARMUP = 20
CONSUME_TIMEOUT = 60.0  # seconds; a stuck consumer fails the run instead of hanging it

# Names of every queue declared and not yet deleted; swept at exit whatever happened.
_live_queues: set[str] = set()


@dataclass
class Result:
    publish_one: float  # msgs/s
    publish_pipelined: float | None  # msgs/s, None when the client cannot pipeline confirms
    consume: float  # msgs/s
    get_p50_us: float


def new_queue_name() -> str:
    name = f"celeriac-bench-{uuid.uuid4().hex[:12]}"
    _live_queues.add(name)
    return name


def rate(n: int, started: float) -> float:
    return n / (time.perf_counter() - started)


def p50_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000


def check_acks(confirms: list[object]) -> None:
    bad = [c for c in confirms if not isinstance(c, Basic.Ack)]
    if bad:
        raise RuntimeError(f"{len(bad)} publishes were not acked by the broker: {bad[0]!r}")


# --------------------------------------------------------------------------- aiormq


async def _aiormq_consume(ch: aiormq.abc.AbstractChannel, queue: str, n: int) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    count = 0

    async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
        nonlocal count
        count += 1
        if count % ACK_BATCH == 0 or count == n:
            await ch.basic_ack(msg.delivery.delivery_tag, multiple=True)
        if count == n and not done.done():
            done.set_result(None)

    await ch.basic_qos(prefetch_count=PREFETCH)
    started = time.perf_counter()
    ok = await ch.basic_consume(queue, on_message)
    await asyncio.wait_for(done, CONSUME_TIMEOUT)
    result = rate(n, started)
    await ch.basic_cancel(ok.consumer_tag)
    return result


async def _aiormq_run(url: str, n: int) -> Result:
    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        queue = new_queue_name()
        await ch.queue_declare(queue, durable=True, arguments=QUEUE_ARGS)
        try:
            props = Basic.Properties(delivery_mode=2)

            started = time.perf_counter()
            for _ in range(n):
                check_acks([await ch.basic_publish(BODY, routing_key=queue, properties=props)])
            publish_one = rate(n, started)
            await ch.queue_purge(queue)

            started = time.perf_counter()
            pending = [
                ch.basic_publish(BODY, routing_key=queue, properties=props) for _ in range(n)
            ]
            check_acks(await asyncio.gather(*pending))
            publish_pipelined = rate(n, started)

            consume = await _aiormq_consume(ch, queue, n)

            samples = []
            for i in range(GET_WARMUP + GET_TRIES):
                t0 = time.perf_counter_ns()
                msg = await ch.basic_get(queue)
                samples.append(time.perf_counter_ns() - t0)
                if not isinstance(msg.delivery, Basic.GetEmpty):
                    raise RuntimeError(f"queue not empty on basic.get #{i}")
        finally:
            with contextlib.suppress(Exception):  # else sweep_queues() deletes it
                await ch.queue_delete(queue)
                _live_queues.discard(queue)
    finally:
        await conn.close()
    return Result(publish_one, publish_pipelined, consume, p50_us(samples[GET_WARMUP:]))


def run_aiormq(url: str, n: int) -> Result:
    return asyncio.run(_aiormq_run(url, n))


# ------------------------------------------------------------------------- aio-pika


async def _aio_pika_consume(queue: aio_pika.abc.AbstractQueue, n: int) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    count = 0

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        count += 1
        if count % ACK_BATCH == 0 or count == n:
            await msg.ack(multiple=True)
        if count == n and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    tag = await queue.consume(on_message)
    await asyncio.wait_for(done, CONSUME_TIMEOUT)
    result = rate(n, started)
    await queue.cancel(tag)
    return result


async def _aio_pika_run(url: str, n: int) -> Result:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        name = new_queue_name()
        queue = await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGS)
        try:
            exchange = channel.default_exchange

            def message() -> aio_pika.Message:
                return aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

            started = time.perf_counter()
            for _ in range(n):
                check_acks([await exchange.publish(message(), routing_key=name)])
            publish_one = rate(n, started)
            await queue.purge()

            started = time.perf_counter()
            pending = [exchange.publish(message(), routing_key=name) for _ in range(n)]
            check_acks(await asyncio.gather(*pending))
            publish_pipelined = rate(n, started)

            consume = await _aio_pika_consume(queue, n)

            samples = []
            for i in range(GET_WARMUP + GET_TRIES):
                t0 = time.perf_counter_ns()
                msg = await queue.get(fail=False)
                samples.append(time.perf_counter_ns() - t0)
                if msg is not None:
                    raise RuntimeError(f"queue not empty on basic.get #{i}")
        finally:
            with contextlib.suppress(Exception):  # else sweep_queues() deletes it
                await queue.delete(if_unused=False, if_empty=False)
                _live_queues.discard(name)
    finally:
        await conn.close()
    return Result(publish_one, publish_pipelined, consume, p50_us(samples[GET_WARMUP:]))


def run_aio_pika(url: str, n: int) -> Result:
    return asyncio.run(_aio_pika_run(url, n))


# ----------------------------------------------------------------------------- pika


def pika_params(url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 30
    return params


def _pika_consume(conn: pika.BlockingConnection, ch: BlockingChannel, queue: str, n: int) -> float:
    count = 0
    timed_out = False

    def on_message(
        ch: BlockingChannel, method: pika.spec.Basic.Deliver, _props: object, _body: bytes
    ) -> None:
        nonlocal count
        count += 1
        if count % ACK_BATCH == 0 or count == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if count == n:
            ch.stop_consuming()

    def on_timeout() -> None:
        nonlocal timed_out
        timed_out = True
        ch.stop_consuming()

    ch.basic_qos(prefetch_count=PREFETCH)
    timer = conn.call_later(CONSUME_TIMEOUT, on_timeout)
    started = time.perf_counter()
    ch.basic_consume(queue, on_message)
    ch.start_consuming()  # returns after stop_consuming(), which also cancels the consumer
    result = rate(n, started)
    conn.remove_timeout(timer)
    if timed_out:
        raise TimeoutError(f"pika consumer got {count}/{n} messages in {CONSUME_TIMEOUT}s")
    return result


def run_pika(url: str, n: int) -> Result:
    conn = pika.BlockingConnection(pika_params(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()  # from now on basic_publish blocks until its confirm arrives
        queue = new_queue_name()
        ch.queue_declare(queue, durable=True, arguments=QUEUE_ARGS)
        try:
            props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

            started = time.perf_counter()
            for _ in range(n):  # raises NackError / UnroutableError if not confirmed
                ch.basic_publish("", queue, BODY, properties=props)
            publish_one = rate(n, started)

            consume = _pika_consume(conn, ch, queue, n)

            samples = []
            for i in range(GET_WARMUP + GET_TRIES):
                t0 = time.perf_counter_ns()
                method, _props, _body = ch.basic_get(queue)
                samples.append(time.perf_counter_ns() - t0)
                if method is not None:
                    raise RuntimeError(f"queue not empty on basic.get #{i}")
        finally:
            with contextlib.suppress(Exception):  # else sweep_queues() deletes it
                ch.queue_delete(queue)
                _live_queues.discard(queue)
    finally:
        if conn.is_open:
            conn.close()
    return Result(publish_one, None, consume, p50_us(samples[GET_WARMUP:]))


# ----------------------------------------------------------------------------- main

CLIENTS: dict[str, tuple[str, Callable[[str, int], Result]]] = {
    "aiormq": ("aiormq", run_aiormq),
    "aio-pika": ("aio-pika", run_aio_pika),
    "pika": ("pika", run_pika),
}


def safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 5672}{parts.path or '/'}"


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def broker_version(url: str) -> str:
    """Connect once with pika: exits with a clear message if the broker is unreachable."""
    try:
        conn = pika.BlockingConnection(pika_params(url))
    except pika.exceptions.ProbableAuthenticationError as exc:
        fail(f"RabbitMQ at {safe_url(url)} refused the credentials: {exc!r}")
    except pika.exceptions.AMQPConnectionError as exc:
        fail(f"cannot reach RabbitMQ at {safe_url(url)} (is it running?): {exc!r}")
    try:
        props = conn._impl.server_properties  # pika has no public getter
        raw = props.get("version", b"?")
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    finally:
        conn.close()


def sweep_queues(url: str) -> None:
    """Delete whatever queue a failed run left behind."""
    if not _live_queues:
        return
    try:
        conn = pika.BlockingConnection(pika_params(url))
    except pika.exceptions.AMQPConnectionError as exc:
        names = ", ".join(sorted(_live_queues))
        print(f"warning: could not delete leftover queues ({exc!r}): {names}", file=sys.stderr)
        return
    try:
        for name in sorted(_live_queues):
            ch = conn.channel()
            ch.queue_delete(name)
            ch.close()
            _live_queues.discard(name)
    finally:
        conn.close()


def best(results: list[Result]) -> Result:
    pipelined = [r.publish_pipelined for r in results if r.publish_pipelined is not None]
    return Result(
        publish_one=max(r.publish_one for r in results),
        publish_pipelined=max(pipelined) if pipelined else None,
        consume=max(r.consume for r in results),
        get_p50_us=min(r.get_p50_us for r in results),
    )


def print_table(results: dict[str, Result], server: str, n: int, repeats: int) -> None:
    print(
        "| client | publish one-by-one msg/s | publish pipelined msg/s "
        "| consume+ack msg/s | empty basic.get p50 µs |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        dist = CLIENTS[name][0]
        pipelined = f"{r.publish_pipelined:,.0f}" if r.publish_pipelined is not None else "n/a"
        print(
            f"| {name} {version(dist)} | {r.publish_one:,.0f} | {pipelined} "
            f"| {r.consume:,.0f} | {r.get_p50_us:,.0f} |"
        )
    print()
    print(
        f"Python {platform.python_version()}, RabbitMQ {server}; quorum queue, N={n} "
        f"persistent {len(BODY)}-byte messages, prefetch {PREFETCH}, ack every {ACK_BATCH}, "
        f"basic.get p50 of {GET_TRIES}; best of {repeats}."
    )
    if any(r.publish_pipelined is None for r in results.values()):
        print(
            "n/a: pika's BlockingConnection.basic_publish waits for each confirm once "
            "confirm_delivery() is on, so it cannot keep publishes in flight."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"AMQP URL (default {DEFAULT_URL})")
    parser.add_argument("-n", "--messages", type=int, default=5000, help="messages per phase")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement")
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help="comma-separated subset of " + ",".join(CLIENTS),
    )
    args = parser.parse_args()
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    if unknown := [c for c in names if c not in CLIENTS]:
        parser.error(f"unknown client(s): {', '.join(unknown)}")

    server = broker_version(args.url)
    runs: dict[str, list[Result]] = {name: [] for name in names}
    started = time.perf_counter()
    try:
        for rep in range(1, args.repeats + 1):
            for name in names:  # interleaved, so background load hits every client alike
                t0 = time.perf_counter()
                runs[name].append(CLIENTS[name][1](args.url, args.messages))
                print(
                    f"  run {rep}/{args.repeats} {name}: {time.perf_counter() - t0:.1f}s",
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        print("interrupted; deleting the benchmark queues", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        sweep_queues(args.url)
    print(f"  total {time.perf_counter() - started:.1f}s", file=sys.stderr)
    print_table({name: best(rs) for name, rs in runs.items()}, server, args.messages, args.repeats)


if __name__ == "__main__":
    main()
