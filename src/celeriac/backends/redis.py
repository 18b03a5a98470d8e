"""`redis://` results: one key per task, and a pub/sub channel that wakes waiters.

    <prefix>:r:<task id>       the TaskMeta as JSON; ready states expire after
                               `result_expires` (by Redis itself), others do not
    <prefix>:done:<task id>    channel: the stored value, when the task reaches a ready state
    <prefix>:g:<group id>      a group's member result ids (JSON list); expires with results
    <prefix>:chord:<group id>  set of a chord's members that are done; expires with results

`wait` subscribes, then reads the key, then (if the task is not done) waits for the
message, which carries the value: a result stored between the steps is never missed, and
nothing polls. Each thread keeps its pub/sub connection open between waits.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import states
from ..brokers.redis import call, connect
from ..envelope import dumps, loads
from ..exceptions import TimeoutError
from .base import ResultBackend, TaskMeta

# store <prefix> <ttl ms> (<task id> <ready: 1|0> <json>)*: one round trip for a batch.
STORE = """
local P, ttl = ARGV[1], ARGV[2]
for i = 3, #ARGV, 3 do
  local key = P .. ':r:' .. ARGV[i]
  if ARGV[i + 1] == '1' then
    redis.call('SET', key, ARGV[i + 2], 'PX', ttl)
    redis.call('PUBLISH', P .. ':done:' .. ARGV[i], ARGV[i + 2])
  else
    redis.call('SET', key, ARGV[i + 2])
  end
end
return 0
"""


class RedisBackend(ResultBackend):
    needs_cleanup = False  # Redis expires results by itself

    def __init__(self, url: str, *, prefix: str = "celeriac", **options: Any) -> None:
        super().__init__(url, **options)
        self.prefix = prefix
        self.client = connect(url)
        self._store = self.client.register_script(STORE)
        self._local = threading.local()

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}:r:{task_id}"

    def store_args(self, metas: Sequence[TaskMeta]) -> list[Any]:
        """The arguments of the STORE script (also used by the worker's asyncio client)."""
        args: list[Any] = [self.prefix, max(1, int(self.expires * 1000))]
        for m in metas:
            value = dumps([m.state, m.task, m.result, m.traceback, m.info, m.date_done])
            args += [m.task_id, "1" if m.ready else "0", value]
        return args

    def store(self, metas: Sequence[TaskMeta]) -> None:
        args = self.store_args(metas)
        call(self.url, lambda: self._store(keys=[], args=args))

    @staticmethod
    def _decode(task_id: str, raw: bytes | None) -> TaskMeta | None:
        if raw is None:
            return None
        try:
            state, task, result, tb, info, done = loads(raw)
        except (msgspec.DecodeError, ValueError):
            return TaskMeta(
                task_id,
                states.FAILURE,
                result={"type": "DecodeError", "message": "unreadable result"},
            )
        return TaskMeta(task_id, state, task, result, tb, info, done)

    def get(self, task_id: str) -> TaskMeta | None:
        return self._decode(task_id, call(self.url, lambda: self.client.get(self._key(task_id))))

    def wait(self, task_id: str, timeout: float | None, interval: float = 0.05) -> TaskMeta:
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self._pubsub()
        channel = f"{self.prefix}:done:{task_id}"
        # SUBSCRIBE is only sent here (its reply is read with the messages), so subscribing
        # first costs no round trip, and a result stored after it cannot be missed.
        call(self.url, lambda: pubsub.subscribe(channel))
        try:
            meta = self.get(task_id)
            while meta is None or not meta.ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"task {task_id} not ready after {timeout}s")
                # Wake at least every second to read the key: a belt to the channel's
                # braces, should a message be lost with a dropped connection.
                pause = 1.0 if remaining is None else min(1.0, remaining)
                message = call(self.url, functools.partial(pubsub.get_message, timeout=pause))
                if message is None or message.get("type") != "message":
                    meta = self.get(task_id)
                elif message["channel"].decode() == channel:  # the stored value itself
                    meta = self._decode(task_id, message["data"])
                # else: a late message for an earlier wait on this connection
            return meta
        finally:
            call(self.url, lambda: pubsub.unsubscribe(channel))  # sent, not waited for

    def _pubsub(self) -> Any:
        """This thread's pub/sub connection, kept open between waits (opening one costs
        more than the whole wait for a task that is nearly done)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            local.pid = os.getpid()
        return local.pubsub

    def get_many(self, task_ids: Sequence[str]) -> list[TaskMeta | None]:
        if not task_ids:
            return []
        raws = call(self.url, lambda: self.client.mget([self._key(i) for i in task_ids]))
        return [self._decode(i, raw) for i, raw in zip(task_ids, raws, strict=True)]

    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        ttl = max(1, int(self.expires * 1000))
        key, value = f"{self.prefix}:g:{group_id}", dumps(list(member_ids))
        call(self.url, lambda: self.client.set(key, value, px=ttl))

    def get_group(self, group_id: str) -> list[str] | None:
        raw = call(self.url, lambda: self.client.get(f"{self.prefix}:g:{group_id}"))
        return None if raw is None else list(loads(raw))

    def chord_done(self, group_id: str, member_id: str) -> int:
        key, ttl = f"{self.prefix}:chord:{group_id}", max(1, int(self.expires * 1000))

        def add() -> int:
            pipe = self.client.pipeline(transaction=True)  # MULTI: add and count as one
            pipe.sadd(key, member_id)
            pipe.scard(key)
            pipe.pexpire(key, ttl)
            return int(pipe.execute()[1])

        return call(self.url, add)

    def forget(self, task_id: str) -> None:
        call(self.url, lambda: self.client.delete(self._key(task_id)))

    def cleanup(self) -> int:
        return 0  # Redis expires results by itself

    def close(self) -> None:
        self.client.close()
