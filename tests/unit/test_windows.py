"""Unit tests for actors.outbox.windows: all times are explicit, nothing sleeps."""

from __future__ import annotations

import pickle

import pytest

from actors.outbox.windows import SlidingWindow, WindowSpec, admit

MINUTE = WindowSpec("number:minute", limit=10, period=60.0)
HOUR = WindowSpec("number:hour", limit=100, period=3600.0)

T0 = 1_699_999_200.0  # a realistic wall-clock timestamp, a multiple of 3600 s


def fill(window: SlidingWindow, now: float, n: int) -> None:
    for _ in range(n):
        ok, _, _ = admit([window], now)
        assert ok


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="limit"):
        WindowSpec("s", limit=0, period=60.0)
    with pytest.raises(ValueError, match="period"):
        WindowSpec("s", limit=1, period=0.0)
    with pytest.raises(ValueError, match="period"):
        WindowSpec("s", limit=1, period=float("nan"))
    with pytest.raises(ValueError, match="buckets"):
        WindowSpec("s", limit=1, period=60.0, buckets=0)
    assert MINUTE.buckets == 60
    assert MINUTE.width == 1.0


def test_ten_per_minute_at_one_instant() -> None:
    window = SlidingWindow(MINUTE)
    for i in range(10):
        assert admit([window], T0) == (True, 0.0, None), i
    assert window.count(T0) == 10
    ok, retry, scope = admit([window], T0)
    assert not ok
    assert 0 < retry <= 61
    assert scope == "number:minute"
    # Exact: slightly earlier is still refused, exactly then is admitted.
    assert admit([window], T0 + retry - 0.01)[0] is False
    assert admit([window], T0 + retry) == (True, 0.0, None)


def test_retry_after_mid_bucket() -> None:
    window = SlidingWindow(MINUTE)
    now = T0 + 0.3
    fill(window, now, 10)
    retry = window.retry_after(now)
    # The bucket holding the events stops counting at T0 + 61.
    assert retry == pytest.approx(60.7)
    # Query the earlier time first: a query prunes buckets that ended before it.
    assert not window.allows(now + retry - 1e-6)
    assert window.allows(now + retry)


def test_retry_after_drops_only_as_many_buckets_as_needed() -> None:
    window = SlidingWindow(MINUTE)
    fill(window, T0, 3)  # bucket 0
    fill(window, T0 + 10, 3)  # bucket 10
    fill(window, T0 + 20, 4)  # bucket 20
    now = T0 + 30
    # One more event needs just the oldest bucket to drop out, at T0 + 61.
    assert window.retry_after(now) == pytest.approx(31.0)
    assert window.count(T0 + 61) == 7
    assert window.allows(T0 + 61)


def test_retry_after_is_zero_when_allowed() -> None:
    window = SlidingWindow(MINUTE)
    assert window.retry_after(T0) == 0.0
    fill(window, T0, 9)
    assert window.retry_after(T0) == 0.0


def test_never_more_than_limit_in_any_period() -> None:
    # Greedily admit at 0.1 s steps for ten minutes and check every 60 s interval.
    window = SlidingWindow(MINUTE)
    admitted: list[float] = []
    for step in range(6000):
        now = T0 + 0.5 + step * 0.1
        if admit([window], now)[0]:
            admitted.append(now)
    assert len(admitted) >= 90  # it does let traffic through
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t - start < MINUTE.period]
        assert len(in_window) <= MINUTE.limit


def test_events_expire() -> None:
    window = SlidingWindow(MINUTE)
    fill(window, T0, 10)
    assert window.count(T0 + 60.5) == 10  # still within period + one bucket
    assert window.count(T0 + 61) == 0
    assert window.to_state()["buckets"] == []


def test_refused_request_consumes_nothing() -> None:
    minute, hour = SlidingWindow(MINUTE), SlidingWindow(HOUR)
    fill_both = [minute, hour]
    for _ in range(10):
        assert admit(fill_both, T0)[0]
    before = (minute.to_state(), hour.to_state())
    for _ in range(5):
        assert admit(fill_both, T0)[0] is False
    assert (minute.to_state(), hour.to_state()) == before
    assert minute.count(T0) == 10
    assert hour.count(T0) == 10  # the hour window did not count the refusals either


def test_hour_window_refuses() -> None:
    minute, hour = SlidingWindow(MINUTE), SlidingWindow(HOUR)
    now = T0
    for _ in range(10):  # 10 per minute for 10 minutes = 100 in the hour
        for _ in range(10):
            assert admit([minute, hour], now)[0]
        now += 61
    assert minute.allows(now)
    ok, retry, scope = admit([minute, hour], now)
    assert not ok
    assert scope == "number:hour"
    # The first minute's bucket (width 60 s) drops out at T0 + 3660.
    assert retry == pytest.approx(T0 + 3660 - now)
    assert minute.count(now) == 0  # the minute window recorded nothing
    assert admit([minute, hour], T0 + 3660)[0]


def test_admit_reports_the_longest_wait() -> None:
    minute, hour = SlidingWindow(MINUTE), SlidingWindow(WindowSpec("h", limit=10, period=3600.0))
    fill(minute, T0, 10)
    fill(hour, T0, 10)
    ok, retry, scope = admit([minute, hour], T0)
    assert not ok
    assert scope == "h"
    assert retry == pytest.approx(3660.0)
    assert retry == max(minute.retry_after(T0), hour.retry_after(T0))


def test_admit_with_no_windows() -> None:
    assert admit([], T0) == (True, 0.0, None)


