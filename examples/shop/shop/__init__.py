# Load the Celeriac app when Django starts, so that @shared_task binds to it.
from .celeriac import app

__all__ = ["app"]
