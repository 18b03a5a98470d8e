"""The tutorial's claim as a figure: how long `POST /api/orders/` takes when the
confirmation email is sent inline, against sending it through Celeriac.

The example shop (examples/shop) runs in this process with Django's test client; its
email goes by SMTP to a local server that takes 200 ms to accept a message (a slow mail
relay). Inline, the view calls the task function itself; with Celeriac it calls
`.delay()`, which stores the message in the broker (SQLite here, or --broker) and
returns. No worker runs: only the request's own time is measured.

    .venv/bin/python bench/django_order_latency.py [--requests 40] [--broker URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
SMTP_DELAY = 0.2  # seconds the mail server takes to accept a message


def start_slow_smtp_server() -> int:
    """A minimal SMTP server on a free port that waits SMTP_DELAY before accepting DATA."""
    ready = threading.Event()
    port: list[int] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 bench ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    await asyncio.sleep(SMTP_DELAY)
                    writer.write(b"250 queued\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                in_data = True
                writer.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(session, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait(10)
    return port[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--broker", help="broker URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="shop.settings",
        SHOP_DB=str(work / "shop.sqlite3"),
        CELERY_BROKER_URL=args.broker or f"sqlite:///{work / 'broker.db'}",
        CELERY_BROKER_KEY_PREFIX=f"bench-{os.getpid()}",
        SHOP_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        SHOP_EMAIL_HOST="127.0.0.1",
        SHOP_EMAIL_PORT=str(start_slow_smtp_server()),
    )
    sys.path.insert(0, str(SHOP))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    import api.views
    from api.models import Product
    from api.tasks import record_sale, send_order_confirmation_email

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", "bench@example.com", "pw")
    Product.objects.create(name="Celeriac", price="3.20")
    client = Client()
    client.force_login(user)

    def timings() -> list[float]:
        found = []
        for _ in range(args.requests):
            started = time.perf_counter()
            response = client.post(
                "/api/orders/", {"product": 1, "quantity": 1}, content_type="application/json"
            )
            found.append(time.perf_counter() - started)
            assert response.status_code == 201, response.content
        return found

    class Inline:  # what the view would do without a task queue: the work, in the request
        def __init__(self, fn):
            self.fn = fn

        def delay(self, *a):
            return self.fn(*a)

    api.views.send_order_confirmation_email = Inline(send_order_confirmation_email)
    api.views.record_sale = Inline(record_sale.fn)
    inline = timings()
    api.views.send_order_confirmation_email = send_order_confirmation_email
    api.views.record_sale = record_sale
    queued = timings()

    def line(name: str, values: list[float]) -> str:
        p50 = statistics.median(values) * 1000
        p95 = sorted(values)[int(0.95 * (len(values) - 1))] * 1000
        return f"| {name} | {p50:.1f} | {p95:.1f} |"

    delay_ms = SMTP_DELAY * 1000
    print(f"POST /api/orders/, {args.requests} requests each, SMTP taking {delay_ms:.0f} ms")
    print(f"broker: {os.environ['CELERY_BROKER_URL'].split('://')[0]}")
    print("| email sent | p50 ms | p95 ms |\n|---|---|---|")
    print(line("inline (in the request)", inline))
    print(line("by Celeriac (.delay())", queued))
    ratio = statistics.median(inline) / statistics.median(queued)
    print(f"the order endpoint answers {ratio:.0f}x faster with Celeriac")


if __name__ == "__main__":
    main()
