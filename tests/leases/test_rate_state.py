"""The rate windows' state, on a real diskcache and a real PostgreSQL (issue 22, item 3).

In multi-host mode the outbox runs on the active leader and keeps its per-recipient,
global and warm-up windows in PostgreSQL, so a standby leader that takes over continues
them: no burst after a failover, no window forgotten. The same persistence tests run
against both implementations (``backend``); the failover, clock and failure tests are
PostgreSQL's own. "A second ``Limits`` on the same state" is what a restart (one host)
or a new leader (several) does.

The times are a test clock that follows the real one plus what the test skips ahead:
the PostgreSQL state measures the database's clock against the caller's once, so every
limiter of a test reads one clock, and a test skips ahead only once each limiter made
its first call (a skip is a step of that clock, which the database's does not see).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from actors.leases.rate_state import QUESTION_SECONDS, PgRateState
from actors.outbox.limits import Limits
from actors.outbox.pacing import DAY_SECONDS, PacingRules
from actors.outbox.rate_state import (
    DiskRateState,
    RateState,
    RateStateConflict,
    RateStateUnavailable,
)
from actors.outbox.warmup import LINKED_RECHECK_SECONDS, Warmup
from gateway.core.config import LimitsConfig
from tests.pg import PgCluster, free_port

PHONE = "14155552671"
MINUTE_TWO = LimitsConfig(per_number_per_minute=2, per_number_per_hour=100,
                          global_per_day=1000)


class TestClock:
    """Real time plus the seconds a test skipped ahead (``skew``: a host whose clock is
    off by that much)."""

    __test__ = False

    def __init__(self, skew: float = 0.0) -> None:
        self.skipped = skew

    def __call__(self) -> float:
        return time.time() + self.skipped

    def wait(self, seconds: float) -> None:
        self.skipped += seconds


Opener = Callable[[], RateState]


@pytest.fixture(params=["disk", "pg"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a new state on one storage each time it is called, as a restarted outbox
    or a new leader does; closes them all at the end."""
    opened: list[RateState] = []
    if request.param == "disk":
        def make() -> RateState:
            return DiskRateState.open(tmp_path / "limits")
    else:
        dsn = request.getfixturevalue("pg_dsn")

        def make() -> RateState:
            return PgRateState(dsn)

    def opener() -> RateState:
        state = make()
        opened.append(state)
        return state

    try:
        yield opener
    finally:
        for state in opened:
            state.close()


@pytest.fixture
def pg_state(pg_dsn: str) -> Iterator[Callable[[], PgRateState]]:
    opened: list[PgRateState] = []

    def opener() -> PgRateState:
        opened.append(PgRateState(pg_dsn))
        return opened[-1]

    try:
        yield opener
    finally:
        for state in opened:
            state.close()


# ---------------------------------------------------------------- both implementations


def test_values_expire_and_a_write_is_all_or_nothing(backend: Opener) -> None:
    state = backend()
    state.write([("a", {"buckets": [[1, 2]]}, None, 0), ("b", 1.5, 0.05, 0)])
    assert state.get("a")[0] == {"buckets": [[1, 2]]} and state.get("b")[0] == 1.5
    state.write([("c", [1], None, None)], deletes=["a"])
    assert state.get("a") == (None, 0) and state.get("c")[0] == [1]
    deadline = time.monotonic() + 10
    while state.get("b")[0] is not None:  # an expired key reads as absent at once
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.02)
    assert state.expire() == 1  # and is removed at the prune tick
    assert state.expire() == 0
    assert backend().get("c")[0] == [1]  # another instance (a restart, a new leader) sees it


def test_limits_survive_a_new_instance(backend: Opener) -> None:
    clock = TestClock()
    first = Limits(backend(), MINUTE_TWO)
    assert first.check(PHONE, clock())[0]
    assert first.check(PHONE, clock())[0]
    first.close()
    second = Limits(backend(), MINUTE_TWO)
    allowed, retry_after, scope = second.check(PHONE, clock())
    assert not allowed and scope == "recipient_minute" and 0 < retry_after <= 61
    assert second.check("14155550000", clock())[0]  # another recipient is unaffected
    assert second.usage(clock())["global_day_used"] == 3.0


