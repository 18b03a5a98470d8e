"""The shop's Celeriac app: Celery's Django recipe, with `celery` changed to `celeriac`."""

import os

from celeriac import Celeriac

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celeriac("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
