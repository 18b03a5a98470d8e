"""Static checks: the typed API, and the package itself (mypy --strict, ruff)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_delay_and_get_are_typed_by_the_function() -> None:
    # --warn-unused-ignores turns each expected error into a check: if mypy stopped
    # rejecting `add.delay("x", 1)`, its ignore comment would be reported as unused.
    out = _mypy("--strict", "--warn-unused-ignores", "tests/typing/typed_tasks.py")
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_passes_mypy_strict() -> None:
    out = _mypy()  # files and strictness from pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    out = subprocess.run(
        [ruff, "check", "src", "tests", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [ruff, "format", "--check", "src", "tests", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
