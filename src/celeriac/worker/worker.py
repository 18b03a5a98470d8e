"""The consume loop: one asyncio loop per process.

    fetch (batch, leased)  ->  run (loop | threads | processes)  ->  store outcome  ->  ack

Broker and backend calls never block the loop: they run on it through an asyncio client
where the broker has one (Redis), else in I/O threads (`io.py`). So the loop is always free
to run `async def` tasks and the heartbeat, which renews the leases of every message this
process holds — on the loop, not in a task's thread, so that a task that computes for
minutes is not taken for a dead worker.
Outcomes are stored and acked in batches: a message is acked only after its outcome is
stored, and an ack is fenced, so a worker whose lease was lost cannot ack over a new owner.

Shutdown: the first SIGTERM/SIGINT stops fetching, hands back messages not yet started,
and lets running tasks finish until `worker_shutdown_timeout`; then (or at a second
signal) everything still held is handed back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from .. import canvas, states
from ..app import Celeriac
from ..backends.base import TaskMeta
from ..brokers.base import Delivery
from ..control import REVOKED_ERROR
from ..envelope import Envelope, decode, dumps
from ..exceptions import CeleriacError, ConfigurationError, DecodeError, EncodeError, NotRegistered
from ..task import Request, Task
from .executors import AsyncExecutor, Limits, Outcome, ProcessExecutor, ThreadExecutor
from .io import LoopIO, ThreadedIO
from .supervisor import SUPERVISED_ENV

log = logging.getLogger("celeriac.worker")
T = TypeVar("T")

MAX_LOGGED_RESULT = 200
MAX_SHAPES = 10_000  # argument shapes remembered as fitting (bounds memory)
REVOKE_POLL = 1.0  # seconds between asking the broker which held messages were revoked
RATE_SLOT = "rate_slot"  # header: the time slot a rate-limited message waits for
RATE_EARLY = 0.005  # seconds before its slot that a rate-limited message may start


@dataclass
class _Finished:
    delivery: Delivery
    meta: TaskMeta | None  # None: nothing to store (ignore_result)


def _first(*values: Any) -> Any:
    """The first value that was given (not None): an argument, a setting, a default."""
    return next(v for v in values if v is not None)


class Worker:
    def __init__(
        self,
        app: Celeriac,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        app_spec: str | None = None,
        lease: float | None = None,
        prefetch_multiplier: int | None = None,
        shutdown_timeout: float | None = None,
        beat: bool = False,
    ) -> None:
        conf = app.conf
        self.beat = beat
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.pool = pool or conf.worker_pool
        if self.pool not in ("threads", "processes"):
            raise ConfigurationError(f"--pool must be threads or processes, not {self.pool!r}")
        if self.pool == "processes" and not app_spec:
            raise ConfigurationError("the processes pool needs the app's -A spec to load it")
        default = (os.cpu_count() or 1) if self.pool == "processes" else 8
        self.concurrency = _first(concurrency, conf.worker_concurrency, default)
        self.app_spec = app_spec
        self.lease = _first(lease, conf.broker_lease_seconds)
        multiplier = _first(prefetch_multiplier, conf.worker_prefetch_multiplier)
        self.shutdown_timeout = _first(shutdown_timeout, conf.worker_shutdown_timeout)
        for what, value, least in (
            ("concurrency", self.concurrency, 1),
            ("prefetch multiplier", multiplier, 1),
            ("shutdown timeout", self.shutdown_timeout, 0),
        ):
            if value < least:
                raise ConfigurationError(f"{what} must be at least {least}, not {value}")
        if self.lease <= 0:
            raise ConfigurationError(
                f"the lease must be a positive number of seconds, not {self.lease}"
            )
        self.capacity = self.concurrency * multiplier
        self.poll_interval = conf.broker_poll_interval
        self.track_started = conf.task_track_started
        self.held: dict[tuple[str, int], Delivery] = {}  # fetched and not yet acked
        self._finishing: set[tuple[str, int]] = set()  # held, outcome known, ack under way
        self._revoked: dict[str, bool] = {}  # held ids revoked -> terminate
        self.running = 0
        self.processed = 0
        self._shapes_ok: set[tuple[Any, ...]] = set()

    # Running -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        code = asyncio.run(self.main())
        if self.executor.busy:
            # Threads cannot be stopped, and Python would wait for them at exit; their
            # messages are already handed back, so leave now.
            logging.shutdown()
            os._exit(code)
        return code

    async def main(self, ready: Callable[[], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        broker, backend = self.app.broker, self.app.backend  # connects, creates tables
        self.threads = ThreadedIO(broker, backend)
        self.io: LoopIO = broker.on_loop(backend) or self.threads
        self._slots = asyncio.Semaphore(self.concurrency)
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._room = asyncio.Event()
        self._finished: list[_Finished] = []
        self._have_finished = asyncio.Event()
        self._flushing = asyncio.Lock()  # one store-and-ack batch at a time
        self._tasks: set[asyncio.Task[None]] = set()
        self.executor: ThreadExecutor | ProcessExecutor = (
            ProcessExecutor(self.concurrency, self.app_spec or "")
            if self.pool == "processes"
            else ThreadExecutor(self.concurrency)
        )
        self.async_executor = AsyncExecutor()
        supervised = os.environ.get(SUPERVISED_ENV) == "1"
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible outside the main thread (tests run workers in one): no signals there.
            with contextlib.suppress(RuntimeError, ValueError):
                if sig == signal.SIGINT and supervised:
                    # The supervisor turns a Ctrl-C into one SIGTERM for us.
                    loop.add_signal_handler(sig, lambda: None)
                else:
                    loop.add_signal_handler(sig, self.request_stop)
        try:
            self.tasks = await self._call(lambda: self.app.tasks)
            self._banner()
            for warning in await self._call(broker.warnings):
                log.warning("%s", warning)
            threads_stop = threading.Event()
            self._start_threads(threads_stop)
            if ready is not None:
                ready()
            helpers = [
                asyncio.create_task(self._heartbeat()),
                asyncio.create_task(self._acker()),
                asyncio.create_task(self._watch_revokes()),
            ]
            await self._fetch_loop()
            threads_stop.set()
            await self._drain()
            for helper in helpers:
                helper.cancel()
        finally:
            self.executor.shutdown()
            if self.io is not self.threads:
                await self.io.close()
            await self.threads.close()
        log.info("worker stopped after %d tasks", self.processed)
        return 0

    def _start_threads(self, stop: threading.Event) -> None:
        """The beat (`worker -B`) and the Django outbox relay (`task_outbox`), each in a
        thread of its own, until `stop` is set."""
        from ..contrib.django import django_ready

        jobs: list[tuple[str, Callable[[threading.Event], None]]] = []
        if self.beat:
            jobs.append(("celeriac-beat", self.app.beat.run))
        if self.app.conf.task_outbox and django_ready():
            from ..contrib.django.outbox import run_relay

            jobs.append(("celeriac-outbox", lambda event: run_relay(self.app, event)))
        for name, job in jobs:
            threading.Thread(target=job, args=(stop,), name=name, daemon=True).start()

    def request_stop(self) -> None:
        """First call: warm shutdown. Second call: hand everything back now."""
        if self._stop.is_set():
            log.warning("second stop signal: handing back every message now")
            self._hard_stop.set()
        else:
            log.info(
                "stopping: no new tasks; %d running may finish within %.0fs (signal again to hand"
                " them back now)",
                self.running,
                self.shutdown_timeout,
            )
            self._stop.set()
            self._room.set()

    def _banner(self) -> None:
        names = sorted(n for n in self.tasks if not n.startswith("celeriac."))
        log.info(
            "celeriac worker ready: broker %s, queues %s, %s pool of %d, %d tasks: %s",
            self.app.broker.url,
            ",".join(self.queues),
            self.pool,
            self.concurrency,
            len(names),
            ", ".join(names),
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous broker or backend call in the fetching I/O thread."""
        return await self.threads.call(fn, *args)

    # Fetching ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        idle_pause = 0.001
        while not self._stop.is_set():
            room = self.capacity - len(self.held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                deliveries = await self.io.fetch(self.queues, room, self.lease)
            except Exception as exc:  # the worker outlives any broker trouble
                log.error(
                    "fetch failed, retrying in 1s: %s",
                    exc,
                    exc_info=not isinstance(exc, CeleriacError),
                )
                deliveries = []
                idle_pause = 1.0
            if deliveries and not self.app.broker.revoke_deletes_queued:
                await self._learn_revoked(deliveries)
            if deliveries:
                idle_pause = 0.001
                for delivery in deliveries:
                    self.held[(delivery.id, delivery.attempt)] = delivery
                    task = asyncio.create_task(self._handle(delivery))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                continue
            await self._idle(idle_pause)
            idle_pause = min(idle_pause * 2, self.poll_interval)

    async def _learn_revoked(self, deliveries: Sequence[Delivery]) -> None:
        """A broker that keeps revoked messages queued: which of this batch are revoked
        (one question per batch); those are skipped when their turn comes."""
        try:
            revoked = await self._call(self.app.broker.revoked, [d.id for d in deliveries])
        except Exception as exc:  # _watch_revokes asks again about the held ones
            log.error("could not read revoked tasks: %s", exc)
            return
        self._revoked.update(revoked)

    async def _idle(self, timeout: float) -> None:
        """Nothing to fetch: wait until the broker says a message arrived (it may return
        early), `timeout` passes, or we are asked to stop. Acks and lease renewals go on
        meanwhile: the wait has a connection (or thread) of its own."""
        waiting: asyncio.Future[None] = asyncio.ensure_future(self.io.wait(self.queues, timeout))
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([waiting, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not waiting.done():
            waiting.cancel()
        elif waiting.exception() is not None:
            log.error("waiting for messages failed: %s", waiting.exception())
            await asyncio.sleep(min(timeout, 1.0))

    async def _heartbeat(self) -> None:
        """Renew the leases of every held message, every third of the lease."""
        while True:
            await asyncio.sleep(self.lease / 3)
            held = [d for key, d in self.held.items() if key not in self._finishing]
            if not held:
                continue
            try:
                owned = await self.io.renew(held, self.lease)
            except Exception as exc:  # the next beat tries again
                log.error("lease renewal failed: %s", exc)
                continue
            for delivery, ok in zip(held, owned, strict=True):
                if not ok and (delivery.id, delivery.attempt) in self.held:
                    log.warning("lost the lease on %s: it may run again elsewhere", delivery.id)

    async def _watch_revokes(self) -> None:
        """Ask the broker which held messages were revoked: those not started yet are
        skipped when their turn comes, running ones stopped if the revoke says terminate."""
        while True:
            await asyncio.sleep(REVOKE_POLL)
            ids = list({d.id for key, d in self.held.items() if key not in self._finishing})
            if not ids:
                continue
            try:
                revoked = await self._call(self.app.broker.revoked, ids)
            except Exception as exc:  # the next round tries again
                log.error("could not read revoked tasks: %s", exc)
                continue
            for task_id, terminate in revoked.items():
                if task_id in self._revoked:
                    continue
                self._revoked[task_id] = terminate
                if terminate and (
                    self.async_executor.terminate(task_id) or self.executor.terminate(task_id)
                ):
                    log.info("Task [%s] revoked: terminating it", task_id)

    async def _drain(self) -> None:
        """After the stop signal: wait for running tasks up to the deadline, then hand back
        whatever is still held."""
        deadline = asyncio.get_running_loop().time() + self.shutdown_timeout
        while self._tasks and not self._hard_stop.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.warning("shutdown deadline reached with %d tasks running", self.running)
                break
            hard = asyncio.create_task(self._hard_stop.wait())
            await asyncio.wait(
                [*self._tasks, hard], timeout=remaining, return_when="FIRST_COMPLETED"
            )
            hard.cancel()
        await self._flush()
        if self.held:
            back = list(self.held.values())
            log.warning("handing back %d messages", len(back))
            await self._call(self.app.broker.release, back)
            self.held.clear()
        for task in self._tasks:
            task.cancel()

    # Running one message -------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        except Exception:
            # A broker or backend failure mid-way: stop renewing the lease, so that the
            # message runs again elsewhere once it ends. The worker itself goes on.
            log.exception("could not finish message %s; it will be redelivered", delivery.id)
            self._drop_held(delivery)

    async def _process(self, delivery: Delivery) -> None:
        try:
            envelope = decode(self.app.signer.verify(delivery.body))
        except DecodeError as exc:
            await self._dead_letter(delivery, f"DecodeError: {exc}")
            return
        try:
            task = self.tasks.get(envelope.task) or self.app.get_task(envelope.task)
            self._check_arguments(task, envelope)
        except (NotRegistered, TypeError) as exc:
            await self._dead_letter(delivery, f"{type(exc).__name__}: {exc}", envelope)
            return
        if envelope.expires is not None and envelope.expires < time.time():
            log.info("Task %s[%s] expired", envelope.task, envelope.id)
            meta = TaskMeta(envelope.id, states.EXPIRED, envelope.task, date_done=time.time())
            await self._conclude(delivery, envelope, meta)
            return
        if delivery.attempt > 1 and envelope.id not in self._revoked:
            # Fetched again (a retry, a hand-back, a dead worker's): it may have been
            # revoked while it was out. A first delivery cannot be (see brokers/base.py).
            self._revoked.update(await self._call(self.app.broker.revoked, [envelope.id]))
        if await self._skip_if_revoked(delivery, envelope):
            return
        interval = task.options.rate_interval
        if interval is not None and not await self._rate_slot(delivery, envelope, interval):
            return
        # Only now does the message take a slot: bad, expired and rate-limited ones don't.
        async with self._slots:
            if self._stop.is_set():
                return  # never started: handed back by _drain
            self.running += 1
            try:
                await self._run(delivery, envelope, task)
            finally:
                self.running -= 1

    async def _rate_slot(self, delivery: Delivery, envelope: Envelope, interval: float) -> bool:
        """A rate-limited task runs if its turn has come (True). Else it goes back to wait
        in the broker until the time slot reserved for it, carried in its headers."""
        carried = envelope.headers.get(RATE_SLOT)
        if isinstance(carried, int | float):
            slot = float(carried)
        else:
            slot = await self._call(self.app.broker.throttle, f"task:{envelope.task}", interval)
        delay = slot - time.time()
        if delay <= RATE_EARLY:
            return True
        again = msgspec.structs.replace(envelope, headers={**envelope.headers, RATE_SLOT: slot})
        await self._call(self.app.broker.nack, delivery, delay, self.app.encode(again))
        self._drop_held(delivery)
        return False

    async def _run(self, delivery: Delivery, envelope: Envelope, task: Task[Any, Any]) -> None:
        request = Request(
            envelope.id,
            envelope.task,
            envelope.args,
            envelope.kwargs,
            envelope.retries,
            envelope.queue,
            envelope.headers,
            envelope.eta,
        )
        if self.track_started and self.app.backend is not None:
            meta = TaskMeta(envelope.id, states.STARTED, envelope.task)
            await self._call(self.app.backend.store, [meta])
        if await self._skip_if_revoked(delivery, envelope):  # learnt of while it waited
            return
        keyed = (envelope.idempotency_key is not None or task.options.idempotent) and (
            self.app.backend is not None
        )
        if keyed and delivery.attempt > 1:
            done = await self._succeeded_before(envelope)
            if done is not None:  # its stored result stays; what follows it is sent again
                if canvas.is_flow(envelope):
                    await self._call(canvas.advance, self.app, envelope, done)
                self._finish(delivery, None)
                return
        started = time.perf_counter()
        outcome = await self._execute(task, request)
        runtime = time.perf_counter() - started
        if (
            keyed
            and outcome.kind == "success"
            and not (await self.io.renew([delivery], self.lease))[0]
        ):
            # Its lease ran out while it ran, so another worker runs it too: only one of
            # them may record a success, and that is the one holding the lease.
            log.warning(
                "Task %s[%s] lost its lease while running; its result is dropped",
                envelope.task,
                envelope.id,
            )
            self._drop_held(delivery)
            return
        await self._record(delivery, envelope, task, outcome, runtime)

    async def _skip_if_revoked(self, delivery: Delivery, envelope: Envelope) -> bool:
        if envelope.id not in self._revoked:
            return False
        log.info("Task %s[%s] revoked: not run", envelope.task, envelope.id)
        meta = TaskMeta(
            envelope.id, states.REVOKED, envelope.task, REVOKED_ERROR, date_done=time.time()
        )
        await self._conclude(delivery, envelope, meta)
        return True

    async def _succeeded_before(self, envelope: Envelope) -> TaskMeta | None:
        """An idempotent task fetched again: did an earlier run already succeed (and its
        worker die before the ack)? Its stored success if so."""
        backend = self.app.backend
        meta = await self._call(backend.get, envelope.id) if backend is not None else None
        if meta is None or meta.state != states.SUCCESS:
            return None
        log.info("Task %s[%s] already succeeded: not run again", envelope.task, envelope.id)
        return meta

    def _check_arguments(self, task: Task[Any, Any], envelope: Envelope) -> None:
        """Do the arguments fit the function? Whether they bind depends only on how many
        positional ones there are and which keywords, so each such shape is checked once."""
        shape = (task.name, len(envelope.args), *envelope.kwargs)
        if shape in self._shapes_ok:
            return
        signature = inspect.signature(task.fn)
        if task.options.bind:  # the caller does not pass `self`
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        try:
            signature.bind(*envelope.args, **envelope.kwargs)
        except TypeError as exc:
            raise TypeError(f"arguments do not match {task.name}{signature}: {exc}") from None
        if len(self._shapes_ok) < MAX_SHAPES:
            self._shapes_ok.add(shape)

    async def _execute(self, task: Task[Any, Any], request: Request) -> Outcome:
        conf, options = self.app.conf, task.options
        limits = Limits(
            options.soft_time_limit or conf.task_soft_time_limit,
            options.time_limit or conf.task_time_limit,
        )
        executor = self.async_executor if task.is_async else self.executor
        return await executor.run(task, request, limits)

    async def _record(
        self,
        delivery: Delivery,
        envelope: Envelope,
        task: Task[Any, Any],
        outcome: Outcome,
        runtime: float,
    ) -> None:
        name, tid = envelope.task, envelope.id
        if outcome.kind == "success":
            outcome = self._storable(outcome)
        now = time.time()
        if outcome.kind == "success":
            if log.isEnabledFor(logging.INFO):
                shown = repr(outcome.value)
                if len(shown) > MAX_LOGGED_RESULT:
                    shown = shown[:MAX_LOGGED_RESULT] + "..."
                log.info("Task %s[%s] succeeded in %.4fs: %s", name, tid, runtime, shown)
            meta = TaskMeta(tid, states.SUCCESS, name, outcome.value, date_done=now)
        elif outcome.kind == "failure":
            log.error(
                "Task %s[%s] failed in %.4fs: %s: %s\n%s",
                name,
                tid,
                runtime,
                outcome.error_type,
                outcome.error_message,
                outcome.traceback or "",
            )
            error = {"type": outcome.error_type, "message": outcome.error_message}
            meta = TaskMeta(tid, states.FAILURE, name, error, outcome.traceback, date_done=now)
        elif outcome.kind == "revoked":
            log.info("Task %s[%s] terminated (revoked)", name, tid)
            meta = TaskMeta(tid, states.REVOKED, name, REVOKED_ERROR, date_done=now)
        elif outcome.kind == "retry":
            await self._retry(delivery, envelope, outcome, runtime)
            return
        else:
            await self._crashed(delivery, envelope, outcome)
            return
        if outcome.kind == "failure" and task.options.dead_letter_on_failure:
            reason = f"{outcome.error_type}: {outcome.error_message}"
            await self._dead_letter(
                delivery, f"{reason} (after {envelope.retries} retries)", meta=meta
            )
            return
        ignore = task.options.ignore_result
        if ignore is None:
            ignore = self.app.conf.task_ignore_result
        await self._conclude(delivery, envelope, meta, store=not ignore)

    def _storable(self, outcome: Outcome) -> Outcome:
        """A success whose result JSON cannot carry, or is too big to store, is a failure."""
        try:
            size = len(dumps(outcome.value))
        except EncodeError as exc:
            return Outcome("failure", error_type="EncodeError", error_message=str(exc))
        limit = self.app.conf.result_max_bytes
        if size > limit:
            message = (
                f"the result is {size} bytes, over result_max_bytes ({limit}):"
                " store big results elsewhere and return a reference to them"
            )
            return Outcome("failure", error_type="ResultTooLarge", error_message=message)
        return outcome

    async def _retry(
        self, delivery: Delivery, envelope: Envelope, outcome: Outcome, runtime: float
    ) -> None:
        log.info(
            "Task %s[%s] retry %d in %ss (ran %.4fs) %s",
            envelope.task,
            envelope.id,
            envelope.retries + 1,
            outcome.countdown,
            runtime,
            outcome.error_message,
        )
        headers = {k: v for k, v in envelope.headers.items() if k != RATE_SLOT}  # a new turn
        again = msgspec.structs.replace(envelope, retries=envelope.retries + 1, headers=headers)
        body = self.app.encode(again)
        meta = TaskMeta(envelope.id, states.RETRY, envelope.task, info=outcome.error_message)
        backend = self.app.backend

        def retry() -> None:
            if backend is not None:
                backend.store([meta])
            self.app.broker.nack(delivery, outcome.countdown, body)

        await self._call(retry)
        self._drop_held(delivery)

    async def _crashed(self, delivery: Delivery, envelope: Envelope, outcome: Outcome) -> None:
        """The pool process running the task died. Count it in the message; past the lease
        expiry limit the message is dead-lettered, as if its whole worker had died."""
        crashes = int(envelope.headers.get("crashes", 0)) + 1
        limit = self.app.conf.broker_max_lease_expiries
        log.error(
            "Task %s[%s] crashed its pool process (%d/%d)",
            envelope.task,
            envelope.id,
            crashes,
            limit,
        )
        if crashes >= limit:
            reason = f"WorkerLostError: crashed its worker process {crashes} times"
            await self._dead_letter(delivery, reason, envelope)
            return
        again = msgspec.structs.replace(envelope, headers={**envelope.headers, "crashes": crashes})
        body = self.app.encode(again)
        await self._call(self.app.broker.nack, delivery, 0.0, body)
        self._drop_held(delivery)

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        envelope: Envelope | None = None,
        meta: TaskMeta | None = None,
    ) -> None:
        """Quarantine a message. If it could be decoded, its result says why (or is `meta`),
        so that a caller waiting on it gets an error instead of waiting forever."""
        log.error("message %s dead-lettered: %s", delivery.id, reason)
        backend = self.app.backend
        if meta is None and envelope is not None and backend is not None:
            error_type, _, message = reason.partition(": ")
            error = {"type": error_type, "message": f"dead-lettered: {message}"}
            meta = TaskMeta(
                envelope.id, states.FAILURE, envelope.task, error, date_done=time.time()
            )

        def quarantine() -> None:
            if meta is not None and backend is not None:
                backend.store([meta])
                if envelope is not None and canvas.is_flow(envelope):
                    canvas.advance(self.app, envelope, meta)
            self.app.broker.dead_letter(delivery, reason)

        await self._call(quarantine)
        self._drop_held(delivery)

    # Storing outcomes and acking -------------------------------------------------------------

    async def _conclude(
        self, delivery: Delivery, envelope: Envelope, meta: TaskMeta, store: bool = True
    ) -> None:
        """A final outcome: stored and acked with the next batch. When a workflow goes on
        after it, it is stored now and the next steps are sent before the ack, so that a
        worker dying in between leaves a message that does it again (deduplicated)."""
        if canvas.is_flow(envelope):
            backend = self.app.backend

            def store_and_advance() -> None:
                if backend is not None:
                    backend.store([meta])
                canvas.advance(self.app, envelope, meta)

            await self._call(store_and_advance)
            self._finish(delivery, None)
            return
        self._finish(delivery, meta if store else None)

    def _finish(self, delivery: Delivery, meta: TaskMeta | None) -> None:
        # Being acked: the heartbeat leaves it alone (a renewal racing the ack would fail).
        self._finishing.add((delivery.id, delivery.attempt))
        self._finished.append(_Finished(delivery, meta))
        self._have_finished.set()

    def _drop_held(self, delivery: Delivery) -> None:
        key = (delivery.id, delivery.attempt)
        self.held.pop(key, None)
        self._finishing.discard(key)
        self._revoked.pop(delivery.id, None)
        self.processed += 1
        self._room.set()

    async def _acker(self) -> None:
        """Store outcomes, then ack their messages: everything finished since the last
        round goes in one backend call and one broker call."""
        while True:
            await self._have_finished.wait()
            self._have_finished.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._flushing:
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        batch, self._finished = self._finished, []
        if not batch:
            return
        metas = [f.meta for f in batch if f.meta is not None]
        deliveries = [f.delivery for f in batch]
        try:
            acked = await self.io.store_and_ack(metas, deliveries)
        except CeleriacError as exc:
            # Not acked: no longer renewed, so the messages run again once their lease ends.
            log.error("could not store outcomes / ack %d messages: %s", len(batch), exc)
            acked = [True] * len(batch)  # nothing more to do for them here
        for delivery, ok in zip(deliveries, acked, strict=True):
            if not ok:
                log.warning(
                    "ack of %s refused: its lease was lost and it was fetched again", delivery.id
                )
            self._drop_held(delivery)
