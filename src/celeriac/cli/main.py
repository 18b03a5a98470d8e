"""`celeriac -A proj worker | call | result | purge | inspect | dlq`.

Errors a user can cause (a bad -A, a wrong URL, a broker that cannot be reached) print one
line and exit with 2; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import states
from ..app import Celeriac
from ..beat import Beat
from ..exceptions import CeleriacError, ConfigurationError
from ..result import AsyncResult, GroupResult
from ..schedules import crontab
from .loader import load_app

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(process)d] %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celeriac",
        description="Celeriac: run workers, send tasks, read results, inspect queues.",
        epilog="Example: celeriac -A proj worker --loglevel=info",
    )
    parser.add_argument(
        "-A",
        "--app",
        metavar="APP",
        help="the app: a module (proj, which may hold it in proj/celeriac.py) or module:attr",
    )
    parser.add_argument(
        "-b",
        "--broker",
        metavar="URL",
        help="broker URL, overriding the app's (e.g. sqlite:///celeriac.db)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = sub.add_parser(
        "worker",
        help="run a worker that executes tasks",
        description="Fetch tasks from the broker and run them until SIGTERM/SIGINT "
        "(first signal: finish running tasks; second: hand them back at once).",
    )
    _add_loglevel(worker)
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        metavar="N",
        help="tasks run at once (default: 8 threads, or one process per CPU)",
    )
    worker.add_argument(
        "-Q",
        "--queues",
        metavar="A,B",
        help="comma-separated queues to consume (default: the default queue)",
    )
    worker.add_argument(
        "-P",
        "--pool",
        choices=["threads", "processes"],
        help="where plain functions run; async def tasks always run on the "
        "worker's event loop (default: threads)",
    )
    worker.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes under a supervisor that restarts them",
    )
    worker.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help="lease on a fetched message: a dead worker's tasks run elsewhere "
        "after this (default: broker_lease_seconds, 30)",
    )
    worker.add_argument(
        "-B",
        "--beat",
        action="store_true",
        help="also run the beat (periodic tasks) in this process; any number may run",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long running tasks may finish (default: 30)",
    )

    call = sub.add_parser(
        "call",
        help="send a task by name and print its id",
        description="Send a task by name; prints the task id.",
    )
    call.add_argument("name", help="the task's registered name, e.g. proj.tasks.add")
    call.add_argument("--args", default="[]", metavar="JSON", help="positional args, a JSON list")
    call.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword args, a JSON object")
    call.add_argument("--queue", help="queue (default: by task_routes, else the default queue)")
    call.add_argument("--countdown", type=float, metavar="SECONDS", help="run after this delay")
    call.add_argument(
        "--priority", type=int, choices=range(10), metavar="0-9", help="0-9, higher runs first"
    )

    result = sub.add_parser(
        "result",
        help="show a task's state and result",
        description="Show a task's state and result as JSON.",
    )
    result.add_argument("task_id", metavar="ID")
    result.add_argument(
        "--wait", action="store_true", help="wait until the task is done, drawing its progress"
    )
    result.add_argument("--timeout", type=float, metavar="SECONDS", help="give up waiting after")

    _add_beat_parser(sub)
    relay = sub.add_parser(
        "outbox-relay",
        help="Django: publish the outbox's committed messages (workers do it too)",
        description="Publish the messages that Django transactions wrote to the outbox "
        "table (task_outbox) and that were not published at commit, until SIGTERM.",
    )
    _add_loglevel(relay)

    revoke = sub.add_parser(
        "revoke",
        help="revoke tasks by id",
        description="Revoke tasks: a queued or delayed one never runs; a running one "
        "finishes, or is stopped with --terminate. Revocations hold for a day, on every worker.",
    )
    revoke.add_argument("task_ids", metavar="ID", nargs="+")
    revoke.add_argument("--terminate", action="store_true", help="stop it if it is running")

    purge = sub.add_parser(
        "purge",
        help="delete waiting messages of a queue",
        description="Delete the ready and delayed messages of a queue "
        "(running ones are left alone).",
    )
    purge.add_argument("--queue", "-Q", help="the queue (default: the default queue)")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask to confirm")

    dlq = sub.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description="Dead letters: messages that could not be decoded, named an unknown task, "
        "had arguments that do not fit, or whose worker died too often. Each keeps the reason "
        "and the original bytes.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_sub.add_parser("list", help="the newest dead letters, one line each")
    dlq_list.add_argument("--queue", "-Q", help="only this queue")
    dlq_list.add_argument("--limit", type=int, default=50, help="how many (default: 50)")
    dlq_show = dlq_sub.add_parser("show", help="one dead letter, with its message")
    dlq_show.add_argument("message_id", metavar="ID")
    dlq_replay = dlq_sub.add_parser(
        "replay",
        help="put dead letters back in their queues",
        description="Put dead letters back in their queues, due now (at priority 0).",
    )
    dlq_replay.add_argument("message_ids", metavar="ID", nargs="*", help="the ones to replay")
    dlq_replay.add_argument("--all", action="store_true", help="replay all (of --queue)")
    dlq_replay.add_argument("--queue", "-Q", help="only this queue")
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters")
    dlq_purge.add_argument("--queue", "-Q", help="only this queue")
    dlq_purge.add_argument("-f", "--force", action="store_true", help="do not ask to confirm")

    inspect = sub.add_parser(
        "inspect", help="look at queues", description="Look at the broker's queues."
    )
    inspect.add_argument(
        "what",
        choices=["queues"],
        help="queues: ready, delayed, running and dead messages per queue",
    )
    return parser


def _add_loglevel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-l",
        "--loglevel",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        help="log level (default: info)",
    )


def _add_beat_parser(sub: Any) -> None:
    beat = sub.add_parser(
        "beat",
        help="run the beat (periodic tasks), or list and change its entries",
        description="Without a subcommand: send the periodic tasks of beat_schedule and of "
        "'beat add' when they are due. Any number of beats may run: each tick is sent once.",
    )
    _add_loglevel(beat)
    beat_sub = beat.add_subparsers(dest="beat_command", metavar="SUBCOMMAND")
    beat_sub.add_parser("list", help="every entry, with its schedule and next run")
    beat_add = beat_sub.add_parser(
        "add",
        help="add or replace an entry (picked up by running beats within a second)",
        description="Add or replace a periodic entry, stored in the broker.",
    )
    beat_add.add_argument("name")
    beat_add.add_argument("task", help="the task's registered name")
    when = beat_add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, metavar="SECONDS", help="run every N seconds")
    when.add_argument(
        "--crontab",
        metavar='"M H DOM MON DOW"',
        help='cron fields: minute hour day-of-month month day-of-week, e.g. "30 7 * * mon-fri"',
    )
    beat_add.add_argument("--args", default="[]", metavar="JSON", help="positional arguments")
    beat_add.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments")
    beat_add.add_argument("--queue", "-Q", help="the queue to send to")
    beat_add.add_argument(
        "--catchup",
        choices=["last", "all", "skip"],
        default="last",
        help="after missed ticks send the latest (default), all, or none",
    )
    for name, text in (
        ("remove", "remove an entry added with 'beat add'"),
        ("pause", "stop sending an entry (until resumed)"),
        ("resume", "send a paused entry again"),
    ):
        beat_sub.add_parser(name, help=text).add_argument("name")


def _app(args: argparse.Namespace) -> Celeriac:
    app = load_app(args.app) if args.app else Celeriac()
    if args.broker:
        app.conf.update({"broker_url": args.broker})
    return app


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = COMMANDS[args.command]
        return handler(args)
    except CeleriacError as exc:
        print(f"celeriac: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.loglevel.upper(), format=LOG_FORMAT)
    if not args.app:
        raise ConfigurationError("worker needs -A: the module that holds your app and tasks")
    for flag, value, least in (
        ("--processes", args.processes, 1),
        ("--concurrency", args.concurrency, 1),
        ("--shutdown-timeout", args.shutdown_timeout, 0),
    ):
        if value is not None and value < least:
            raise ConfigurationError(f"{flag} must be at least {least}, not {value}")
    if args.lease is not None and args.lease <= 0:
        raise ConfigurationError(f"--lease must be a positive number of seconds, not {args.lease}")
    # Load the app and check the options here, so that a mistake is one clear error
    # rather than N children failing.
    from ..worker.worker import Worker

    app = _app(args)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    worker = Worker(
        app,
        queues=queues,
        concurrency=args.concurrency,
        pool=args.pool,
        app_spec=args.app,
        lease=args.lease,
        shutdown_timeout=args.shutdown_timeout,
        beat=args.beat,
    )
    if args.processes == 1:
        return worker.run()

    from ..worker.supervisor import Supervisor

    command = [sys.executable, "-m", "celeriac", "-A", args.app]
    if args.broker:
        command += ["--broker", args.broker]
    command += ["worker", "--loglevel", args.loglevel]
    if args.beat:  # in every child: any number of beats send each tick once
        command.append("--beat")
    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--queues", args.queues),
        ("--pool", args.pool),
        ("--lease", args.lease),
        ("--shutdown-timeout", args.shutdown_timeout),
    ):
        if value is not None:
            command += [flag, str(value)]
    return Supervisor(command, args.processes).run()


def _json(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ConfigurationError(f"{what} must be a JSON {'list' if kind is list else 'object'}")
    return value


def cmd_call(args: argparse.Namespace) -> int:
    app = _app(args)
    eta = time.time() + args.countdown if args.countdown else None
    result = app.send_task(
        args.name,
        args=_json(args.args, "--args", list),
        kwargs=_json(args.kwargs, "--kwargs", dict),
        queue=args.queue,
        priority=args.priority,
        eta=eta,
    )
    print(result.id)
    return 0


def _progress_bar(info: dict[str, Any], width: int = 30) -> str:
    current, total = float(info.get("current") or 0), float(info.get("total") or 0)
    fraction = min(1.0, current / total) if total > 0 else 0.0
    filled = int(fraction * width)
    text = f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} {current:g}/{total:g}"
    return f"{text} {info['message']}" if info.get("message") else text


def cmd_result(args: argparse.Namespace) -> int:
    app = _app(args)
    result = app.AsyncResult(args.task_id)
    # A group's id, or a chord's (its body's id): wait for all of it, summing progress.
    members = GroupResult.restore(args.task_id, app)
    watched: AsyncResult[Any] | GroupResult = members if members is not None else result
    if args.wait:
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        tty = sys.stderr.isatty()
        last_line = ""
        while not watched.ready():
            progress = watched.progress
            line = _progress_bar(progress) if progress is not None else ""
            if line and line != last_line:
                # On a terminal the bar redraws in place; in a log, one line per change.
                sys.stderr.write(f"\r{line}" if tty else f"{line}\n")
                sys.stderr.flush()
                last_line = line
            if deadline is not None and time.monotonic() >= deadline:
                state = "running" if members is not None else result.state
                print(f"celeriac: still {state} after {args.timeout}s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        if tty and last_line:
            sys.stderr.write("\n")
    if members is not None and args.task_id not in {r.id for r in members}:
        return _print_group(members)
    backend = app.backend
    meta = backend.get(args.task_id) if backend is not None else None
    out: dict[str, Any] = {"id": args.task_id, "state": meta.state if meta else states.PENDING}
    if meta is not None:
        out["result"] = meta.result if meta.state != states.STARTED else None
        if meta.info is not None:
            out["info"] = meta.info
        if meta.traceback:
            out["traceback"] = meta.traceback
    print(json.dumps(out, indent=2, default=str))
    return 1 if out["state"] == states.FAILURE else 0


def _print_group(group: GroupResult) -> int:
    metas = group.member_metas()
    state = states.SUCCESS if all(m.state == states.SUCCESS for m in metas) else states.PENDING
    if any(m.state == states.FAILURE for m in metas):
        state = states.FAILURE
    out = {
        "id": group.id,
        "state": state,
        "results": [{"id": m.task_id, "state": m.state, "result": m.result} for m in metas],
    }
    print(json.dumps(out, indent=2, default=str))
    return 1 if out["state"] == states.FAILURE else 0


def cmd_outbox_relay(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.loglevel.upper(), format=LOG_FORMAT)
    app = _app(args)
    app.tasks  # noqa: B018 - loads the project, which sets Django up
    from ..contrib.django import django_ready
    from ..contrib.django.outbox import run_relay

    if not django_ready():
        raise ConfigurationError("outbox-relay needs a Django project: -A the module of your app")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_relay(app, stop)
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    app = _app(args)
    beat = app.beat
    command = args.beat_command
    if command is None:
        logging.basicConfig(level=args.loglevel.upper(), format=LOG_FORMAT)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        beat.run(stop)
        return 0
    if command == "list":
        runs = beat.next_runs()
        if not runs:
            print("no beat entries")
        for entry, next_run in runs:
            when = "paused" if next_run is None else _local(next_run, beat)
            print(f"{entry.name}  {entry.task}  {entry.schedule.describe()}  next: {when}")
        return 0
    if command == "add":
        schedule: Any
        if args.every is not None:
            schedule = args.every
        else:
            fields = args.crontab.split()
            if len(fields) != 5:
                raise ConfigurationError(
                    f'--crontab needs 5 fields "M H DOM MON DOW", got {args.crontab!r}'
                )
            minute, hour, dom, month, dow = fields
            schedule = crontab(minute, hour, dow, dom, month)
        entry = beat.add(
            args.name,
            args.task,
            schedule,
            args=_json(args.args, "--args", list),
            kwargs=_json(args.kwargs, "--kwargs", dict),
            options={"queue": args.queue} if args.queue else {},
            catchup=args.catchup,
        )
        print(f"added {entry.name}: {entry.task} {entry.schedule.describe()}")
        return 0
    if command == "remove":
        beat.remove(args.name)
        print(f"removed {args.name}")
        return 0
    entry = beat.pause(args.name, paused=command == "pause")
    print(f"{entry.name} {'paused' if entry.paused else 'resumed'}")
    return 0


def _local(when: float, beat: Beat) -> str:
    return dt.datetime.fromtimestamp(when, beat.zone).isoformat(sep=" ", timespec="seconds")


def cmd_revoke(args: argparse.Namespace) -> int:
    _app(args).control.revoke(args.task_ids, terminate=args.terminate)
    how = " (running ones are terminated)" if args.terminate else ""
    print(f"revoked {len(args.task_ids)} task(s){how}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    app = _app(args)
    queue = args.queue or app.conf.task_default_queue
    stats = app.broker.stats().get(queue)
    waiting = (stats.ready + stats.delayed) if stats else 0
    if waiting == 0:
        print(f"queue {queue!r} has no waiting messages")
        return 0
    if not _confirm(f"Delete {waiting} waiting messages from queue {queue!r}?", args.force):
        print("nothing deleted")
        return 1
    print(f"deleted {app.broker.purge(queue)} messages from queue {queue!r}")
    return 0


def _confirm(question: str, force: bool) -> bool:
    if force:
        return True
    if not sys.stdin.isatty():
        raise ConfigurationError("this asks to confirm; pass -f to go ahead without asking")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_dlq(args: argparse.Namespace) -> int:
    broker = _app(args).broker
    action = args.dlq_command
    if action == "list":
        letters = broker.dead_letters(args.queue, args.limit)
        if not letters:
            print("no dead letters")
        for dl in letters:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dl.dead_at))
            print(f"{dl.id}  {dl.queue}  {when}  {dl.reason}")
        return 0
    if action == "show":
        found = [dl for dl in broker.dead_letters(None, 1_000_000) if dl.id == args.message_id]
        if not found:
            raise ConfigurationError(f"no dead letter with id {args.message_id}")
        dl = found[0]
        print(f"id:      {dl.id}\nqueue:   {dl.queue}")
        print(f"died:    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(dl.dead_at))}")
        print(f"reason:  {dl.reason}\nmessage: {dl.body.decode('utf-8', 'backslashreplace')}")
        return 0
    if action == "replay":
        if not args.message_ids and not args.all:
            raise ConfigurationError("name the dead letters to replay, or pass --all")
        count = broker.replay(args.message_ids or None, args.queue)
        print(f"replayed {count} dead letters")
        return 0 if count or args.all else 1
    queue = args.queue
    waiting = len(broker.dead_letters(queue, 1_000_000))
    where = f"of queue {queue!r}" if queue else "of every queue"
    if waiting == 0:
        print(f"no dead letters {where}")
        return 0
    if not _confirm(f"Delete {waiting} dead letters {where}?", args.force):
        print("nothing deleted")
        return 1
    print(f"deleted {broker.purge_dead(queue)} dead letters")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    app = _app(args)
    stats = app.broker.stats()
    if not stats:
        print("no queues have messages")
        return 0
    width = max(5, *(len(q) for q in stats))
    print(f"{'queue':<{width}}  {'ready':>8}  {'delayed':>8}  {'running':>8}  {'dead':>8}")
    for queue, s in stats.items():
        print(f"{queue:<{width}}  {s.ready:>8}  {s.delayed:>8}  {s.leased:>8}  {s.dead:>8}")
    return 0


COMMANDS = {
    "worker": cmd_worker,
    "call": cmd_call,
    "result": cmd_result,
    "beat": cmd_beat,
    "outbox-relay": cmd_outbox_relay,
    "revoke": cmd_revoke,
    "purge": cmd_purge,
    "inspect": cmd_inspect,
    "dlq": cmd_dlq,
}
