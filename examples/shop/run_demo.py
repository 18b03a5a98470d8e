"""The README's first command: the shop on the embedded SQLite broker, no server needed.

Migrates the shop's database, starts `celeriac -A shop worker`, signs a user up and
places an order through the REST API (Django's test client, in this process), and shows
the emails the worker sent — the order endpoint answered before they were written.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
os.chdir(HERE)
sys.path.insert(0, str(HERE))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
WANTED = ("Subject: Welcome to the shop", "Subject: Order #1 confirmed")


def fresh_start() -> None:
    for leftover in [*HERE.glob("celeriac.db*"), *HERE.glob("shop.sqlite3*")]:
        leftover.unlink()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], check=True)


def start_worker(seen: dict[str, threading.Event]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "celeriac", "-A", "shop", "worker", "--loglevel=info"]
    print("$ celeriac -A shop worker --loglevel=info")
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )

    def relay() -> None:  # show the worker's output (the console email backend prints there)
        assert worker.stdout is not None
        for line in worker.stdout:
            print("  worker | " + line.rstrip())
            for text, event in seen.items():
                if text in line:
                    event.set()

    threading.Thread(target=relay, daemon=True).start()
    if not seen["celeriac worker ready"].wait(60):
        sys.exit("the worker did not start; see its output above")
    return worker


def place_order() -> None:
    import django

    django.setup()
    from django.test import Client

    from api.models import Product

    Product.objects.create(name="Celeriac root, 1 kg", price="3.20")
    client = Client()
    started = time.perf_counter()
    signup = client.post(
        "/api/users/",
        {"username": "alice", "email": "alice@example.com", "password": "s3cret-pass"},
        content_type="application/json",
    )
    print(f"POST /api/users/  -> {signup.status_code} in {_ms(started)}: {signup.json()}")
    client.login(username="alice", password="s3cret-pass")  # a session, as a browser has
    started = time.perf_counter()
    order = client.post(
        "/api/orders/", {"product": 1, "quantity": 2}, content_type="application/json"
    )
    print(f"POST /api/orders/ -> {order.status_code} in {_ms(started)}: {order.json()}")
    if signup.status_code != 201 or order.status_code != 201:
        sys.exit("the API refused the order")


def _ms(started: float) -> str:
    return f"{1000 * (time.perf_counter() - started):.0f} ms"


def main() -> None:
    fresh_start()
    seen = {text: threading.Event() for text in ("celeriac worker ready", *WANTED)}
    worker = start_worker(seen)
    try:
        place_order()
        for text in WANTED:
            if not seen[text].wait(60):
                sys.exit(f"the worker did not send the email {text!r}")
        print("the worker sent the welcome email and the order confirmation (shown above)")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


if __name__ == "__main__":
    main()
