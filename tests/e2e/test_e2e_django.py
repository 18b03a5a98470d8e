"""The example shop (examples/shop), run as a user runs it: `manage.py runserver`, a real
`celeriac -A shop worker`, HTTP requests, on SQLite and on Redis. Emails go to files
(Django's file-based backend) where the test reads them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from celeriac import Celeriac
from polling import wait_until
from services import amqp_url, new_prefix, postgres_url, redis_url

pytestmark = pytest.mark.slow

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
# Tests of the Django layer itself (Tasks framework, email backend, admin, on_commit) run on
# two brokers; those where the broker takes part (orders, the outbox, atomic tasks) on all.
DJANGO_ONLY_BROKERS = ["sqlite", "redis"]
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens there: a broker that is down


@dataclass
class Shop:
    root: Path
    env: dict[str, str]
    mail: Path
    package: str = "shop"  # what start_worker runs: celeriac -A shop worker

    def broker_stats(self) -> dict:
        app = Celeriac(
            broker=self.env["CELERY_BROKER_URL"],
            broker_key_prefix=self.env["CELERY_BROKER_KEY_PREFIX"],
            result_backend=self.env.get("CELERY_RESULT_BACKEND"),
            set_as_current=False,
        )
        try:
            if hasattr(app.broker, "delete_queues"):  # RabbitMQ: stats of the queues used
                app.broker._used.add(app.conf.task_default_queue)  # type: ignore[attr-defined]
            return app.broker.stats()
        finally:
            app.close()

    def run(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run Django code in a process of the shop's own (set up, as `manage.py shell`)."""
        script = "import django\ndjango.setup()\n" + textwrap.dedent(code)
        return subprocess.run(
            [sys.executable, "-c", script],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def query(self, code: str) -> object:
        """The JSON a snippet prints."""
        proc = self.run(code)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def emails(self) -> list[str]:
        return [p.read_text() for p in sorted(self.mail.glob("*"))] if self.mail.exists() else []

    def wait_for_email(self, text: str, timeout: float = 30) -> str:
        return wait_until(
            lambda: next((m for m in self.emails() if text in m), None),
            timeout,
            f"an email containing {text!r} in {self.mail}",
        )


@pytest.fixture
def shop(tmp_path: Path, broker_kind: str) -> Shop:
    root = tmp_path / "shop"
    shutil.copytree(
        SHOP, root, ignore=shutil.ignore_patterns("*.db*", "*.sqlite3*", "media", "sent-mail")
    )
    prefix = new_prefix()
    broker = {
        "redis": redis_url,
        "postgres": postgres_url,
        "amqp": amqp_url,
        "sqlite": lambda: f"sqlite:///{tmp_path / 'broker.db'}",
    }[broker_kind]()
    # RabbitMQ keeps its state (revocations, keys, the beat) and here the results in Redis.
    state = {"CELERY_RESULT_BACKEND": redis_url()} if broker_kind == "amqp" else {}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")},
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "SHOP_DB": str(tmp_path / "shop.sqlite3"),
        "SHOP_MEDIA": str(tmp_path / "media"),
        "CELERY_BROKER_URL": broker,
        "CELERY_BROKER_KEY_PREFIX": prefix,
        **state,
        "SHOP_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "SHOP_EMAIL_DIR": str(tmp_path / "mail"),
        "PYTHONUNBUFFERED": "1",
    }
    _migrate(root, env)
    return Shop(root, env, tmp_path / "mail")


