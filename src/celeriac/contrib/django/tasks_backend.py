"""A backend for Django's own Tasks framework:

    TASKS = {"default": {"BACKEND": "celeriac.contrib.django.tasks.CeleriacBackend"}}

makes `@task` functions (django.tasks in Django 6, the django-tasks backport on 5.2) run on
Celeriac workers. A Django task is sent under its module path as the Celeriac task name; a
worker that meets that name imports the Django task and runs it (`django_task`).
"""

from __future__ import annotations

import datetime as dt
import socket
import sys
from typing import Any

try:  # Django 6
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task as DjangoTask
    from django.tasks.base import TaskContext, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django 5.2 with the backport
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task as DjangoTask
    from django_tasks.base import TaskContext, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist

from ... import states
from ...backends.base import TaskMeta
from ...task import Task, TaskOptions, current_request

STATUS = {
    states.PENDING: TaskResultStatus.READY,
    states.STARTED: TaskResultStatus.RUNNING,
    states.RETRY: TaskResultStatus.READY,
    states.SUCCESS: TaskResultStatus.SUCCESSFUL,
}


def _priority(django_priority: int) -> int:
    """Django's -100..100 (default 0) onto Celeriac's 0..9."""
    return round((django_priority + 100) * 9 / 200)


class CeleriacBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        from ...app import current_app

        self.validate_task(task)
        app = current_app()
        now = dt.datetime.now(dt.UTC)
        eta = task.run_after.timestamp() if task.run_after is not None else None
        queue = None if task.queue_name == "default" else task.queue_name
        envelope = app.envelope(
            task.module_path,
            list(args),
            dict(kwargs),
            eta=eta,
            queue=queue,
            priority=_priority(task.priority),
        )
        if app.backend is not None:  # so that get_result() finds it while it waits
            info = {"enqueued_at": now.timestamp(), "args": envelope.args, "kwargs": kwargs}
            app.backend.store([TaskMeta(envelope.id, states.PENDING, task.module_path, info=info)])
        app.publish([envelope])
        return _result(
            task,
            envelope.id,
            TaskResultStatus.READY,
            alias=self.alias,
            args=args,
            kwargs=kwargs,
            enqueued=now,
        )

    def get_result(self, result_id: str) -> Any:
        from django.utils.module_loading import import_string

        from ...app import current_app

        backend = current_app().backend
        meta = backend.get(result_id) if backend is not None else None
        if meta is None or meta.task is None:
            raise TaskResultDoesNotExist(result_id)
        task = import_string(meta.task)
        status = STATUS.get(meta.state, TaskResultStatus.FAILED)
        info = meta.info if isinstance(meta.info, dict) else {}
        enqueued = info.get("enqueued_at")
        result = _result(
            task,
            result_id,
            status,
            alias=self.alias,
            args=info.get("args", []),
            kwargs=info.get("kwargs", {}),
            enqueued=dt.datetime.fromtimestamp(enqueued, dt.UTC) if enqueued else None,
        )
        if meta.date_done is not None:
            object.__setattr__(
                result, "finished_at", dt.datetime.fromtimestamp(meta.date_done, dt.UTC)
            )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", meta.result)
        elif status == TaskResultStatus.FAILED:
            error = meta.result if isinstance(meta.result, dict) else {}
            path = str(error.get("type", meta.state))
            result.errors.append(
                TaskError(
                    exception_class_path=path if "." in path else f"builtins.{path}",
                    traceback=meta.traceback or str(error.get("message", "")),
                )
            )
        return result


def _result(
    task: Any, result_id: str, status: Any, *, alias: str, args: Any, kwargs: Any, enqueued: Any
) -> Any:
    return TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=enqueued,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=list(args),
        kwargs=dict(kwargs),
        backend=alias,
        errors=[],
        worker_ids=[],
    )


def django_task(app: Any, path: str) -> Task[Any, Any] | None:
    """The Celeriac task that runs the Django task at `path`, or None if it is not one.
    Only modules this process imported already are looked in (the apps' `tasks.py`, found
    by autodiscovery): a name from the wire never makes a worker import a module."""
    module_name, _, attribute = path.rpartition(".")
    found = getattr(sys.modules.get(module_name), attribute, None)
    if not isinstance(found, DjangoTask):
        return None

    def run(*args: Any, **kwargs: Any) -> Any:
        if not found.takes_context:
            return found.call(*args, **kwargs)
        request = current_request.get()
        running = _result(
            found,
            request.id if request else "",
            TaskResultStatus.RUNNING,
            alias=found.backend,
            args=args,
            kwargs=kwargs,
            enqueued=None,
        )
        running.worker_ids.append(socket.gethostname())
        return found.call(TaskContext(task_result=running), *args, **kwargs)

    return Task(run, TaskOptions(name=path, max_retries=0), app)