def test_a_rejected_send_uses_no_quota(backend: Opener) -> None:
    clock = TestClock()
    limits = Limits(backend(), LimitsConfig(1, 100, 2))
    assert limits.check(PHONE, clock())[0]
    for _ in range(5):
        assert not limits.check(PHONE, clock())[0]
    assert Limits(backend(), LimitsConfig(1, 100, 2)).usage(clock())["global_day_used"] == 1.0
    assert limits.check("14155550000", clock())[0]
    allowed, _, scope = limits.check("14155551111", clock())
    assert not allowed and scope == "global_day"


def test_the_warmup_survives_a_new_instance(backend: Opener) -> None:
    clock = TestClock()
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=2)
    assert Warmup(backend(), rules).observe("s", "QR_PENDING", False, True, clock())
    first = Warmup(backend(), rules)
    for _ in range(2):
        assert first.allows("s", clock())[0]
        first.record("s", clock())
    again = Warmup(backend(), rules)
    allowed, wait = again.allows("s", clock())
    assert not allowed and DAY_SECONDS - 60 < wait <= DAY_SECONDS + DAY_SECONDS / 60
    assert again.allows("other", clock()) == (True, 0.0)
    # A new link starts a new warm-up with an empty window, for every instance after it.
    assert again.observe("s", "QR_PENDING", False, True, clock())
    assert Warmup(backend(), rules).allows("s", clock())[0]


def test_a_new_leader_refuses_and_delays_exactly_as_the_old_one(backend: Opener) -> None:
    """Fill the windows through one limiter; a second one on the same state (the new
    leader after a failover, while the old one may still have it open) gives the same
    answers: the same scopes, the same waits, and admits when the wait is over."""
    clock = TestClock()
    config = LimitsConfig(per_number_per_minute=2, per_number_per_hour=100, global_per_day=5)
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=1)
    old = Limits(backend(), config)
    old_warmup = Warmup(old.state, rules)
    assert old_warmup.observe("linked", "QR_PENDING", False, True, clock())
    old_warmup.record("linked", clock())
    for phone in (PHONE, PHONE, "14155550001", "14155550002"):
        assert old.check(phone, clock())[0]
    new = Limits(backend(), config)
    new_warmup = Warmup(new.state, rules)
    now = clock()
    old_answer, new_answer = old.check(PHONE, now), new.check(PHONE, now)
    assert not old_answer[0] and not new_answer[0]
    assert new_answer[2] == old_answer[2] == "recipient_minute"
    assert new_answer[1] == pytest.approx(old_answer[1], abs=0.5)  # both clocks, one frame
    assert new_warmup.allows("linked", now)[0] is False
    assert new_warmup.allows("linked", now)[1] == pytest.approx(
        old_warmup.allows("linked", now)[1], abs=0.5)
    assert new.check("14155550003", now)[0]  # the fifth of the day
    allowed, _, scope = new.check("14155550004", now)
    assert not allowed and scope == "global_day"  # the day's total came over too
    clock.wait(new_answer[1] + 0.5)
    allowed, _, scope = new.check(PHONE, clock())
    assert not allowed and scope == "global_day"  # the minute is over; the day is not


# ------------------------------------------------------------------- PostgreSQL only


def test_a_write_over_a_version_that_is_not_current_keeps_nothing(
        pg_state: Callable[[], PgRateState]) -> None:
    state, other = pg_state(), pg_state()
    versions = state.write([("a", 1, None, 0), ("b", 1, 60.0, 0)])
    assert versions == {"a": 1, "b": 1} and state.get("a") == (1, 1)
    assert other.write([("a", 2, None, 1)]) == {"a": 2}  # another outbox wrote a
    with pytest.raises(RateStateConflict):  # written over version 1: refused, b too
        state.write([("a", 3, None, 1), ("b", 3, 60.0, 1)])
    assert state.get("a") == (2, 2) and state.get("b") == (1, 1)
    with pytest.raises(RateStateConflict):  # "absent" (0) while it is there
        state.write([("b", 4, 60.0, 0)])
    assert state.write([("b", 4, 60.0, None)]) == {"b": 2}  # a blind write


