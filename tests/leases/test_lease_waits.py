"""The leader's wait for a session's lease (actors/supervisor/lease_wait.py) against a
real PostgreSQL: a held lease keeps the session waiting until it expired plus the
margin by the database's clock; a released or absent one lets it start; a database
that does not answer starts nothing and answers within its bound."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from actors.leases.leader import LeaderLock
from actors.leases.store import LeaseStore
from actors.leases.timing import LeaseTiming
from actors.supervisor.lease_wait import LeaseWaits
from tests.pg import PgCluster

TIMING = LeaseTiming(lease=0.8, renew=0.2, margin=0.4)


@pytest.fixture
def leader(pg_dsn: str) -> Iterator[LeaseWaits]:
    waits = LeaseWaits(LeaseStore(pg_dsn, TIMING, host="alpha", pid=1, timeout_seconds=1.0),
                       timeout_seconds=1.0)
    try:
        yield waits
    finally:
        waits.close()


def test_a_held_lease_waits_until_expiry_plus_margin(pg_dsn: str, leader: LeaseWaits) -> None:
    holder = LeaseStore(pg_dsn, TIMING, host="beta", pid=4242)
    holder.ensure_schema()
    grant = holder.acquire("held")
    assert grant is not None
    granted = time.monotonic()
    holder.close()  # the holder stops renewing: as if its host was lost
    leader.add("held")
    leader.add("never-leased")
    first = leader.check()
    assert first.ready == ["never-leased"]
    assert set(first.waiting) == {"held"} and "beta" in first.waiting["held"].reason
    assert first.next_in is not None and 0 < first.next_in <= TIMING.renew
    deadline = granted + 10.0
    while True:
        found = leader.check()
        if found.ready:
            break
        assert time.monotonic() < deadline, "the lease never became free"
        assert found.next_in is not None
        time.sleep(found.next_in)  # the gate's own pacing, as the supervisor's wakeup
    waited = time.monotonic() - granted
    assert found.ready == ["held"] and not leader.sessions
    assert waited >= TIMING.lease + TIMING.margin - 0.05, waited


def test_a_released_lease_starts_at_once(pg_dsn: str, leader: LeaseWaits) -> None:
    holder = LeaseStore(pg_dsn, TIMING, host="beta", pid=7)
    holder.ensure_schema()
    grant = holder.acquire("s")
    assert grant is not None and holder.release("s", grant.epoch)
    holder.close()
    leader.add("s")
    assert leader.check().ready == ["s"]


def test_an_unanswering_database_starts_nothing_within_its_bound(pg_cluster: PgCluster,
                                                                 leader: LeaseWaits) -> None:
    leader.add("s")
    assert leader.check().ready == ["s"]  # makes the table, connects
    leader.add("s")
    pg_cluster.freeze()
    try:
        started = time.monotonic()
        found = leader.check()
        took = time.monotonic() - started
        again = leader.check()  # the first question still hangs: no second one
    finally:
        pg_cluster.freeze(False)
    assert found.ready == [] and "does not answer" in found.waiting["s"].reason
    assert took < 2.0, took
    assert again.ready == [] and "still unanswered" in again.waiting["s"].reason
    # Once the database answers again, so does the gate.
    deadline = time.monotonic() + 10.0
    while not (found := leader.check()).ready:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    assert found.ready == ["s"]


def test_a_leader_whose_question_finds_the_lock_lost_hears_it_is_a_standby(
        pg_dsn: str) -> None:
    """The supervisor steps down on either path: its periodic claim, or a question
    about waiting sessions that finds its lock gone (``Checked.standby``)."""
    import psycopg

    def gate(host: str) -> LeaseWaits:
        lock = LeaderLock(pg_dsn, f"wagate.leader.{__name__}", host=host,
                          retake_after_seconds=3600.0)
        return LeaseWaits(LeaseStore(pg_dsn, TIMING, host=host, pid=1, timeout_seconds=1.0),
                          timeout_seconds=1.0, lock=lock)

    first, second = gate("alpha"), gate("gamma")
    try:
        assert first.claim() is True
        assert second.claim() is False
        second.add("w")
        assert second.check().standby and not second.check().ready
        first.add("x")
        assert first.check().ready == ["x"]
        assert first.lock is not None
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first.lock.backend_pid(),))
        first.add("y")
        found = first.check()
        assert found.standby and found.ready == [], found
        assert found.waiting["y"].code == "LEADER_STANDBY"
        assert second.claim() is True  # the loser holds off: the standby's turn
        assert first.claim() is False
    finally:
        first.close()
        second.close()
