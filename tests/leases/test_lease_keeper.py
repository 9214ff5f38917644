"""A session process's hold on its lease (actors/leases/keeper.py) against a real
PostgreSQL: kept while the database answers, given up by itself in time when it does
not, whatever the renewing thread is stuck in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from actors.leases.keeper import LeaseKeeper
from actors.leases.store import LeaseStore
from actors.leases.timing import LeaseTiming, holder_clock
from tests.pg import PgCluster

FAST = LeaseTiming(lease=0.8, renew=0.2, margin=0.4)
DEADLINE_SECONDS = 4.0


@dataclass
class Calls:
    """What the keeper reported, with the holder clock's time of each report."""

    granted: list[tuple[int, float]] = field(default_factory=list)
    lost: list[tuple[str, float]] = field(default_factory=list)
    exits: list[float] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def note(self, into: list, item: object) -> None:  # type: ignore[type-arg]
        with self.changed:
            into.append((item, holder_clock()) if item is not None else holder_clock())
            self.changed.notify_all()

    def wait(self, what: str, check: object, seconds: float = DEADLINE_SECONDS) -> None:
        with self.changed:
            if not self.changed.wait_for(check, seconds):  # type: ignore[arg-type]
                raise AssertionError(f"not within {seconds} s: {what}")


@pytest.fixture
def keep(pg_dsn: str) -> Iterator[tuple[LeaseKeeper, Calls, str]]:
    LeaseStore(pg_dsn, FAST).ensure_schema()
    calls = Calls()
    keeper = LeaseKeeper(LeaseStore(pg_dsn, FAST, host="host-a", pid=1), "s1",
                         on_granted=lambda epoch: calls.note(calls.granted, epoch),
                         on_lost=lambda reason: calls.note(calls.lost, reason),
                         exit_hard=lambda: calls.note(calls.exits, None))
    try:
        yield keeper, calls, pg_dsn
    finally:
        keeper.stop(release=False)


def test_the_lease_is_kept_for_many_lease_lengths(keep: tuple[LeaseKeeper, Calls, str]) -> None:
    keeper, calls, dsn = keep
    keeper.start()
    calls.wait("granted", lambda: calls.granted)
    rival = LeaseStore(dsn, FAST, host="host-b", pid=2)
    first = rival.current("s1")
    assert first is not None
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (now := rival.current("s1")) is not None and (now.db_now - first.expires_at
                                                        ).total_seconds() < 2 * FAST.lease:
        assert now.held and now.epoch == first.epoch, "the lease lapsed while kept"
        assert time.monotonic() < deadline
        assert rival.acquire("s1") is None
    assert calls.lost == [] and keeper.holds()
    rival.close()


def test_the_keeper_waits_for_a_rival_and_gets_the_lease_once_released(
        keep: tuple[LeaseKeeper, Calls, str]) -> None:
    keeper, calls, dsn = keep
    rival = LeaseStore(dsn, LeaseTiming(30, 5, 5), host="host-b", pid=2)
    held = rival.acquire("s1")
    assert held is not None
    keeper.start()
    released_at = None
    try:
        with pytest.raises(AssertionError):  # asks every renew interval, never granted
            calls.wait("granted while the rival holds", lambda: calls.granted,
                       seconds=5 * FAST.renew)
        assert not keeper.holds()
        assert rival.release("s1", held.epoch)
        released_at = holder_clock()
        calls.wait("granted after the release", lambda: calls.granted)
    finally:
        rival.close()
    [(epoch, at)] = calls.granted
    assert epoch == held.epoch + 1 and at >= released_at and keeper.holds()


def test_a_refused_renewal_gives_the_lease_up_at_once(
        keep: tuple[LeaseKeeper, Calls, str]) -> None:
    """Someone else got the lease (here: it was made to expire and a rival took it):
    the next renewal is refused and the keeper lets go at once, not at its deadline."""
    keeper, calls, dsn = keep
    keeper.start()
    calls.wait("granted", lambda: calls.granted)
    assert keeper.epoch_held() == calls.granted[0][0]  # what a store write carries
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE wagate_leases SET expires_at = now() - interval '1 hour'")
    rival = LeaseStore(dsn, FAST, host="host-b", pid=2)
    assert rival.acquire("s1") is not None
    rival.close()
    calls.wait("lost", lambda: calls.lost)
    [(reason, _)] = calls.lost
    assert "renewal refused" in reason and not keeper.holds()
    assert keeper.epoch_held() is None  # no store write from here on
    calls.wait("the hard exit half a margin later", lambda: calls.exits)
    assert calls.exits[0] - calls.lost[0][1] == pytest.approx(FAST.margin / 2, abs=0.15)


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
def test_an_unanswering_database_ends_the_hold_by_the_deadline(
        pg_cluster: PgCluster, keep: tuple[LeaseKeeper, Calls, str], fault: str) -> None:
    """``stopped``: connections are refused. ``frozen`` (SIGSTOP to every server process):
    the renewal hangs in
    its call and never returns; the fence still acts on time. Either way ``on_lost``
    comes ``lease`` after the last renewal was sent, which is before the database's
    expiry, and the hard exit half a margin later, before any rival may start."""
    keeper, calls, _ = keep
    keeper.start()
    calls.wait("granted", lambda: calls.granted)
    assert pg_cluster.process is not None
    try:
        if fault == "stopped":
            pg_cluster.stop()
        else:
            pg_cluster.freeze()
        last = keeper.holding
        assert last is not None
        calls.wait("lost", lambda: calls.lost)
        calls.wait("the hard exit", lambda: calls.exits)
    finally:
        if fault == "stopped":
            pg_cluster.start()
        else:
            pg_cluster.freeze(False)
    [(reason, lost_at)] = calls.lost
    assert "could not be renewed in time" in reason
    # At most one renewal went out after ``last`` was read, so the deadline is the
    # last successful renewal's sent time + lease, read from the keeper's own record.
    assert lost_at - last.sent_at >= FAST.lease - 0.05
    assert lost_at - last.sent_at <= FAST.lease + FAST.renew + 0.1
    assert calls.exits[0] - lost_at < FAST.margin
    assert not keeper.holds()


def test_stop_releases_the_lease_for_the_next_owner_at_once(
        keep: tuple[LeaseKeeper, Calls, str]) -> None:
    keeper, calls, dsn = keep
    keeper.start()
    calls.wait("granted", lambda: calls.granted)
    keeper.stop(release=True)
    rival = LeaseStore(dsn, FAST, host="host-b", pid=2)
    try:
        taken = rival.acquire("s1")
        assert taken is not None and taken.epoch == calls.granted[0][0] + 1
    finally:
        rival.close()
    assert calls.lost == [] and calls.exits == []


def test_stop_does_not_hang_on_a_frozen_database(pg_cluster: PgCluster,
                                                 keep: tuple[LeaseKeeper, Calls, str]) -> None:
    """An operator's disconnect while the database hangs: the exit goes on after its
    bounded wait; the lease expires by itself."""
    keeper, calls, _ = keep
    keeper.start()
    calls.wait("granted", lambda: calls.granted)
    pg_cluster.freeze()
    try:
        started = time.monotonic()
        keeper.stop(release=True, timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        pg_cluster.freeze(False)
