"""Declaring and sending tasks: options, binding, serialization, routing."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from celeriac import Celeriac, ConfigurationError, EncodeError, shared_task
from celeriac.envelope import decode


def fetch_one(app: Celeriac, queue: str = "celeriac") -> Any:
    (delivery,) = app.broker.fetch([queue], 10, 30)
    return decode(delivery.body)


def test_unknown_option_is_an_error_at_decoration_time(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match="unknown task option 'retires'"):

        @app.task(retires=3)
        def f() -> None: ...


@pytest.mark.parametrize(
    ("rate", "interval"), [("10/s", 0.1), ("100/m", 0.6), ("2/h", 1800.0), ("4", 0.25), (2, 0.5)]
)
def test_rate_limit_notation(app: Celeriac, rate: Any, interval: float) -> None:
    @app.task(rate_limit=rate)
    def f() -> None: ...

    assert f.options.rate_interval == pytest.approx(interval)


@pytest.mark.parametrize("rate", ["10/d", "x/s", "0/m", "-1/s", "/s"])
def test_bad_rate_limit_is_an_error_at_decoration_time(app: Celeriac, rate: str) -> None:
    with pytest.raises(ConfigurationError, match=r'rate_limit=.*like "10/s"'):

        @app.task(rate_limit=rate)
        def f() -> None: ...


def test_expires_option_is_the_default_for_each_call(app: Celeriac) -> None:
    @app.task(expires=60)
    def f() -> None: ...

    before = time.time()
    f.delay()
    f.apply_async(expires=5)
    f.delay_many([()])
    expiries = [decode(d.body).expires for d in app.broker.fetch(["celeriac"], 10, 30)]
    assert before + 59 < expiries[0] < time.time() + 61
    assert before + 4 < expiries[1] < time.time() + 6
    assert before + 59 < expiries[2] < time.time() + 61


@pytest.mark.parametrize("option", ["soft_time_limit", "time_limit"])
@pytest.mark.parametrize("value", [0, -1, "10"])
def test_time_limits_must_be_positive_seconds(app: Celeriac, option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"{option}=.* positive number of seconds"):

        @app.task(**{option: value})
        def f() -> None: ...


def test_priority_option_is_checked(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match="between 0 and 9"):

        @app.task(priority=12)
        def f() -> None: ...


def test_shared_task_binds_to_the_app_in_use_when_called() -> None:
    @shared_task
    def mul(a: int, b: int) -> int:
        return a * b

    first = Celeriac("first", broker="memory://")
    second = Celeriac("second", broker="memory://")  # created last: the current app
    result = mul.delay(2, 3)
    assert result.app is second
    assert fetch_one(second).args == [2, 3]
    assert first.broker.stats() == {}
    assert second.tasks[mul.name] is mul


def test_app_task_registers_on_its_app(app: Celeriac) -> None:
    @app.task(name="custom.name")
    def f() -> int:
        return 1

    assert app.get_task("custom.name") is f
    assert f() == 1  # a plain call runs the function here


def test_delay_sends_an_envelope(app: Celeriac) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    result = add.delay(1, b=2)
    envelope = fetch_one(app)
    assert envelope.id == result.id
    assert envelope.task == add.name
    assert (envelope.args, envelope.kwargs) == ([1], {"b": 2})
    assert envelope.queue == "celeriac"


def test_user_kwarg_named_queue_is_not_an_option(app: Celeriac) -> None:
    @app.task
    def notify(queue: str) -> str:
        return queue

    notify.delay(queue="emails")
    envelope = fetch_one(app)  # still on the default queue
    assert envelope.kwargs == {"queue": "emails"}


def test_unserializable_argument_fails_in_the_caller(app: Celeriac) -> None:
    @app.task
    def f(x: Any) -> None: ...

    with pytest.raises(EncodeError, match=r"cannot send task .* pass an id instead"):
        f.delay(object())
    assert app.broker.stats() == {}  # nothing was published


def test_datetimes_uuids_and_decimals_travel_as_strings(app: Celeriac) -> None:
    @app.task
    def f(*args: Any) -> None: ...

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    f.delay(when, ident, Decimal("1.10"))
    assert fetch_one(app).args == [when.isoformat().replace("+00:00", "Z"), str(ident), "1.10"]


def test_apply_async_options(app: Celeriac) -> None:
    @app.task
    def f() -> None: ...

    result = f.apply_async(queue="mail", priority=7, task_id="my-id", headers={"h": 1}, expires=60)
    envelope = fetch_one(app, "mail")
    assert result.id == envelope.id == "my-id"
    assert envelope.priority == 7
    assert envelope.headers == {"h": 1}
    assert envelope.expires == pytest.approx(time.time() + 60, abs=5)


def test_countdown_and_eta_delay_the_message(app: Celeriac) -> None:
    @app.task
    def f() -> None: ...

    f.apply_async(countdown=60)
    f.apply_async(eta=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert app.broker.stats()["celeriac"].delayed == 2
    assert app.broker.fetch(["celeriac"], 10, 30) == []
    with pytest.raises(ConfigurationError, match="countdown or eta"):
        f.apply_async(countdown=1, eta=dt.datetime.now(dt.UTC))


def test_bad_priority_at_send(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match="priority"):
        app.send_task("x", priority=10)


def test_send_task_by_name_needs_no_import(app: Celeriac) -> None:
    result = app.send_task("somewhere.else", args=[1], kwargs={"k": "v"})
    envelope = fetch_one(app)
    assert (envelope.id, envelope.task, envelope.args, envelope.kwargs) == (
        result.id,
        "somewhere.else",
        [1],
        {"k": "v"},
    )


def test_task_routes_pick_the_queue(app: Celeriac) -> None:
    app.conf.update({"task_routes": {"shop.mail.*": {"queue": "mail"}, "shop.export": "exports"}})
    app.send_task("shop.mail.welcome")
    app.send_task("shop.export")
    app.send_task("shop.other")
    assert set(app.broker.stats()) == {"mail", "exports", "celeriac"}


def test_task_option_queue_beats_routes(app: Celeriac) -> None:
    app.conf.update({"task_routes": {"*": "routed"}})

    @app.task(queue="own")
    def f() -> None: ...

    f.delay()
    f.apply_async(queue="explicit")
    assert set(app.broker.stats()) == {"own", "explicit"}


def test_request_outside_a_worker_is_an_error(app: Celeriac) -> None:
    @app.task(bind=True)
    def f(self: Any) -> None: ...

    with pytest.raises(RuntimeError, match="only available while the task runs"):
        _ = f.request


def test_delay_many_and_send_many_publish_in_one_call(app: Celeriac) -> None:
    @app.task(queue="bulk", priority=4)
    def add(a: int, b: int) -> int:
        return a + b

    results = add.delay_many([(1, 2), (3, 4)])
    more = app.send_many([(add.name, [5, 6], {}), ("other.task", [], {"k": 1})])
    assert app.broker.stats()["bulk"].ready == 2  # by the task's own options
    assert app.broker.stats()["celeriac"].ready == 2  # by name, like send_task: routes only
    fetched = [decode(d.body) for d in app.broker.fetch(["bulk", "celeriac"], 10, 30)]
    assert {e.id for e in fetched} == {r.id for r in [*results, *more]}
    assert {tuple(e.args) for e in fetched if e.queue == "bulk"} == {(1, 2), (3, 4)}
    assert all(e.priority == 4 for e in fetched if e.queue == "bulk")


def test_send_many_sends_nothing_if_one_call_is_bad(app: Celeriac) -> None:
    with pytest.raises(EncodeError):
        app.send_many([("t", [1], {}), ("t", [object()], {})])
    assert app.broker.stats() == {}


def test_retry_backoff_doubles_up_to_the_maximum() -> None:
    from celeriac.task import make_options

    plain = make_options({"default_retry_delay": 7})
    assert [plain.retry_delay(n) for n in range(3)] == [7, 7, 7]
    exact = make_options({"retry_backoff": True, "retry_jitter": False, "retry_backoff_max": 5})
    assert [exact.retry_delay(n) for n in range(5)] == [1, 2, 4, 5, 5]
    factor = make_options({"retry_backoff": 3, "retry_jitter": False})
    assert [factor.retry_delay(n) for n in range(3)] == [3, 6, 12]
    jittered = make_options({"retry_backoff": True, "retry_backoff_max": 8})
    assert all(0 <= jittered.retry_delay(n) <= min(8, 2**n) for n in range(10) for _ in range(20))


def test_autoretry_for_must_name_exception_classes() -> None:
    with pytest.raises(ConfigurationError, match=r"autoretry_for=.* must be exception classes"):

        @shared_task(autoretry_for=("ConnectionError",))
        def f() -> None: ...


def test_arguments_nested_too_deep_for_json_are_an_encode_error(app: Celeriac) -> None:
    @app.task
    def f(x: Any) -> None: ...

    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EncodeError, match="cannot send task"):
        f.delay(deep)


def test_an_idempotency_key_sends_once(app: Celeriac) -> None:
    @app.task
    def email(order: int) -> None: ...

    first = email.apply_async((42,), idempotency_key="order-42-email")
    again = email.apply_async((42,), idempotency_key="order-42-email")
    other = email.apply_async((43,), idempotency_key="order-43-email")
    assert again.id == first.id
    assert other.id != first.id
    sent = [decode(d.body) for d in app.broker.fetch(["celeriac"], 10, 30)]
    assert [(e.id, e.idempotency_key) for e in sent] == [
        (first.id, "order-42-email"),
        (other.id, "order-43-email"),
    ]


def test_idempotent_tasks_are_keyed_by_name_and_arguments(app: Celeriac) -> None:
    @app.task(idempotent=True, idempotency_ttl=60)
    def welcome(user: int, *, lang: str = "en", tone: str = "warm") -> None: ...

    first = welcome.apply_async((1,), {"lang": "fr", "tone": "dry"})
    assert welcome.apply_async((1,), {"tone": "dry", "lang": "fr"}).id == first.id
    assert welcome.delay(1, lang="fr", tone="dry").id == first.id
    assert welcome.delay(2, lang="fr", tone="dry").id != first.id
    many = welcome.delay_many([(3,), (3,), (4,)])
    assert many[0].id == many[1].id != many[2].id
    assert len(app.broker.fetch(["celeriac"], 10, 30)) == 4  # 1, 2, 3 and 4


def test_idempotency_ttl_must_be_positive(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match="idempotency_ttl=0 must be a positive"):

        @app.task(idempotent=True, idempotency_ttl=0)
        def f() -> None: ...
