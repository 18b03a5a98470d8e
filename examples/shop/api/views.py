from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, Http404, HttpResponse
from django.utils.html import escape
from rest_framework import mixins, permissions, viewsets

from shop.celeriac import app

from .models import Order, Product
from .serializers import OrderSerializer, ProductSerializer, UserSerializer
from .tasks import record_sale, send_order_confirmation_email, send_welcome_email


class UserViewSet(mixins.CreateModelMixin, viewsets.GenericViewSet):
    """POST /api/users/: sign up; the welcome email goes out from the worker."""

    serializer_class = UserSerializer
    permission_classes = [permissions.AllowAny]

    def perform_create(self, serializer):
        user = serializer.save()
        send_welcome_email.delay(user.id)


class ProductViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Product.objects.order_by("id")
    serializer_class = ProductSerializer


class OrderViewSet(viewsets.ModelViewSet):
    """POST /api/orders/: answers at once; the worker sends the confirmation email."""

    serializer_class = OrderSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        return Order.objects.filter(user=self.request.user).order_by("-id")

    def perform_create(self, serializer):
        order = serializer.save(user=self.request.user)
        send_order_confirmation_email.delay(order.id, self.request.user.email)
        record_sale.delay(order.id)


@staff_member_required
def export_status(request, task_id):
    """The admin's page for an export: its progress, then a download link."""
    result = app.AsyncResult(task_id)
    if result.successful():
        if request.GET.get("download"):
            path = settings.MEDIA_ROOT / result.result
            if not path.is_file():
                raise Http404("the export file is gone")
            return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)
        body = f'Export ready: <a href="?download=1">{escape(result.result)}</a>'
    elif result.failed():
        body = f"Export failed: {escape(str(result.result))}"
    else:
        progress = result.progress or {"current": 0, "total": 1, "message": "waiting"}
        percent = 100 * progress["current"] / max(progress["total"], 1)
        body = (
            '<meta http-equiv="refresh" content="1">'
            f"Exporting orders: {percent:.0f}% ({escape(progress['message'] or '')})"
        )
    return HttpResponse(f"<!doctype html><title>Orders export</title><p>{body}</p>")
