"""The number-lookup rules on a real SQLite file: cache TTLs, the per-session budget,
one lookup per number in flight, unknown never taken for "no"; and the real engine's
answers and errors mapped (with neonize's own protobuf types, no network)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from actors.outbox.numbers import (
    Budget,
    LookupBudgetExceeded,
    LookupFailed,
    NumberCache,
    NumberCheck,
    check_numbers,
)
from actors.transport.base import NumberInfo

YES, NO = "4915112345001", "4915112345002"
PLENTY = Budget(per_minute=1000, per_day=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Engine:
    """A lookup that records its batches; ``YES`` has an account, nothing else."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, phones: list[str]) -> list[NumberInfo]:
        self.batches.append(list(phones))
        return [NumberInfo(p, p == YES, f"{p}@s.whatsapp.net" if p == YES else "")
                for p in phones]


@pytest.fixture
def cache(tmp_path: Path) -> NumberCache:
    numbers = NumberCache(tmp_path / "numbers.sqlite", positive_ttl=100.0, negative_ttl=10.0)
    yield numbers
    numbers.close()


def test_misses_are_looked_up_in_one_batch_and_then_answered_from_the_cache(
        cache: NumberCache) -> None:
    engine, clock = Engine(), Clock()
    first = check_numbers(cache, "s", [YES, NO, YES], engine, PLENTY, 1.0,
                          strict_budget=True, clock=clock)
    assert [(c.phone, c.on_whatsapp, c.cached) for c in first] == [
        (YES, True, False), (NO, False, False), (YES, True, False)]
    assert engine.batches == [[YES, NO]]
    again = check_numbers(cache, "s", [NO, YES], engine, PLENTY, 1.0, strict_budget=True,
                          clock=clock)
    assert [(c.on_whatsapp, c.cached) for c in again] == [(False, True), (True, True)]
    assert engine.batches == [[YES, NO]]


def test_a_negative_answer_expires_before_a_positive_one(cache: NumberCache) -> None:
    engine, clock = Engine(), Clock()
    check_numbers(cache, "s", [YES, NO], engine, PLENTY, 1.0, strict_budget=True, clock=clock)
    clock.now += 11.0
    check_numbers(cache, "s", [YES, NO], engine, PLENTY, 1.0, strict_budget=True, clock=clock)
    assert engine.batches == [[YES, NO], [NO]]


def test_the_cache_is_shared_by_sessions_and_survives_reopening(tmp_path: Path) -> None:
    engine, clock = Engine(), Clock()
    first = NumberCache(tmp_path / "n.sqlite", 100.0, 10.0)
    check_numbers(first, "a", [YES], engine, PLENTY, 1.0, strict_budget=True, clock=clock)
    first.close()
    second = NumberCache(tmp_path / "n.sqlite", 100.0, 10.0)
    try:
        answer = check_numbers(second, "b", [YES], engine, PLENTY, 1.0, strict_budget=True,
                               clock=clock)
    finally:
        second.close()
    assert answer[0].cached and engine.batches == [[YES]]


def test_a_failed_lookup_is_unknown_never_no_and_is_not_cached(cache: NumberCache) -> None:
    def down(phones: list[str]) -> list[NumberInfo]:
        raise LookupFailed("TIMEOUT", "no answer")

    answer = check_numbers(cache, "s", [NO], down, PLENTY, 1.0, strict_budget=False)
    assert answer[0].on_whatsapp is None and answer[0].reason == "TIMEOUT"
    assert cache.get([NO], 0.0) == {}


def test_the_budget_counts_numbers_per_session_and_minute_and_day(cache: NumberCache) -> None:
    engine, clock = Engine(), Clock()
    budget = Budget(per_minute=2, per_day=3)
    check_numbers(cache, "a", ["4915112340001", "4915112340002"], engine, budget, 1.0,
                  strict_budget=True, clock=clock)
    with pytest.raises(LookupBudgetExceeded) as minute:
        check_numbers(cache, "a", ["4915112340003"], engine, budget, 1.0, strict_budget=True,
                      clock=clock)
    assert minute.value.scope == "minute" and minute.value.left == 0
    assert minute.value.retry_after == 60.0
    # Another session has its own budget; a send's check is unknown, not refused.
    assert check_numbers(cache, "b", ["4915112340003"], engine, budget, 1.0,
                         strict_budget=True, clock=clock)[0].on_whatsapp is False
    lenient = check_numbers(cache, "a", ["4915112340004"], engine, budget, 1.0,
                            strict_budget=False, clock=clock)
    assert lenient[0].on_whatsapp is None and lenient[0].reason == "RATE_LIMITED"
    clock.now += 61.0
    check_numbers(cache, "a", ["4915112340005"], engine, budget, 1.0, strict_budget=True,
                  clock=clock)
    clock.now += 61.0
    with pytest.raises(LookupBudgetExceeded) as day:
        check_numbers(cache, "a", ["4915112340006"], engine, budget, 1.0,
                      strict_budget=True, clock=clock)
    assert day.value.scope == "day"
    clock.now += 86400.0
    check_numbers(cache, "a", ["4915112340006"], engine, budget, 1.0, strict_budget=True,
                  clock=clock)


