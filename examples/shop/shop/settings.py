"""Settings of the example shop. Every setting a test or a deployment changes comes from
the environment: SHOP_DB (or SHOP_DATABASE_URL and SHOP_DB_SCHEMA for PostgreSQL),
CELERY_BROKER_URL, CELERY_BROKER_KEY_PREFIX, SHOP_EMAIL_BACKEND, SHOP_EMAIL_DIR,
SHOP_EMAIL_HOST, SHOP_EMAIL_PORT, SHOP_OUTBOX."""

import os
from pathlib import Path

from celeriac import crontab

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "only-for-the-example-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "celeriac.contrib.django",
    "api",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", BASE_DIR / "shop.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}
if url := os.environ.get("SHOP_DATABASE_URL"):  # postgresql://user@host:port/name
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": parts.port or 5432,
    }
    if schema := os.environ.get("SHOP_DB_SCHEMA"):  # the tests give each run its own
        DATABASES["default"]["OPTIONS"] = {"options": f"-c search_path={schema}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
MEDIA_ROOT = Path(os.environ.get("SHOP_MEDIA", BASE_DIR / "media"))
USE_TZ = True
TIME_ZONE = "UTC"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
}

# Email: printed by the console backend (in the worker's output, since the worker sends it).
EMAIL_BACKEND = os.environ.get(
    "SHOP_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"
)
EMAIL_FILE_PATH = os.environ.get("SHOP_EMAIL_DIR", BASE_DIR / "sent-mail")
EMAIL_HOST = os.environ.get("SHOP_EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("SHOP_EMAIL_PORT", "25"))
# With EMAIL_BACKEND = "celeriac.contrib.django.mail.CeleriacEmailBackend", every email goes
# out from a worker, through this backend:
CELERIAC_EMAIL_BACKEND = os.environ.get(
    "SHOP_REAL_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = "shop@example.com"
SALES_REPORT_TO = ["sales@example.com"]

# Django's own Tasks framework (@task, .enqueue()) on Celeriac workers. Django 6 has it
# built in; on Django 5.2 it is the django-tasks backport, an app of its own.
try:
    import django.tasks  # noqa: F401
except ImportError:
    INSTALLED_APPS.append("django_tasks")
TASKS = {"default": {"BACKEND": "celeriac.contrib.django.tasks.CeleriacBackend"}}

# Celeriac, with Celery's setting names (namespace="CELERY" in shop/celeriac.py).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"sqlite:///{BASE_DIR / 'celeriac.db'}")
CELERY_BROKER_KEY_PREFIX = os.environ.get("CELERY_BROKER_KEY_PREFIX", "shop")
if backend := os.environ.get("CELERY_RESULT_BACKEND"):  # RabbitMQ needs one (redis://...)
    CELERY_RESULT_BACKEND = backend
CELERY_TASK_OUTBOX = os.environ.get("SHOP_OUTBOX") == "1"
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "daily-sales-summary": {
        "task": "api.tasks.send_daily_sales_summary",
        "schedule": crontab(hour=7, minute=0),
    },
}
