from __future__ import annotations

from django.apps import AppConfig


class CeleriacConfig(AppConfig):
    name = "celeriac.contrib.django"
    label = "celeriac"
    verbose_name = "Celeriac"
    default_auto_field = "django.db.models.BigAutoField"
