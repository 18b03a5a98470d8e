from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from api import views

router = DefaultRouter()
router.register("users", views.UserViewSet, basename="user")
router.register("products", views.ProductViewSet)
router.register("orders", views.OrderViewSet, basename="order")

urlpatterns = [
    path("admin/exports/<str:task_id>/", views.export_status, name="export-status"),
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
]
