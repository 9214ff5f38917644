"""Unit tests for actors.supervisor.policy: all times are explicit, nothing sleeps."""

from __future__ import annotations

import pytest

from actors.supervisor.policy import (
    ReconnectPolicy,
    RestartBudget,
    backoff_delay,
    rate_overlimit_pause,
)
from gateway.core.config import ReconnectConfig

DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 1.0), (2, 2.0), (3, 5.0), (4, 10.0), (5, 30.0), (6, 30.0), (1000, 30.0)],
)
def test_backoff_delay_follows_schedule_then_repeats_last(failures: int, expected: float) -> None:
    assert backoff_delay(failures, DELAYS) == expected


def test_backoff_delay_single_entry_and_list() -> None:
    assert backoff_delay(1, [7.5]) == 7.5
    assert backoff_delay(9, [7.5]) == 7.5
    assert backoff_delay(2, [0.0, 3.0]) == 3.0


def test_backoff_delay_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="failures"):
        backoff_delay(0, DELAYS)
    with pytest.raises(ValueError, match="empty"):
        backoff_delay(1, ())


def test_restart_budget_allows_limit_crashes_then_refuses() -> None:
    budget = RestartBudget(limit=5, window=300.0)
    results = [budget.record(1000.0 + i) for i in range(5)]
    assert results == [True] * 5
    assert budget.crashes(1004.0) == 5
    assert budget.record(1005.0) is False
    assert budget.record(1006.0) is False
    assert budget.crashes(1006.0) == 7


def test_restart_budget_old_crashes_age_out() -> None:
    budget = RestartBudget(limit=2, window=60.0)
    assert budget.record(0.0)
    assert budget.record(10.0)
    assert budget.crashes(59.9) == 2
    assert budget.crashes(60.0) == 1  # a crash exactly `window` old no longer counts
    assert budget.record(60.0)  # crashes at 10 and 60 -> 2 <= limit
    assert budget.record(65.0) is False  # 10, 60, 65
    assert budget.crashes(200.0) == 0
    assert budget.record(200.0)


def test_restart_budget_rare_crashes_never_exhaust() -> None:
    budget = RestartBudget(limit=1, window=100.0)
    assert all(budget.record(t * 150.0) for t in range(20))


def test_restart_budget_reset() -> None:
    budget = RestartBudget(limit=1, window=100.0)
    assert budget.record(0.0)
    assert budget.record(1.0) is False
    budget.reset()
    assert budget.crashes(1.0) == 0
    assert budget.record(2.0)
    assert "limit=1" in repr(budget)


def test_restart_budget_pardon_takes_back_one_crash() -> None:
    budget = RestartBudget(limit=2, window=60.0)
    assert budget.record(10.0) and budget.record(11.0)
    assert budget.pardon(10.0)
    assert not budget.pardon(10.0)  # once
    assert not budget.pardon(99.0)  # never recorded
    assert budget.crashes(12.0) == 1
    assert budget.record(12.0)  # the pardoned one left room
    assert not budget.record(13.0)


def test_restart_budget_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="limit"):
        RestartBudget(limit=0, window=10.0)
    with pytest.raises(ValueError, match="window"):
        RestartBudget(limit=1, window=0.0)


def test_reconnect_policy_schedule() -> None:
    policy = ReconnectPolicy(attempts=5, delay=30.0)
    assert [policy.next_delay(a) for a in range(1, 8)] == [
        0.0, 30.0, 30.0, 30.0, 30.0, None, None,
    ]


def test_the_default_schedule_retries_a_short_outage_within_seconds() -> None:
    """With the shipped defaults an 8 s outage ends at the third attempt, 15 s after the
    drop (with a steady 30 s pace it held a queued one-time code 30 s), and the session
    still gives up about a minute after a long outage began, not hammering meanwhile."""
    defaults = ReconnectConfig()
    policy = ReconnectPolicy(defaults.attempts, defaults.delay_seconds,
                             defaults.first_delay_seconds)
    waits = [policy.next_delay(a) for a in range(1, 7)]
    assert waits == [0.0, 5.0, 10.0, 20.0, 30.0, None]
    starts = [sum(waits[:i + 1]) for i in range(5)]  # type: ignore[arg-type]
    assert starts == [0.0, 5.0, 15.0, 35.0, 65.0]
    assert next(s for s in starts if s >= 8.0) == 15.0


def test_the_first_delay_doubles_up_to_the_delay_and_never_overflows() -> None:
    policy = ReconnectPolicy(attempts=1_000_000_000, delay=30.0, first_delay=0.5)
    assert [policy.next_delay(a) for a in range(2, 9)] == [0.5, 1, 2, 4, 8, 16, 30]
    assert policy.next_delay(1_000_000_000) == 30.0
    assert ReconnectPolicy(5, 30.0, 86400.0).next_delay(2) == 30.0  # at most the delay
    assert ReconnectPolicy(5, 0.3, 5.0).next_delay(3) == 0.3  # tests' short delays stay
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="first_delay"):
            ReconnectPolicy(5, 30.0, bad)


def test_reconnect_policy_single_attempt() -> None:
    policy = ReconnectPolicy(attempts=1, delay=30.0)
    assert policy.next_delay(1) == 0.0
    assert policy.next_delay(2) is None


def test_reconnect_policy_validation() -> None:
    with pytest.raises(ValueError, match="attempts"):
        ReconnectPolicy(attempts=0, delay=1.0)
    with pytest.raises(ValueError, match="delay"):
        ReconnectPolicy(attempts=1, delay=-1.0)
    with pytest.raises(ValueError, match="attempt"):
        ReconnectPolicy(attempts=3, delay=1.0).next_delay(0)


def test_reconnect_policy_is_frozen() -> None:
    policy = ReconnectPolicy(attempts=2, delay=1.0)
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]


def test_retry_delay_doubles_up_to_the_cap_with_equal_jitter() -> None:
    from actors.supervisor.policy import retry_delay

    assert [retry_delay(n, 2.0, 300.0, 0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert [retry_delay(n, 2.0, 300.0, 0.999999) for n in (1, 2)] == pytest.approx([2.0, 4.0])
    assert retry_delay(20, 2.0, 300.0, 0.5) == 225.0  # capped at 300: 150 + 75


def test_retry_delay_rejects_attempt_zero() -> None:
    from actors.supervisor.policy import retry_delay

    with pytest.raises(ValueError):
        retry_delay(0, 2.0, 300.0, 0.5)


def test_a_rate_overlimit_pause_doubles_per_strike_up_to_its_cap() -> None:
    assert [rate_overlimit_pause(n, 60.0, 900.0) for n in (1, 2, 3, 4, 5, 6)] == [
        60.0, 120.0, 240.0, 480.0, 900.0, 900.0]
    assert rate_overlimit_pause(10**9, 60.0, 900.0) == 900.0  # no overflow
    assert rate_overlimit_pause(3, 60.0, 10.0) == 60.0  # a cap below the pause is the pause
    with pytest.raises(ValueError):
        rate_overlimit_pause(0, 60.0, 900.0)
