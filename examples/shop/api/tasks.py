"""The shop's slow work, done by the worker instead of in the request."""

import datetime as dt
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db.models import F, Sum
from django.utils import timezone

from celeriac import shared_task

from .models import Order, Product, Sale

try:  # Django's own Tasks framework: built in since Django 6, a backport before
    from django.tasks import task as django_task
except ImportError:
    from django_tasks import task as django_task


@shared_task
def send_order_confirmation_email(order_id, user_email):
    order = Order.objects.select_related("product").get(id=order_id)
    send_mail(
        subject=f"Order #{order.id} confirmed",
        message=(
            f"Thank you for your order of {order.quantity} x {order.product.name}"
            f" ({order.total} EUR). We will let you know when it ships."
        ),
        from_email=None,
        recipient_list=[user_email],
    )
    return f"confirmation of order #{order.id} sent to {user_email}"


@shared_task
def send_welcome_email(user_id):
    user = User.objects.get(id=user_id)
    send_mail(
        subject="Welcome to the shop",
        message=f"Hello {user.username}, your account is ready.",
        from_email=None,
        recipient_list=[user.email],
    )
    return f"welcome sent to {user.email}"


@shared_task(atomic=True)
def record_sale(order_id):
    """Writes the order into the sales ledger: once, even if the message is delivered
    again (atomic: the row and the task's done-mark commit together)."""
    order = Order.objects.select_related("product").get(id=order_id)
    Sale.objects.create(order=order, amount=order.total)
    return str(order.total)


@shared_task(bind=True)
def export_orders_to_excel(self):
    """All orders in an .xlsx file, with progress the admin page shows."""
    from openpyxl import Workbook

    orders = Order.objects.select_related("user", "product").order_by("id")
    total = orders.count()
    book = Workbook()
    sheet = book.active
    sheet.title = "Orders"
    sheet.append(["Order", "Customer", "Product", "Quantity", "Total", "Created"])
    for n, order in enumerate(orders.iterator(), 1):
        sheet.append(
            [
                order.id,
                order.user.username,
                order.product.name,
                order.quantity,
                float(order.total),
                order.created.replace(tzinfo=None),
            ]
        )
        if n % 50 == 0 or n == total:
            self.update_progress(n, total, message=f"{n} of {total} orders")
    path = Path(settings.MEDIA_ROOT) / "exports" / f"orders-{self.request.id}.xlsx"
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return str(path.relative_to(settings.MEDIA_ROOT))


@shared_task
def send_daily_sales_summary():
    """Mailed every morning by the beat (CELERY_BEAT_SCHEDULE in settings.py)."""
    since = timezone.now() - dt.timedelta(days=1)
    orders = Order.objects.filter(created__gte=since)
    revenue = orders.aggregate(total=Sum(F("product__price") * F("quantity")))["total"] or 0
    send_mail(
        subject="Sales of the last 24 hours",
        message=f"{orders.count()} orders, {revenue:.2f} EUR.",
        from_email=None,
        recipient_list=settings.SALES_REPORT_TO,
    )
    return {"orders": orders.count(), "revenue": str(revenue)}


@django_task(priority=50)
def count_products(prefix=""):
    """A task of Django's Tasks framework (`count_products.enqueue("Ka")`), run by a
    Celeriac worker through TASKS = {"default": {"BACKEND": ...CeleriacBackend}}."""
    return Product.objects.filter(name__startswith=prefix).count()
