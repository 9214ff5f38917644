"""Leadership as a PostgreSQL advisory lock (actors/leases/leader.py, issue 22)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from actors.leases.leader import (
    LEADER_LOCK,
    LeaderDirectory,
    LeaderLock,
    Published,
    advisory_key,
)
from actors.leases.store import LeaseStoreUnavailable

DEADLINE_SECONDS = 4.0


@pytest.fixture
def contenders(pg_dsn: str) -> Iterator[tuple[LeaderLock, LeaderLock]]:
    first, second = LeaderLock(pg_dsn), LeaderLock(pg_dsn)
    try:
        yield first, second
    finally:
        first.release()
        second.release()


def test_the_key_is_a_stable_signed_bigint() -> None:
    key = advisory_key(LEADER_LOCK)
    assert key == advisory_key("wagate.leader") and -(2**63) <= key < 2**63
    assert advisory_key("wagate.leader.test") != key


def test_a_second_contender_is_refused_while_the_first_holds(
        contenders: tuple[LeaderLock, LeaderLock]) -> None:
    first, second = contenders
    assert first.try_acquire() is True
    assert first.holds() is True
    assert second.try_acquire() is False
    assert second.holds() is False
    assert first.try_acquire() is True  # asking again is no second lock


def test_the_standby_takes_over_when_the_holder_closes(
        contenders: tuple[LeaderLock, LeaderLock]) -> None:
    first, second = contenders
    assert first.try_acquire()
    first.release()
    assert second.try_acquire() is True
    assert first.try_acquire() is False


def test_the_standby_takes_over_when_the_holders_session_is_killed(
        pg_dsn: str, contenders: tuple[LeaderLock, LeaderLock]) -> None:
    """The holder's database session ends without the holder's doing (a crash, a
    terminated backend): the server frees the lock, the standby gets it, and the old
    holder learns from ``holds`` that it is leader no more."""
    first, second = contenders
    assert first.try_acquire()
    backend = first.backend_pid()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not second.try_acquire():
        assert time.monotonic() < deadline, "the standby never took over"
        time.sleep(0.02)
    assert first.holds() is False
    assert first.try_acquire() is False


def test_an_unreachable_database_gives_no_leadership() -> None:
    from tests.pg import free_port

    lock = LeaderLock(f"host=127.0.0.1 port={free_port()} user=x dbname=x",
                      timeout_seconds=1.0)
    assert lock.try_acquire() is False
    assert lock.holds() is False
    lock.release()


def test_the_holder_publishes_its_address_and_the_directory_names_it_while_it_holds(
        pg_dsn: str) -> None:
    """Members find the active leader in ``wagate_leader``: the row of the last
    contender that took the lock, said to be held only while its connection holds it."""
    directory = LeaderDirectory(pg_dsn)
    first = LeaderLock(pg_dsn, address="10.0.0.1:19500", host="alpha", pid=11)
    second = LeaderLock(pg_dsn, address="10.0.0.2:19500", host="gamma", pid=22)
    try:
        assert directory.current() is None  # nobody ever took the lock here
        assert first.try_acquire() and not second.try_acquire()
        assert directory.current() == Published("10.0.0.1:19500", "alpha", 11, True)
        first.release()
        # The dead holder's row stays, but is not taken for the active leader.
        assert directory.current() == Published("10.0.0.1:19500", "alpha", 11, False)
        assert second.try_acquire()
        assert directory.current() == Published("10.0.0.2:19500", "gamma", 22, True)
    finally:
        first.release()
        second.release()
        directory.close()


def test_a_contender_without_an_address_publishes_nothing(pg_dsn: str) -> None:
    lock, directory = LeaderLock(pg_dsn), LeaderDirectory(pg_dsn)
    try:
        assert lock.try_acquire()
        assert directory.current() is None
    finally:
        lock.release()
        directory.close()


def test_the_directory_of_an_unreachable_database_raises() -> None:
    from tests.pg import free_port

    directory = LeaderDirectory(f"host=127.0.0.1 port={free_port()} user=x dbname=x")
    with pytest.raises(LeaseStoreUnavailable):
        directory.current()
    directory.close()


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_holder_that_lost_the_lock_leaves_it_to_a_standby_for_the_hold_off(
        pg_dsn: str) -> None:
    """Its connection ended from the server's side: ``holds`` says so and notes when;
    for ``retake_after_seconds`` it does not try again, even with the lock free, so a
    standby takes it; after that it contends again like any standby."""
    clock = _Clock()
    first = LeaderLock(pg_dsn, retake_after_seconds=3.0, clock=clock)
    second = LeaderLock(pg_dsn)
    try:
        assert first.try_acquire()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first.backend_pid(),))
        assert first.holds() is False
        assert first.lost_at == clock.now
        clock.now += 2.9
        assert first.try_acquire() is False  # the lock is free, but not for it yet
        assert first.backend_pid() is None  # it did not even connect
        assert second.try_acquire() is True
        clock.now += 0.1
        assert first.try_acquire() is False  # it tries again: the standby holds it
        second.release()
        assert first.try_acquire() is True  # a lock lost briefly is taken back
    finally:
        first.release()
        second.release()