def test_a_number_being_looked_up_is_waited_for_not_looked_up_twice(
        cache: NumberCache) -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def slow(phones: list[str]) -> list[NumberInfo]:
        batches.append(list(phones))
        started.set()
        assert release.wait(30)
        return [NumberInfo(p, True) for p in phones]

    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(
        check_numbers(cache, "a", [YES], slow, PLENTY, 30.0, strict_budget=True)))
    first.start()
    try:
        assert started.wait(30)
        second = threading.Thread(target=lambda: results.append(
            check_numbers(cache, "b", [YES], slow, PLENTY, 30.0, strict_budget=True)))
        second.start()
        release.set()
        second.join(60)
    finally:
        release.set()
        first.join(60)
    assert batches == [[YES]]
    assert [r[0].on_whatsapp for r in results] == [True, True]  # type: ignore[index]


def test_an_answer_that_lands_between_reading_and_claiming_is_not_asked_again(
        cache: NumberCache) -> None:
    """Another caller finishes (answer cached, claim released) after our cache read
    and before our claim; the clock's second reading falls exactly there."""
    readings: list[float] = []

    def clock() -> float:
        readings.append(100.0)
        if len(readings) == 2:
            cache.put([NumberInfo(YES, True, "j")], 100.0)
        return 100.0

    asked: list[list[str]] = []

    def engine(phones: list[str]) -> list[NumberInfo]:
        asked.append(list(phones))
        return [NumberInfo(p, True) for p in phones]

    [answer] = check_numbers(cache, "s", [YES], engine, PLENTY, 1.0, strict_budget=True,
                             clock=clock)
    assert asked == []
    assert answer.on_whatsapp is True


def test_a_delivery_receipt_clears_only_a_negative_answer(cache: NumberCache) -> None:
    cache.put([NumberInfo(YES, True, "j"), NumberInfo(NO, False)], 0.0)
    cache.confirm(NO)
    cache.confirm(YES)
    assert set(cache.get([YES, NO], 1.0)) == {YES}


@pytest.mark.parametrize(("text", "reason"), [
    ("client is nil", "NOT_CONNECTED"),
    ("failed to send usync query: websocket not connected", "NOT_CONNECTED"),
    ("info query timed out", "TIMEOUT"),
    ("Function returned nothing.", "LOOKUP_FAILED"),
])
def test_engine_lookup_errors_are_unknown_with_a_reason(text: str, reason: str) -> None:
    from actors.transport.neonize import lookup_error_from

    error = lookup_error_from(text)
    assert error.reason == reason and not error.uncertain


def test_expired_answers_are_removed_not_kept_for_ever(cache: NumberCache) -> None:
    cache.put([NumberInfo(NO, False)], 0.0)
    cache.put([NumberInfo(YES, True)], 11.0)  # NO expired at 10
    with cache._locked() as db:
        rows = db.execute("SELECT phone FROM answers").fetchall()
    assert rows == [(YES,)]


def _open_on(path: Path) -> int:
    """This process's descriptors open on ``path`` (a SQLite connection holds one)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir()
               if os.path.realpath(fd) == str(path.resolve()))


def test_threads_share_one_connection_so_memory_does_not_grow_with_them(
        tmp_path: Path) -> None:
    """A connection per thread made a web worker's memory grow with every request
    thread that ever checked a number (issue 16's soak: about 0.2 MiB each, added when
    a stall made more threads busy)."""
    path = tmp_path / "numbers.sqlite"
    numbers = NumberCache(path, positive_ttl=100.0, negative_ttl=10.0)
    try:
        numbers.put([NumberInfo(YES, True, f"{YES}@s.whatsapp.net")], 1.0)
        start = threading.Barrier(8)
        answers: list[dict[str, NumberCheck]] = []

        def check() -> None:
            start.wait(10)
            answers.append(numbers.get([YES], 2.0))
            numbers.spend("s", 1, PLENTY, 2.0)

        threads = [threading.Thread(target=check) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert [a[YES].on_whatsapp for a in answers] == [True] * 8
        assert _open_on(path) == 1
    finally:
        numbers.close()
    assert _open_on(path) == 0