def test_state_round_trip_preserves_decisions() -> None:
    window = SlidingWindow(MINUTE)
    fill(window, T0 + 5, 4)
    fill(window, T0 + 30.5, 6)
    state = window.to_state()
    restored = SlidingWindow.from_state(MINUTE, pickle.loads(pickle.dumps(state)))
    assert restored.to_state() == state
    for now in (T0 + 31, T0 + 65.9, T0 + 66, T0 + 91.4, T0 + 91.5, T0 + 200):
        assert restored.count(now) == window.count(now)
        assert restored.retry_after(now) == window.retry_after(now)
    # And the restored window still refuses where the original would.
    fresh = SlidingWindow.from_state(MINUTE, state)
    assert admit([fresh], T0 + 31)[0] is False
    assert admit([fresh], T0 + 66)[0] is True


def test_state_is_plain_data() -> None:
    window = SlidingWindow(MINUTE)
    fill(window, T0, 3)
    state = window.to_state()
    assert state == {"width": 1.0, "buckets": [[int(T0), 3]]}


def test_state_prunes_old_buckets() -> None:
    window = SlidingWindow(MINUTE)
    window.record(T0, 1)
    window.record(T0 + 200, 2)
    assert window.to_state()["buckets"] == [[int(T0) + 200, 2]]
    stale = {"width": 1.0, "buckets": [[int(T0), 5], [int(T0) + 100, 1]]}
    restored = SlidingWindow.from_state(MINUTE, stale)
    assert restored.count(T0 + 100) == 1
    assert restored.to_state()["buckets"] == [[int(T0) + 100, 1]]


def test_from_state_bounds_oversized_state_without_losing_events() -> None:
    big = {"width": 1.0, "buckets": [[int(T0) + k, 1] for k in range(0, 1000, 5)]}
    restored = SlidingWindow.from_state(MINUTE, big)
    assert len(restored.to_state()["buckets"]) == MINUTE.buckets + 1
    assert restored.count(T0) == 200  # 200 events, none lost, as seen from the past


def test_from_state_with_changed_width_stays_conservative() -> None:
    old = SlidingWindow(MINUTE)
    fill(old, T0 + 59.5, 10)  # last bucket of the minute
    new_spec = WindowSpec("number:minute", limit=10, period=60.0, buckets=6)  # 10 s buckets
    restored = SlidingWindow.from_state(new_spec, old.to_state())
    assert restored.count(T0 + 60) == 10
    # Under the old model the events stop counting at T0 + 120; never earlier now.
    assert restored.retry_after(T0 + 60) >= old.retry_after(T0 + 60)


def test_from_state_ignores_non_positive_counts() -> None:
    state = {"width": 1.0, "buckets": [[int(T0), 0], [int(T0) + 1, -3]]}
    assert SlidingWindow.from_state(MINUTE, state).count(T0 + 1) == 0


def test_huge_limit_keeps_state_small() -> None:
    spec = WindowSpec("global:day", limit=10_000_000, period=86_400.0)
    window = SlidingWindow(spec)
    now = T0
    for _ in range(500):  # one burst every 10 minutes for over three days
        window.record(now, 1000)
        now += 600
    state = window.to_state()
    assert len(state["buckets"]) <= spec.buckets + 1
    assert len(pickle.dumps(state)) < 4096
    assert window.count(now) <= 1000 * (86_400 / 600 + 1440 / 600 + 1)


def test_record_many_and_negative() -> None:
    window = SlidingWindow(MINUTE)
    window.record(T0, 0)
    assert window.count(T0) == 0
    window.record(T0, 12)  # recording is unconditional, even beyond the limit
    assert window.count(T0) == 12
    assert window.retry_after(T0) == pytest.approx(61.0)
    with pytest.raises(ValueError):
        window.record(T0, -1)


def test_usage_ratio() -> None:
    window = SlidingWindow(MINUTE)
    assert window.usage_ratio(T0) == 0.0
    fill(window, T0, 4)
    assert window.usage_ratio(T0) == pytest.approx(0.4)
    fill(window, T0, 6)
    assert window.usage_ratio(T0) == pytest.approx(1.0)
    assert window.usage_ratio(T0 + 61) == 0.0


def test_clock_going_backwards_still_counts_future_events() -> None:
    window = SlidingWindow(MINUTE)
    fill(window, T0 + 100, 10)
    assert window.count(T0) == 10
    assert admit([window], T0)[0] is False
    assert window.retry_after(T0) == pytest.approx(161.0)


@pytest.mark.parametrize("period", [0.7, 6.0, 86_400.0, 3.3])
def test_retry_after_is_exact_despite_float_rounding(period: float) -> None:
    spec = WindowSpec("s", limit=1, period=period, buckets=7)
    window = SlidingWindow(spec)
    for k in range(50):
        now = T0 + k * period * 0.37
        retry = window.retry_after(now)
        if retry == 0.0:
            assert admit([window], now)[0]
            continue
        assert retry > 0
        assert not window.allows(now)
        assert window.allows(now + retry)


def test_clock_jumping_back_and_forth_keeps_state_bounded_and_counts_everything() -> None:
    window = SlidingWindow(MINUTE)
    for k in range(100):  # a clock that keeps going backwards, one second per event
        window.record(T0 + 1000 - k)
    window.record(T0)
    # Nothing is older than the counted span at T0, yet the state stays bounded.
    assert len(window.to_state()["buckets"]) <= MINUTE.buckets + 1
    assert window.count(T0) == 101
