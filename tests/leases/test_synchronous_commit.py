"""Our PostgreSQL connections commit durably whatever the server's default (issue 22:
``synchronous_commit`` on): a real server whose database is configured with
``synchronous_commit = off``."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from actors.leases.journal import Sent, SentJournal
from actors.leases.leader import LeaderLock
from actors.leases.store import LeaseStore, WeakCommits, check_durable, connect
from actors.leases.timing import LeaseTiming

TIMING = LeaseTiming(lease=30.0, renew=5.0, margin=5.0)


def _setting(conn: psycopg.Connection) -> str:  # type: ignore[type-arg]
    row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def weak_dsn(pg_dsn: str) -> Iterator[str]:
    """A database whose default is synchronous_commit = off (as a server configured for
    speed would have it), checked on a plain connection."""
    name = conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    with psycopg.connect(pg_dsn, autocommit=True) as plain:
        assert _setting(plain) == "off"
    yield pg_dsn


def test_our_connections_commit_durably_on_a_server_that_defaults_to_off(
        weak_dsn: str) -> None:
    with connect(weak_dsn, 2.0) as conn:
        assert _setting(conn) == "on"


def test_the_lease_store_and_the_journal_write_with_synchronous_commit_on(
        weak_dsn: str) -> None:
    """The store's fenced write records the setting its own statement ran under; the
    journal's write goes through the same ``connect`` on a server that defaults to off."""
    store = LeaseStore(weak_dsn, TIMING, host="alpha", pid=1)
    journal = SentJournal(weak_dsn, 2.0, 1.0)
    try:
        store.ensure_schema()
        grant = store.acquire("s")
        assert grant is not None
        with psycopg.connect(weak_dsn, autocommit=True) as admin:
            admin.execute("CREATE TABLE seen (setting text)")
        assert store.fenced_write("s", grant.epoch, "INSERT INTO seen SELECT "
                                  "current_setting('synchronous_commit')") == 1
        assert journal.record("s", grant.epoch, [Sent("m1", "wa1", 1.0)]) == 1
        with psycopg.connect(weak_dsn, autocommit=True) as admin:
            rows = admin.execute("SELECT setting FROM seen").fetchall()
        assert rows == [("on",)]
    finally:
        journal.close()
        store.close()


def test_the_leadership_locks_connection_too(weak_dsn: str) -> None:
    lock = LeaderLock(weak_dsn, timeout_seconds=2.0)
    try:
        assert lock.try_acquire()
        conn = lock._connection()  # its only connection; no query of its own shows it
        assert _setting(conn) == "on"
    finally:
        lock.release()


def test_a_connection_that_lost_the_setting_is_refused(pg_dsn: str) -> None:
    """What a pooler that drops startup options would hand us."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        with pytest.raises(WeakCommits, match="synchronous_commit is 'off'") as refused:
            check_durable(conn)
        # What to do fits the 200 characters a waiting session's lastError shows of it
        # (actors.leases.bounded).
        assert "ALTER ROLE" in str(refused.value)[:200]
        conn.execute("SET synchronous_commit = remote_apply")
        check_durable(conn)  # stronger than on: accepted
