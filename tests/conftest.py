"""PostgreSQL for the tests that need one (the leases, the outbox store on both backends):
one real cluster per test session (``tests/pg.py``), and a fresh database per test so
tests never see each other's rows."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# The outbox store's backends (actors.outbox.db): SQLite on one host, PostgreSQL in
# multi-host mode. A test that takes ``open_store`` runs once on each.
STORE_BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    """The backend's database URL: empty for SQLite (no server started), a fresh
    PostgreSQL database for ``postgres``."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def open_store(store_backend: str) -> Iterator[Callable[..., Any]]:
    """``MessageStore(directory, ...)`` on this test's backend: every call opens the
    same store (a reopen is a restart, or a standby leader taking over). Each is
    closed at the end (a PostgreSQL one has a thread), also those a test left open."""
    from actors.outbox.store import MessageStore

    opened: list[MessageStore] = []

    def opener(directory: Path, *args: Any, **kwargs: Any) -> MessageStore:
        store = MessageStore(directory, *args, database_url=store_backend, **kwargs)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()
