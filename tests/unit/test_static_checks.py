"""The static checks run inside the test command, so CI enforces them: ``ruff check .``
and ``mypy`` (``[tool.mypy]`` in pyproject.toml: strict on gateway.core, gateway.api
and the pure modules of actors/, default mode on the rest) must both pass on the tree.

Each check is also shown to fail: the packages are copied, one error is planted, and
the check must report it by file and code (neither tool imports or runs the code it
reads). The copy keeps its own mypy cache, shared by the planted cases, so only the
changed module is checked again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``python -m <command>`` in ``root`` (its own pyproject.toml is the config)."""
    return subprocess.run([sys.executable, "-m", *command], cwd=root, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_ruff_finds_nothing() -> None:
    done = run(ROOT, "ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing() -> None:
    # The cache is the configured .mypy_cache (ignored by git): a second run is quick.
    done = run(ROOT, "mypy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("static")
    for package in ("gateway", "actors"):
        shutil.copytree(ROOT / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "graphiql"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    # Seeded with the tree's own cache (test_mypy_finds_nothing, above, leaves it): the
    # copy is the same code, so even its first planted case checks one module again
    # instead of all of them (a cold run took 30 s of the suite).
    if (ROOT / ".mypy_cache").is_dir():
        shutil.copytree(ROOT / ".mypy_cache", copy / ".mypy_cache")
    return copy


def planted(path: Path, code: str) -> str:
    """``path`` with ``code`` appended; returns the original text to put back."""
    original = path.read_text()
    path.write_text(f"{original}\n\n{code}\n")
    return original


# (module that gains the code, the code, the error code mypy must report)
TYPE_ERRORS = [
    # strict: a function without annotations
    ("gateway/core/times.py", "def untyped(value):\n    return value", "no-untyped-def"),
    ("gateway/api/qr.py", "def untyped(value):\n    return value", "no-untyped-def"),
    ("actors/outbox/windows.py", "def untyped(value):\n    return value", "no-untyped-def"),
    # strict: Any returned where a type was promised
    ("actors/session/machine.py",
     "def leaked(value: dict[str, Any]) -> int:\n    return value['x']", "no-any-return"),
    # default mode: a plain type error anywhere else
    ("gateway/web/app.py", "def wrong() -> int:\n    return 'one'", "return-value"),
    ("actors/outbox/actor.py", "def wrong() -> int:\n    return 'one'", "return-value"),
]


@pytest.mark.parametrize(("module", "code", "error"), TYPE_ERRORS)
def test_mypy_reports_a_planted_type_error(tree_copy: Path, module: str, code: str,
                                           error: str) -> None:
    path = tree_copy / module
    original = planted(path, code)
    try:
        done = run(tree_copy, "mypy")
    finally:
        path.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"[{error}]" in done.stdout, done.stdout
    assert all(line.startswith(module) for line in done.stdout.splitlines()
               if ": error:" in line), done.stdout


def test_default_mode_outside_the_strict_modules(tree_copy: Path) -> None:
    """The web tier is checked, but not strictly: an unannotated helper passes there
    (and fails in gateway.core, above)."""
    path = tree_copy / "gateway/web/app.py"
    original = planted(path, "def untyped(value):\n    return value")
    try:
        done = run(tree_copy, "mypy")
    finally:
        path.write_text(original)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_reports_a_planted_finding(tree_copy: Path) -> None:
    path = tree_copy / "actors/outbox/windows.py"
    original = planted(path, "import os")
    try:
        done = run(tree_copy, "ruff", "check", "--no-cache", ".")
    finally:
        path.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "actors/outbox/windows.py" in done.stdout and "F401" in done.stdout, done.stdout
