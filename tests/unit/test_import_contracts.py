"""The import contracts of pyproject.toml (``[tool.importlinter]``) hold, so the test
command enforces the arrows of docs/architecture.md: gateway.core is a leaf, actors see
only gateway.core, Flask stays in the web tier (the GraphQL contract, gateway.api, may
use Ariadne but reaches Flask by no chain of imports), Thespian in the actor modules,
neonize in its transport.

Each contract is also shown to fail: the tree is copied, one forbidden import is added,
and that contract must be reported broken (lint-imports reads the source statically, so
nothing of the copy is imported or run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_LINT_IMPORTS = ("import sys; from importlinter.cli import lint_imports_command; "
                    "sys.exit(lint_imports_command(sys.argv[1:]))")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree at ``root`` (its own pyproject.toml), without a cache
    (a cache directory would be left in the tree)."""
    chosen = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run([sys.executable, "-c", RUN_LINT_IMPORTS, "--no-cache", *chosen],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_the_tree_keeps_every_import_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


# (contract id, module that gains the import, the forbidden import)
VIOLATIONS = [
    ("gateway-rooms-are-layers", "gateway/api/resolvers.py", "import gateway.web.metrics"),
    ("gateway-rooms-are-layers", "gateway/auth/tokens.py", "import gateway.api.errors"),
    ("gateway-rooms-are-layers", "gateway/web/hooks.py", "import gateway.cli.serve"),
    ("core-is-a-leaf", "gateway/core/times.py", "from gateway.web import bridge"),
    ("core-is-a-leaf", "gateway/core/networks.py", "import actors.outbox.windows"),
    ("actors-see-only-core", "actors/outbox/windows.py", "import gateway.api.resolvers"),
    ("actors-see-only-core", "actors/supervisor/policy.py", "from gateway import __version__"),
    ("flask-only-in-the-web-tier", "gateway/api/health.py", "import flask"),
    ("flask-only-in-the-web-tier", "gateway/api/resolvers.py",
     "from werkzeug.exceptions import HTTPException"),
    ("ariadne-only-in-the-graphql-contract", "actors/outbox/actor.py",
     "from ariadne import ObjectType"),
    ("ariadne-only-in-the-graphql-contract", "gateway/auth/tokens.py", "import ariadne"),
    # The GraphQL contract may use Ariadne, but never Flask: not directly (as the error
    # formatter once did, for the request id) nor through a module it imports.
    ("api-without-flask", "gateway/api/errors.py", "from flask import g"),
    ("api-without-flask", "gateway/auth/scope.py", "import flask"),
    ("thespian-only-in-actors", "actors/outbox/windows.py", "import thespian.actors"),
    ("thespian-only-in-actors", "gateway/api/resolvers.py",
     "from thespian.actors import ActorSystem"),
    ("neonize-only-in-its-transport", "actors/supervisor/actor.py", "import neonize"),
    ("psycopg-only-in-leases", "actors/supervisor/cluster.py", "import psycopg"),
]


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("contracts")
    for package in ("gateway", "actors"):
        shutil.copytree(ROOT / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "graphiql"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


@pytest.mark.parametrize(("contract", "module", "line"), VIOLATIONS)
def test_a_forbidden_import_breaks_its_contract(tree_copy: Path, contract: str, module: str,
                                                line: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # a violation planted by the test\n")
    try:
        done = lint_imports(tree_copy, contract)
    finally:
        path.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 broken" in done.stdout, done.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {line.split()[1].split('.')[0]}" in done.stdout, done.stdout