def _migrate(root: Path, env: dict[str, str], python: str = sys.executable) -> None:
    migrate = subprocess.run(
        [python, "manage.py", "migrate", "-v", "0"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, data: dict, user: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(data).encode(), {"Content-Type": "application/json"}
    )
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def server(shop: Shop):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=shop.root,
        env=shop.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 30, "runserver to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def test_an_order_answers_201_and_the_worker_sends_the_confirmation(shop, server, start_worker):
    start_worker(shop, extra_env=shop.env)
    shop.run("from api.models import Product\nProduct.objects.create(name='Leek', price='2.50')")

    status, user = _post(
        f"{server}/api/users/",
        {"username": "bob", "email": "bob@example.com", "password": "pass-w0rd-long"},
    )
    assert status == 201 and user["email"] == "bob@example.com"
    assert "Hello bob" in shop.wait_for_email("Subject: Welcome to the shop")

    status, order = _post(
        f"{server}/api/orders/", {"product": 1, "quantity": 3}, "bob:pass-w0rd-long"
    )
    assert status == 201
    email = shop.wait_for_email(f"Subject: Order #{order['id']} confirmed")
    assert "To: bob@example.com" in email
    assert "3 x Leek (7.50 EUR)" in email
    wait_until(
        lambda: shop.query("from api.models import Sale\nprint(Sale.objects.count())") == 1,
        20,
        "the sale recorded",
    )


PLACE_ORDER = """
from django.contrib.auth.models import User
from django.db import transaction
from api.models import Order, Product
from api.tasks import send_order_confirmation_email
user = User.objects.create_user("carol", "carol@example.com", "pw")
product = Product.objects.create(name="Kale", price="1.00")
"""


def test_outbox_a_rolled_back_transaction_sends_nothing(shop, start_worker):
    proc = shop.run(
        PLACE_ORDER
        + """
try:
    with transaction.atomic():
        order = Order.objects.create(user=user, product=product)
        send_order_confirmation_email.delay(order.id, user.email)
        raise RuntimeError("payment declined")
except RuntimeError:
    pass
with transaction.atomic():
    order = Order.objects.create(user=user, product=product)
    send_order_confirmation_email.delay(order.id, user.email)
print(order.id)
""",
        SHOP_OUTBOX="1",
    )
    assert proc.returncode == 0, proc.stderr
    kept = int(proc.stdout.split()[-1])
    start_worker(shop, extra_env={**shop.env, "SHOP_OUTBOX": "1"})
    shop.wait_for_email(f"Subject: Order #{kept} confirmed")
    assert len(shop.emails()) == 1, "the rolled-back order's email was sent"


def test_outbox_a_broker_down_at_commit_gets_the_task_when_it_returns(shop, start_worker):
    proc = shop.run(
        PLACE_ORDER
        + """
with transaction.atomic():
    order = Order.objects.create(user=user, product=product)
    send_order_confirmation_email.delay(order.id, user.email)
from celeriac.contrib.django.models import OutboxMessage
print(order.id, OutboxMessage.objects.count())
""",
        SHOP_OUTBOX="1",
        CELERY_BROKER_URL=DEAD_BROKER,
    )
    assert proc.returncode == 0, proc.stderr  # the commit succeeded: the row waits
    order_id, waiting = map(int, proc.stdout.split()[-2:])
    assert waiting == 1
    start_worker(shop, extra_env={**shop.env, "SHOP_OUTBOX": "1"})  # relays it
    shop.wait_for_email(f"Subject: Order #{order_id} confirmed")


def test_outbox_a_process_killed_between_commit_and_publish_loses_nothing(shop, start_worker):
    proc = shop.run(
        PLACE_ORDER
        + """
import os
with transaction.atomic():
    order = Order.objects.create(user=user, product=product)
    print(order.id, flush=True)
    transaction.on_commit(lambda: os._exit(9))  # runs first: dies before the publish
    send_order_confirmation_email.delay(order.id, user.email)
""",
        SHOP_OUTBOX="1",
    )
    assert proc.returncode == 9, proc.stderr
    order_id = int(proc.stdout.split()[-1])
    assert shop.broker_stats() == {}, "it was published after all"
    assert (
        shop.query(
            "from celeriac.contrib.django.models import OutboxMessage\n"
            "print(OutboxMessage.objects.count())"
        )
        == 1
    )
    start_worker(shop, extra_env={**shop.env, "SHOP_OUTBOX": "1"})
    shop.wait_for_email(f"Subject: Order #{order_id} confirmed")


def test_an_atomic_task_delivered_again_writes_once(shop, start_worker):
    worker = start_worker(shop, extra_env=shop.env)
    count_sales = "from api.models import Sale\nprint(Sale.objects.count())"
    send_twice = (
        PLACE_ORDER
        + """
from api.tasks import record_sale
order = Order.objects.create(user=user, product=product)
first = record_sale.apply_async((order.id,), task_id="sale-of-order-1")
print(first.get(timeout=30))
import time
from shop.celeriac import app
deadline = time.monotonic() + 30
while app.broker.stats() and time.monotonic() < deadline:  # acked just after it is stored
    time.sleep(0.02)
again = record_sale.apply_async((order.id,), task_id="sale-of-order-1")  # the same message
print(again.get(timeout=30))
"""
    )
    proc = shop.run(send_twice)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["1.00", "1.00"]
    worker.wait_for_log("record_sale[sale-of-order-1] succeeded", count=2)  # both ran
    assert shop.query(count_sales) == 1


@pytest.mark.parametrize("broker_kind", DJANGO_ONLY_BROKERS)
def test_djangos_tasks_framework_runs_on_celeriac_workers(shop, start_worker):
    start_worker(shop, extra_env=shop.env)
    proc = shop.run(
        """
import time
from api.models import Product
from api.tasks import count_products
Product.objects.create(name="Kale", price="1.00")
Product.objects.create(name="Kohlrabi", price="2.00")
result = count_products.enqueue("Ka")
print(result.status, result.backend)
deadline = time.monotonic() + 30
while not result.is_finished and time.monotonic() < deadline:
    time.sleep(0.05)
    result = count_products.get_result(result.id)
print(result.status, result.return_value)
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["READY", "default", "SUCCESSFUL", "1"]


@pytest.mark.parametrize("broker_kind", DJANGO_ONLY_BROKERS)
def test_the_email_backend_sends_every_email_through_a_worker(shop, start_worker):
    env = {
        **shop.env,
        "SHOP_EMAIL_BACKEND": "celeriac.contrib.django.mail.CeleriacEmailBackend",
        "SHOP_REAL_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
    }
    start_worker(shop, extra_env=env)
    proc = shop.run(
        """
from django.core.mail import EmailMultiAlternatives
message = EmailMultiAlternatives("Invoice", "See attached.", "shop@example.com", ["d@example.com"])
message.attach_alternative("<p>See attached.</p>", "text/html")
message.attach("invoice.txt", b"total: 3 EUR", "text/plain")
print(message.send())
""",
        **{k: v for k, v in env.items() if k.startswith("SHOP_")},
    )
    assert proc.returncode == 0, proc.stderr
    email = shop.wait_for_email("Subject: Invoice")
    assert "To: d@example.com" in email
    assert "text/html" in email and 'filename="invoice.txt"' in email


@pytest.mark.parametrize("broker_kind", DJANGO_ONLY_BROKERS)
def test_the_admin_exports_orders_to_excel_with_a_download_link(shop, start_worker):
    start_worker(shop, extra_env=shop.env)
    proc = shop.run(
        PLACE_ORDER
        + """
import io, re, time
from django.test import Client
from openpyxl import load_workbook
orders = [Order.objects.create(user=user, product=product, quantity=n) for n in range(1, 61)]
admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
client = Client()
client.force_login(admin)
page = client.post(
    "/admin/api/order/",
    {"action": "export_to_excel", "_selected_action": [o.id for o in orders]},
    follow=True,
).content.decode()
link = re.search(r'href="(/admin/exports/[^"]+)"', page).group(1)
deadline = time.monotonic() + 30
while "Export ready" not in (status := client.get(link).content.decode()):
    assert time.monotonic() < deadline, status
    time.sleep(0.1)
download = client.get(link + "?download=1")
sheet = load_workbook(io.BytesIO(b"".join(download.streaming_content))).active
rows = list(sheet.iter_rows(values_only=True))
print(len(rows), rows[0][0], rows[-1][3])

from shop.celeriac import app
print(app.send_task("api.tasks.send_daily_sales_summary").get(timeout=30)["orders"])
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["61", "Order", "60", "60"]
    assert "60 orders, 1830.00 EUR." in shop.wait_for_email("Subject: Sales of the last 24 hours")


def _newer_python() -> str | None:
    """A Python 3.12+ to run Django 6 with (this suite runs on 3.11 with Django 5.2)."""
    candidates = [
        *map(str, sorted(Path.home().glob(".pyenv/versions/3.1[23]*/bin/python"))),
        *filter(None, (shutil.which(name) for name in ("python3.13", "python3.12"))),
    ]
    for python in candidates:
        check = [python, "-c", "import sys; assert sys.version_info >= (3, 12)"]
        if subprocess.run(check, capture_output=True, check=False).returncode == 0:
            return python
    return None


@pytest.fixture(scope="session")
def django6(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv with Python 3.12+ and Django 6 (its own django.tasks), with Celeriac."""
    python = _newer_python()
    if python is None:
        pytest.skip("no Python 3.12+ found: Django 6 needs one")
    venv = tmp_path_factory.mktemp("django6") / "venv"
    root = Path(__file__).resolve().parents[2]
    for command in (
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "-e", f"{root}[django]"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
    return str(venv / "bin" / "python")


@pytest.mark.parametrize("broker_kind", ["sqlite"])  # the broker changes nothing here
def test_djangos_own_tasks_framework_on_django_6(shop, django6):
    _migrate(shop.root, shop.env, python=django6)
    worker = subprocess.Popen(
        [django6, "-m", "celeriac", "-A", "shop", "worker"],
        cwd=shop.root,
        env=shop.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        script = """
import time
import django
django.setup()
from django.tasks import task_backends
from api.models import Product
from api.tasks import count_products
Product.objects.create(name="Kale", price="1.00")
result = count_products.enqueue("Ka")
deadline = time.monotonic() + 60
while not result.is_finished and time.monotonic() < deadline:
    time.sleep(0.05)
    result = count_products.get_result(result.id)
backend = type(task_backends["default"]).__name__
print(django.VERSION[0], backend, result.status, result.return_value)
"""
        proc = subprocess.run(
            [django6, "-c", script],
            cwd=shop.root,
            env=shop.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(10)
    assert proc.returncode == 0, proc.stderr
    major, backend, status, value = proc.stdout.split()
    assert int(major) >= 6
    assert (backend, status, value) == ("CeleriacBackend", "SUCCESSFUL", "1")


@pytest.mark.parametrize("broker_kind", DJANGO_ONLY_BROKERS)
def test_delay_on_commit_sends_only_what_commits(shop, start_worker):
    start_worker(shop, extra_env=shop.env)
    proc = shop.run(
        PLACE_ORDER
        + """
try:
    with transaction.atomic():
        order = Order.objects.create(user=user, product=product)
        send_order_confirmation_email.delay_on_commit(order.id, user.email)
        raise RuntimeError("rolled back")
except RuntimeError:
    pass
with transaction.atomic():
    order = Order.objects.create(user=user, product=product)
    send_order_confirmation_email.delay_on_commit(order.id, user.email)
print(order.id)
"""
    )
    assert proc.returncode == 0, proc.stderr
    shop.wait_for_email(f"Subject: Order #{int(proc.stdout.split()[-1])} confirmed")
    assert len(shop.emails()) == 1


SLOW_SALE = '''

@shared_task(atomic=True)
def record_sale_slowly(order_id, marker):
    """record_sale, with a pause inside its transaction where the test kills the worker."""
    order = Order.objects.select_related("product").get(id=order_id)
    Sale.objects.create(order=order, amount=order.total)
    Path(marker).write_text("written")
    time.sleep(2.0)
    return str(order.total)
'''


def test_an_atomic_task_killed_mid_run_and_redelivered_writes_once(shop, start_worker):
    tasks = shop.root / "api" / "tasks.py"
    tasks.write_text(tasks.read_text() + "\nimport time\n" + SLOW_SALE)
    marker = shop.root.parent / "written"
    first = start_worker(shop, "--lease", "1", extra_env=shop.env)
    proc = shop.run(
        PLACE_ORDER
        + f"""
from api.tasks import record_sale_slowly
order = Order.objects.create(user=user, product=product)
print(record_sale_slowly.delay(order.id, {str(marker)!r}).id)
"""
    )
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.split()[-1]
    wait_until(marker.exists, 30, "the task to write its row")
    first.send(signal.SIGKILL)  # inside the transaction: the row is rolled back
    first.wait_exit()
    second = start_worker(shop, extra_env=shop.env)
    second.wait_for_log(f"record_sale_slowly[{task_id}] succeeded", timeout=60)
    assert shop.query("from api.models import Sale\nprint(Sale.objects.count())") == 1


@pytest.mark.parametrize("broker_kind", ["postgres"])
def test_on_postgresql_a_delay_is_part_of_djangos_transaction(shop, start_worker):
    """Django and the broker on one PostgreSQL database: no outbox needed."""
    import psycopg

    from celeriac._postgres import schema_name

    django_schema = schema_name(new_prefix())  # dropped with the session's test schemas
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{django_schema}"')
    env = {**shop.env, "SHOP_DATABASE_URL": postgres_url(), "SHOP_DB_SCHEMA": django_schema}
    _migrate(shop.root, env)
    start_worker(shop, extra_env=env)
    broker_schema = schema_name(env["CELERY_BROKER_KEY_PREFIX"])
    proc = shop.run(
        PLACE_ORDER
        + f"""
import psycopg
def visible():  # what another connection (a worker) sees of the queue
    with psycopg.connect({postgres_url()!r}) as other:
        return other.execute('SELECT count(*) FROM "{broker_schema}".messages').fetchone()[0]
try:
    with transaction.atomic():
        order = Order.objects.create(user=user, product=product)
        send_order_confirmation_email.delay(order.id, user.email)
        raise RuntimeError("rolled back")
except RuntimeError:
    pass
with transaction.atomic():
    order = Order.objects.create(user=user, product=product)
    send_order_confirmation_email.delay(order.id, user.email)
    print(visible())  # not before the commit
print(order.id)
""",
        **{k: v for k, v in env.items() if k.startswith("SHOP_")},
    )
    assert proc.returncode == 0, proc.stderr
    before_commit, order_id = map(int, proc.stdout.split()[-2:])
    assert before_commit == 0
    shop.wait_for_email(f"Subject: Order #{order_id} confirmed")
    assert len(shop.emails()) == 1, "the rolled-back order's email was sent"
