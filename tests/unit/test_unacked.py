"""The bookkeeping that makes held replies and receipts survive a killed outbox: the
session keeps each until the outbox acknowledges its commit (actors/session/unacked.py),
the outbox notes commits per session process (actors/outbox/acks.py) and holds a copy
once (actors/outbox/held.py). The real kill: tests/integration/test_disk_full.py."""

from __future__ import annotations

from actors.messages import DeliveryReceipt
from actors.outbox.acks import CommitAcks
from actors.outbox.held import HeldWrites
from actors.session.unacked import Unacknowledged, new_origin


def kept(origin: int, seq: int) -> DeliveryReceipt:
    return DeliveryReceipt(f"wa{seq}", "read", "s", origin=origin, seq=seq)


def test_numbers_are_never_reused_and_origins_are_never_zero() -> None:
    unacked = Unacknowledged(7, limit=10, resend_after=5.0)
    assert [unacked.next_seq() for _ in range(3)] == [1, 2, 3]
    assert all(new_origin() > 0 for _ in range(1000))


def test_acknowledged_ones_are_dropped_and_the_rest_resent_oldest_first() -> None:
    unacked = Unacknowledged(7, limit=10, resend_after=5.0)
    sent = [kept(7, unacked.next_seq()) for _ in range(4)]
    for message in sent:
        unacked.keep(message.seq, message, now=100.0)
    assert unacked.due(104.9) == []  # not a resend period yet
    assert unacked.acknowledged(7, (2, 4)) == 2
    assert unacked.acknowledged(7, (2, 99)) == 0  # repeated, or never kept
    assert unacked.due(105.0) == [sent[0], sent[2]]
    assert unacked.due(106.0) == []  # resent just now: the period starts again
    assert unacked.all(106.0) == [sent[0], sent[2]]  # a new outbox: everything, in order
    assert len(unacked) == 2


def test_an_acknowledgement_for_another_process_drops_nothing() -> None:
    unacked = Unacknowledged(7, limit=10, resend_after=5.0)
    message = kept(7, unacked.next_seq())
    unacked.keep(message.seq, message, now=0.0)
    assert unacked.acknowledged(8, (1,)) == 0 and len(unacked) == 1


def test_at_the_limit_the_oldest_is_no_longer_kept_and_counted() -> None:
    unacked = Unacknowledged(7, limit=2, resend_after=5.0)
    first, second, third = (kept(7, unacked.next_seq()) for _ in range(3))
    assert unacked.keep(1, first, 0.0) is None and unacked.keep(2, second, 0.0) is None
    assert unacked.keep(3, third, 0.0) is first
    assert unacked.unkept == 1 and unacked.all(10.0) == [second, third]


def test_commits_are_told_once_per_process_and_a_new_process_replaces_the_old() -> None:
    acks = CommitAcks()
    assert not acks
    acks.committed("a", 7, 1)
    acks.committed("a", 7, 2)
    acks.committed("b", 9, 5)
    acks.committed("c", 0, 3)  # kept by nobody: no answer
    assert sorted(acks.take()) == [("a", 7, (1, 2)), ("b", 9, (5,))]
    assert not acks and acks.take() == []
    acks.committed("a", 7, 3)
    acks.committed("a", 8, 1)  # the session's process was replaced
    assert acks.take() == [("a", 8, (1,))]


def test_a_resent_copy_of_a_held_write_is_held_once() -> None:
    held = HeldWrites(limit=3)
    assert held.hold(kept(7, 1)) and held.hold(kept(7, 2))
    assert held.hold(kept(7, 1))  # the session sent it again: already waiting
    assert len(held) == 2 and held.lost == 0
    held.written()
    assert held.hold(kept(7, 1)) and len(held) == 2  # written already: a copy waits again
    unkept = DeliveryReceipt("wa", "read", "s")  # nobody keeps it: never taken as a copy
    assert held.hold(unkept) and not held.hold(unkept) and held.lost == 1