def test_two_outboxes_with_stale_windows_never_admit_more_than_the_limit(
        pg_state: Callable[[], PgRateState]) -> None:
    """Every leader runs an outbox, the standby too, and an old leader that stepped
    down keeps its own: each keeps the windows it read in memory. A send admitted by
    stale windows is written only over the version read; another outbox's write in
    between makes it read again and decide again."""
    clock = TestClock()
    config = LimitsConfig(per_number_per_minute=3, per_number_per_hour=100, global_per_day=5)
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=3)
    first, second = Limits(pg_state(), config), Limits(pg_state(), config)
    warm_first, warm_second = Warmup(first.state, rules), Warmup(second.state, rules)
    assert warm_first.observe("s", "QR_PENDING", False, True, clock())
    assert second.usage(clock())["global_day_used"] == 0.0  # both have read the windows
    assert first.check(PHONE, clock())[0] and second.check(PHONE, clock())[0]
    admitted = {"phone": 0, "day": 0, "warm": 0}
    for n in range(6):  # alternating: each one's memory is behind the other's writes
        limits, warmup = (first, warm_first) if n % 2 else (second, warm_second)
        admitted["phone"] += limits.check(PHONE, clock())[0]
        admitted["day"] += limits.check(f"1415555000{n}", clock())[0]
        if warmup.allows("s", clock())[0]:
            warmup.record("s", clock())
            admitted["warm"] += 1
    assert admitted == {"phone": 1, "day": 2, "warm": 3}
    assert first.usage(clock())["global_day_used"] == 5.0  # read afresh, not from memory
    assert second.usage(clock())["global_day_used"] == 5.0


def test_a_link_another_leader_saw_applies_here_after_the_recheck(
        pg_state: Callable[[], PgRateState]) -> None:
    """A leader's outbox trusts a linking time it read (a send of a session not in
    warm-up costs no round trip) for ``LINKED_RECHECK_SECONDS``, then reads it again:
    a link another leader's outbox saw meanwhile caps its sends from then on."""
    clock = TestClock()
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=1)
    here, there = Warmup(pg_state(), rules), Warmup(pg_state(), rules)
    assert here.allows("s", clock()) == (True, 0.0)  # not linked, as far as it knows
    assert there.observe("s", "QR_PENDING", False, True, clock())
    assert there.allows("s", clock())[0]
    there.record("s", clock())
    assert not there.allows("s", clock())[0]
    clock.wait(LINKED_RECHECK_SECONDS + 1)
    allowed, wait = here.allows("s", clock())
    assert not allowed and wait > DAY_SECONDS - 60


def test_a_link_seen_while_the_table_is_away_is_written_before_any_send_passes(
        pg_state: Callable[[], PgRateState], pg_dsn: str) -> None:
    clock = TestClock()
    rules = PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=1)
    warmup = Warmup(pg_state(), rules)
    assert warmup.allows("s", clock()) == (True, 0.0)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("ALTER TABLE wagate_rate_state RENAME TO away")
        try:
            with pytest.raises(RateStateUnavailable):
                warmup.observe("s", "QR_PENDING", False, True, clock())
            with pytest.raises(RateStateUnavailable):  # no send of any session passes
                warmup.allows("other", clock())
        finally:
            admin.execute("ALTER TABLE away RENAME TO wagate_rate_state")
    assert warmup.allows("s", clock())[0]  # written now: the warm-up runs, cap 1
    warmup.record("s", clock())
    assert not warmup.allows("s", clock())[0]
    assert Warmup(pg_state(), rules).linked_at("s") is not None  # for every leader


