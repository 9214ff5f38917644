"""The web process's audit queue: entries leave in order, in batches, bounded, and what
waits at a normal end is sent first (gateway/web/audit_queue.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from gateway.web.audit_queue import AuditQueue
from tests.integration.harness import wait_for


class Receiver:
    """Collects batches; can be held shut to let entries gather."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def __call__(self, batch: Sequence[int]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the writer is gone")
        self.batches.append(list(batch))

    @property
    def entries(self) -> list[int]:
        return [entry for batch in self.batches for entry in batch]


def test_entries_arrive_in_order_and_gather_into_batches_while_one_is_out() -> None:
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver, max_batch=50)
    receiver.gate.clear()
    queue.put(0)
    assert receiver.entered.wait(5)  # entry 0 is out; the rest gather behind it
    for entry in range(1, 121):
        assert queue.put(entry)
    receiver.gate.set()
    assert queue.close(10)
    assert receiver.entries == list(range(121))
    assert [len(b) for b in receiver.batches] == [1, 50, 50, 20]


def test_a_full_queue_counts_what_it_refuses_and_keeps_what_it_took() -> None:
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver, max_entries=3)
    receiver.gate.clear()
    queue.put(0)
    assert receiver.entered.wait(5)
    accepted = [queue.put(entry) for entry in range(1, 6)]
    assert accepted == [True, True, True, False, False]
    assert queue.lost == 2
    receiver.gate.set()
    assert queue.close(10)
    assert receiver.entries == [0, 1, 2, 3]


def test_a_batch_whose_send_raises_is_counted_lost_and_the_thread_goes_on() -> None:
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver)
    receiver.fail = True
    queue.put(1)
    assert queue.drain(5)
    assert queue.lost == 1
    receiver.fail = False
    queue.put(2)
    assert queue.close(5)
    assert receiver.entries == [2]


def test_close_sends_what_waits_and_then_refuses_more() -> None:
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver)
    for entry in range(10):
        queue.put(entry)
    assert queue.close(5)
    assert receiver.entries == list(range(10))
    assert not queue.put(10)
    assert queue.waiting() == 0


def test_close_gives_up_at_its_deadline_when_the_writer_hangs() -> None:
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver)
    receiver.gate.clear()
    queue.put(1)
    assert receiver.entered.wait(5)
    assert not queue.close(0.2)
    receiver.gate.set()  # let the thread end


def test_entries_that_come_within_the_linger_leave_together() -> None:
    """A slow trickle (one entry each 20 ms) still makes one message per linger."""
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver, linger=5.0)
    for entry in range(5):
        queue.put(entry)
        time.sleep(0.02)  # the trickle itself; nothing is awaited
    assert receiver.batches == []  # still gathering: the linger is 5 s
    assert queue.close(2)  # close does not wait the linger out
    assert receiver.batches == [[0, 1, 2, 3, 4]]


def test_a_full_batch_leaves_without_waiting_for_the_linger() -> None:
    receiver = Receiver()
    queue: AuditQueue[int] = AuditQueue(receiver, linger=60.0, max_batch=4)
    for entry in range(4):
        queue.put(entry)
    wait_for(lambda: receiver.batches, 10, 0.01, "the full batch")
    assert receiver.batches == [[0, 1, 2, 3]]
    assert queue.close(2)


@pytest.mark.parametrize("bad", [{"max_entries": 0}, {"max_batch": 0}, {"max_batch": -1}])
def test_sizes_below_one_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AuditQueue(Receiver(), **bad)


@pytest.mark.parametrize("linger", [-0.1, float("nan"), float("inf")])
def test_a_linger_that_is_no_finite_wait_is_refused(linger: float) -> None:
    with pytest.raises(ValueError, match="linger"):
        AuditQueue(Receiver(), linger=linger)
