"""Settings: Celery's names, namespaces, defaults."""

from __future__ import annotations

import logging
import types

import pytest

from celeriac import Celeriac, ConfigurationError
from celeriac.config import DEFAULT_SQLITE_URL


def test_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    app = Celeriac("proj", set_as_current=False)
    assert app.conf.effective_broker_url == DEFAULT_SQLITE_URL
    assert app.conf.effective_result_backend == DEFAULT_SQLITE_URL


def test_namespace_reads_upper_case_celery_names(caplog: pytest.LogCaptureFixture) -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="memory://",
        CELERY_RESULT_EXPIRES=60,
        CELERY_TASK_ACKS_LATE=True,
        CELERY_TASK_DEFAULT_QUEUE="jobs",
        CELERY_WORKER_HIJACK_ROOT_LOGGER=False,  # a Celery setting Celeriac lacks
        DEBUG=True,  # not in the namespace
    )
    app = Celeriac("proj", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    with caplog.at_level(logging.WARNING, logger="celeriac"):
        assert app.conf.broker_url == "memory://"
    assert app.conf.result_expires == 60
    assert app.conf.task_default_queue == "jobs"
    assert "CELERY_WORKER_HIJACK_ROOT_LOGGER" in caplog.text


def test_config_is_read_when_first_needed() -> None:
    source: dict[str, object] = {}
    app = Celeriac("proj", set_as_current=False)
    app.config_from_object(source)
    source["broker_url"] = "memory://"  # like Django settings configured after the app
    assert app.conf.broker_url == "memory://"


def test_config_from_module_name(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("celeriac_test_settings")
    module.broker_url = "memory://"  # type: ignore[attr-defined]
    module.TASK_DEFAULT_PRIORITY = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "celeriac_test_settings", module)
    app = Celeriac("proj", set_as_current=False)
    app.config_from_object("celeriac_test_settings")
    assert app.conf.broker_url == "memory://"
    assert app.conf.task_default_priority == 3


def test_pickle_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="JSON only"):
        Celeriac("proj", task_serializer="pickle", set_as_current=False)


def test_unknown_keyword_setting_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting 'brokr_url'"):
        Celeriac("proj", brokr_url="memory://", set_as_current=False)


def test_bad_urls_say_what_is_supported() -> None:
    with pytest.raises(ConfigurationError, match="unknown broker URL"):
        _ = Celeriac("p", broker="nosuch://x", set_as_current=False).broker
    with pytest.raises(ConfigurationError, match="bad SQLite URL"):
        _ = Celeriac("p", broker="sqlite://", set_as_current=False).broker


def test_autodiscover_imports_tasks_modules(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pathlib

    root = pathlib.Path(str(tmp_path))
    (root / "discovered_pkg").mkdir()
    (root / "discovered_pkg" / "__init__.py").write_text("")
    (root / "discovered_pkg" / "tasks.py").write_text(
        "from celeriac import shared_task\n@shared_task\ndef found():\n    return 1\n"
    )
    (root / "no_tasks_pkg").mkdir()
    (root / "no_tasks_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    app = Celeriac("proj", broker="memory://")
    app.autodiscover_tasks(["discovered_pkg", "no_tasks_pkg"])
    assert "discovered_pkg.tasks.found" in app.tasks