def test_a_standby_whose_clock_is_off_sees_the_windows_as_they_were_left(
        pg_state: Callable[[], PgRateState]) -> None:
    """The windows' times are on the database's clock: a leader whose host clock is 45 s
    ahead of the old leader's does not see the minute window as 45 s older (which would
    let the next burst through 45 s early), nor one 45 s behind as younger."""
    old_clock = TestClock()
    old = Limits(pg_state(), MINUTE_TWO)
    assert old.check(PHONE, old_clock())[0] and old.check(PHONE, old_clock())[0]
    refused = old.check(PHONE, old_clock())
    assert not refused[0] and refused[1] > 50
    for skew in (45.0, -45.0):
        skewed_clock = TestClock(skew)
        new = Limits(pg_state(), MINUTE_TWO)
        allowed, retry_after, scope = new.check(PHONE, skewed_clock())
        assert not allowed and scope == "recipient_minute"
        assert retry_after == pytest.approx(old.check(PHONE, old_clock())[1], abs=0.5)


def test_a_broken_connection_is_a_refusal_that_costs_no_quota(
        pg_state: Callable[[], PgRateState], pg_dsn: str) -> None:
    clock = TestClock()
    limits = Limits(pg_state(), MINUTE_TWO)
    assert limits.check(PHONE, clock())[0]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:  # the server ends its session
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(RateStateUnavailable):
        limits.check(PHONE, clock())
    # The next call connects again: the refused send was not counted, one more fits.
    assert limits.check(PHONE, clock())[0]
    allowed, _, scope = limits.check(PHONE, clock())
    assert not allowed and scope == "recipient_minute"
    assert Limits(pg_state(), MINUTE_TWO).usage(clock())["global_day_used"] == 2.0


def test_no_database_refuses_without_failing_the_start() -> None:
    """A leader whose database is unreachable at its start opens its limits anyway
    (the outbox starts); each send is refused until the database answers."""
    state = PgRateState(f"host=127.0.0.1 port={free_port()} user=nobody dbname=none "
                        "connect_timeout=1")
    try:
        limits = Limits(state, MINUTE_TWO)
        warmup = Warmup(state, PacingRules(warmup_seconds=DAY_SECONDS, warmup_daily_cap=1))
        with pytest.raises(RateStateUnavailable):
            limits.check(PHONE, time.time())
        with pytest.raises(RateStateUnavailable):
            warmup.allows("s", time.time())
        assert limits.usage(time.time()) == {} and limits.usage_ratios(time.time()) == {}
        with pytest.raises(RateStateUnavailable):
            limits.expire()
    finally:
        state.close()


def test_a_frozen_database_is_a_refusal_not_a_hang(
        pg_cluster: PgCluster, pg_state: Callable[[], PgRateState]) -> None:
    """A server that accepts packets and answers nothing (SIGSTOP): the outbox's thread
    waits at most ``QUESTION_SECONDS`` per call, then refuses; once the server runs
    again, sends pass and the refused ones were not counted."""
    clock = TestClock()
    limits = Limits(pg_state(), MINUTE_TWO)
    assert limits.check(PHONE, clock())[0]
    pg_cluster.freeze()
    try:
        for _ in range(2):  # the first waits its bound; the second hears at once
            with pytest.raises(RateStateUnavailable):
                limits.check(PHONE, clock())
    finally:
        pg_cluster.freeze(False)
    deadline = time.monotonic() + 10 * QUESTION_SECONDS + 10
    reader = Limits(pg_state(), MINUTE_TWO)
    while not (usage := reader.usage(clock())):  # the hung question is still finishing
        assert time.monotonic() < deadline, "the state never answered again"
        time.sleep(0.05)
    # The frozen write's outcome is unknown (it may have committed when the server ran
    # again): counted once or not at all, and the limiter goes by what was committed.
    used = usage["global_day_used"]
    assert used in (1.0, 2.0)
    assert limits.check(PHONE, clock())[0] is (used == 1.0)
    assert not limits.check(PHONE, clock())[0]
