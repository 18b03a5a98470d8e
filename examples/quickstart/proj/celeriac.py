"""The app: `celeriac -A proj worker` finds it here."""

from celeriac import Celeriac

app = Celeriac("proj")  # no broker given: an SQLite file, celeriac.db, in the working directory
app.autodiscover_tasks(["proj"])  # imports proj.tasks
