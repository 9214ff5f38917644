"""Fixtures of the lease tests: one real PostgreSQL cluster per test session
(``tests/pg.py``), and a fresh database per test so tests never see each other's rows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PgCluster, find_bindir, new_database, sweep_leftovers

_numbers = itertools.count(1)


def pg_bindir_or_skip() -> Path:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb and postgres are not installed; run "
                    "scripts/system-deps as root (it installs Debian's postgresql)")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install -e '.[test]'")
    return bindir


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway cluster on 127.0.0.1, shared by the session, removed at its end."""
    bindir = pg_bindir_or_skip()
    sweep_leftovers()
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """The DSN of a new, empty database in the shared cluster."""
    return new_database(pg_cluster, f"t{next(_numbers)}")
