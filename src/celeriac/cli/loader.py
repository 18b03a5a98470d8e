"""Find the app that `-A` names: `proj`, `proj.celeriac`, or `proj.module:attribute`."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from ..app import Celeriac
from ..exceptions import AppNotFoundError


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            return None  # the module itself (or its package) is missing, not an import in it
        raise


def _find_in(module: ModuleType) -> Celeriac | None:
    for attr in ("app", "celeriac", "celery"):
        candidate = getattr(module, attr, None)
        if isinstance(candidate, Celeriac):
            return candidate
    found = [v for v in vars(module).values() if isinstance(v, Celeriac)]
    return found[0] if len(found) == 1 else None


def load_app(spec: str) -> Celeriac:
    """Import the app. `proj` looks for an app in `proj`, then in `proj.celeriac`."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = _import(module_name)
    except Exception as exc:
        raise AppNotFoundError(f"-A {spec}: importing {module_name} failed: {exc!r}") from exc
    if module is None:
        raise AppNotFoundError(
            f"-A {spec}: no module named {module_name!r} (run from the directory that holds it)"
        )
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Celeriac):
            raise AppNotFoundError(f"-A {spec}: {module_name}.{attr} is not a Celeriac app")
        return app
    app = _find_in(module)
    if app is None and module_name.rpartition(".")[2] != "celeriac":
        sub = _import(f"{module_name}.celeriac")
        app = _find_in(sub) if sub is not None else None
    if app is None:
        raise AppNotFoundError(
            f"-A {spec}: found no Celeriac app in {module_name} (nor {module_name}.celeriac);"
            f" name it: -A {module_name}:app"
        )
    return app
