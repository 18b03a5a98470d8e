from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from .models import Order, Product, Sale
from .tasks import export_orders_to_excel


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "price"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "product", "quantity", "created"]
    actions = ["export_to_excel"]

    @admin.action(description="Export orders to Excel")
    def export_to_excel(self, request, queryset):
        result = export_orders_to_excel.delay()
        link = reverse("export-status", args=[result.id])
        self.message_user(
            request,
            format_html(
                'Exporting in the background: <a href="{}">progress and download</a>', link
            ),
            messages.SUCCESS,
        )


admin.site.register(Sale)
