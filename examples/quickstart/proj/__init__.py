# As with Celery: importing the package creates the app, so shared tasks bind to it.
from .celeriac import app

__all__ = ("app",)
