"""The leader's rule for starting a session process (actors.leases.gate): only once
its lease is free by the database's clock plus the margin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from actors.leases.gate import MIN_RECHECK_SECONDS, next_check, unreachable, verdict

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    owner_host: str = "beta"
    owner_pid: int = 4242
    expires_at: datetime = NOW
    released: bool = False
    db_now: datetime = NOW


def test_a_session_that_never_had_a_lease_starts() -> None:
    assert verdict(None, margin=2.0, recheck_cap=3.0).start


def test_a_released_lease_is_free_at_once_even_before_its_expiry() -> None:
    assert verdict(Row(expires_at=NOW + timedelta(seconds=9), released=True), 2.0, 3.0).start


def test_a_held_lease_waits_and_names_its_holder() -> None:
    said = verdict(Row(expires_at=NOW + timedelta(seconds=1)), margin=2.0, recheck_cap=10.0)
    assert not said.start
    assert said.wait_seconds == 3.0  # expiry plus the margin
    assert "beta" in said.reason and "4242" in said.reason and "margin" in said.reason


def test_an_expired_lease_still_waits_out_the_margin() -> None:
    said = verdict(Row(expires_at=NOW - timedelta(seconds=1.5)), margin=2.0, recheck_cap=10.0)
    assert not said.start and abs(said.wait_seconds - 0.5) < 1e-9


def test_the_lease_is_free_exactly_at_expiry_plus_margin_by_the_database_clock() -> None:
    assert verdict(Row(expires_at=NOW - timedelta(seconds=2)), 2.0, 3.0).start
    # The database's clock decides, whatever the dates look like to this host.
    late = Row(expires_at=NOW + timedelta(days=1), db_now=NOW + timedelta(days=1, seconds=2))
    assert verdict(late, 2.0, 3.0).start


def test_the_wait_is_capped_and_floored() -> None:
    assert verdict(Row(expires_at=NOW + timedelta(seconds=60)), 2.0, 3.0).wait_seconds == 3.0
    tiny = Row(expires_at=NOW - timedelta(seconds=1.999))
    assert verdict(tiny, 2.0, 3.0).wait_seconds == MIN_RECHECK_SECONDS


def test_an_unreachable_database_starts_nothing() -> None:
    said = unreachable("connection refused", retry=3.0)
    assert not said.start and said.wait_seconds == 3.0 and "does not answer" in said.reason


def test_next_check_is_the_soonest_wait() -> None:
    held = verdict(Row(expires_at=NOW + timedelta(seconds=5)), 2.0, 10.0)
    soon = verdict(Row(expires_at=NOW), 1.0, 10.0)
    assert next_check([held, soon, verdict(None, 1.0, 1.0)]) == 1.0
    assert next_check([verdict(None, 1.0, 1.0)]) is None


def test_a_standby_leader_starts_nothing_and_says_so() -> None:
    from actors.leases.gate import standby

    said = standby(retry=3.0)
    assert not said.start and said.code == "LEADER_STANDBY" and "lock" in said.reason
    assert verdict(Row(expires_at=NOW + timedelta(seconds=1)), 2.0, 3.0).code == "LEASE_HELD"
