"""Wall-clock jumps of an hour either way (issue 16, part 4): the outbox's durations
(rate windows, validity, retries) run on ``SteadyClock``; here its wall clock is
made to jump while the elapsed time moves on normally, and the real stores are
asked what is due."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.messages import MessageState
from actors.outbox.limits import Limits
from actors.outbox.store import MessageStore, NewMessage
from gateway.cli.wagate import newly_linked
from gateway.core.clock import SteadyClock, boot_clock
from gateway.core.config import LimitsConfig

HOUR = 3600.0
START = 1_800_000_000.0  # some wall time


class Machine:
    """A wall clock that can be stepped and an elapsed-time clock that only moves on:
    what NTP stepping the clock (or a VM resuming) does to a process."""

    def __init__(self) -> None:
        self.wall_now = START
        self.elapsed_now = 1000.0

    def wall(self) -> float:
        return self.wall_now

    def elapsed(self) -> float:
        return self.elapsed_now

    def wait(self, seconds: float) -> None:
        self.wall_now += seconds
        self.elapsed_now += seconds

    def step(self, seconds: float) -> None:
        self.wall_now += seconds


@pytest.fixture
def machine() -> Machine:
    return Machine()


def test_the_steady_clock_ignores_steps_and_counts_elapsed_time(machine: Machine) -> None:
    clock = SteadyClock(machine.wall, machine.elapsed)
    assert clock() == START
    machine.step(HOUR)
    assert clock() == START and clock.skew() == HOUR
    machine.wait(10)
    machine.step(-2 * HOUR)
    assert clock() == START + 10 and clock.skew() == -HOUR
    # The real one: near the wall clock, and never going back.
    real = SteadyClock()
    first = real()
    assert abs(first - real.wall()) < 1 and real() >= first and boot_clock() > 0


@pytest.mark.parametrize("jump", [HOUR, -HOUR])
def test_a_jump_lets_no_burst_through_the_rate_windows_and_holds_nothing_back(
        tmp_path: Path, machine: Machine, jump: float) -> None:
    clock = SteadyClock(machine.wall, machine.elapsed)
    limits = Limits(str(tmp_path / "limits"), LimitsConfig(per_number_per_minute=2))
    try:
        assert limits.check("14155552671", clock())[0]
        assert limits.check("14155552671", clock())[0]
        allowed, retry_after, scope = limits.check("14155552671", clock())
        assert not allowed and scope == "recipient_minute" and retry_after <= 61
        machine.step(jump)
        # Forward: the window did not pass (no burst). Back: it is not an hour longer.
        allowed, retry_after, _ = limits.check("14155552671", clock())
        assert not allowed and retry_after <= 61
        machine.wait(retry_after)
        assert limits.check("14155552671", clock())[0]
    finally:
        limits.close()


@pytest.mark.parametrize("jump", [HOUR, -HOUR])
def test_validity_and_retries_keep_their_length_across_a_jump(
        tmp_path: Path, machine: Machine, jump: float) -> None:
    clock = SteadyClock(machine.wall, machine.elapsed)
    store = MessageStore(tmp_path / "outbox")
    try:
        valid = store.add(NewMessage("s", "14155552671", "code 123456",
                                     valid_until=clock() + 300), clock())
        retried = store.add(NewMessage("s", "14155552672", "retried"), clock())
        retried = store.transition(retried, MessageState.SENDING, clock())
        store.transition(retried, MessageState.QUEUED, clock(), "SERVER_ERROR",
                         attempts=1, next_attempt_at=clock() + 30)
        machine.step(jump)
        machine.wait(29)
        assert store.expire_due(clock()) == []  # a step forward expires nothing early
        assert [r["id"] for r in store.next_queued("s", clock(), 10)] == [valid["id"]]
        machine.wait(2)  # the retry is due after its 30 s, not an hour later or sooner
        due = {r["id"] for r in store.next_queued("s", clock(), 10)}
        assert due == {valid["id"], retried["id"]}
        machine.wait(270)
        assert [r["id"] for r in store.expire_due(clock())] == [valid["id"]]
    finally:
        store.close()


def test_a_scan_is_seen_to_link_whatever_the_session_process_clock_says() -> None:
    """``wagate sim scan`` waits until the scanned session links. The session process
    dates the device on its own wall clock: an hour behind the scanner's (a step back
    there), the link was never seen and the scan failed after its wait."""
    old = {"session": "s", "phone": "15550001111", "linked_at": START}
    stepped_back = {"session": "s", "phone": "15550002222", "linked_at": START - HOUR}
    assert newly_linked(None, [stepped_back], "s", "15550002222")
    assert newly_linked(old, [{**old, "linked_at": START - HOUR}], "s", "15550001111")
    assert not newly_linked(old, [old], "s", "15550001111")  # still the device from before
    assert not newly_linked(None, [stepped_back], "s", "15550001111")  # another phone
    assert not newly_linked(None, [stepped_back], "other", "15550002222")
