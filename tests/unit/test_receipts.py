"""Receipts: who sent one (LIDs mapped to numbers), and the ones that overtake their
message's WhatsApp id (actors/outbox/receipts.py, actors/transport/base.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actors.outbox.receipts import EarlyReceipts, HeldReceipt
from actors.transport.base import peer_phone


def _no_store(_lid: str) -> str:
    raise AssertionError("the LID store is not asked for a number")


def test_a_phone_address_is_its_own_number_without_its_device() -> None:
    assert peer_phone("4917012345678", "s.whatsapp.net", (), _no_store) == "4917012345678"
    assert peer_phone("4917012345678:12", "s.whatsapp.net", (), _no_store) == "4917012345678"
    assert peer_phone("4917012345678", "c.us", (), _no_store) == "4917012345678"


def test_a_lid_is_mapped_by_the_number_sent_along_first() -> None:
    alternates = [("", ""), ("4917077777777:3", "s.whatsapp.net")]
    assert peer_phone("123456789012345", "lid", alternates, _no_store) == "4917077777777"


def test_a_lid_without_a_number_along_is_looked_up_in_the_engines_store() -> None:
    store = {"123456789012345": "4917088888888"}
    assert peer_phone("123456789012345:4", "lid", [("", "")],
                      lambda lid: store[lid.split(":")[0]]) == "4917088888888"
    assert peer_phone("123456789012345", "hosted.lid", (), store.__getitem__) == "4917088888888"


@pytest.mark.parametrize("lookup", [
    lambda _lid: "",  # the store knows nothing
    lambda _lid: "not-a-number@s.whatsapp.net",
    lambda lid: {}[lid],  # the lookup fails
])
def test_an_unknown_lid_has_no_number_never_its_own_digits(
        lookup: Callable[[str], str]) -> None:
    assert peer_phone("123456789012345", "lid", (), lookup) == ""


def test_groups_and_other_servers_have_no_number() -> None:
    assert peer_phone("120363000000000000", "g.us", (), _no_store) == ""
    assert peer_phone("123", "newsletter", (), _no_store) == ""
    assert peer_phone("", "s.whatsapp.net", (), _no_store) == ""


def test_a_held_receipt_is_given_back_once_for_its_session_and_id() -> None:
    held = EarlyReceipts()
    held.hold("a", "3EB0X", "delivered", "4917", now=100.0)
    held.hold("a", "3EB0X", "read", "4917", now=100.5)
    assert held.take("b", "3EB0X", now=101.0) == []  # another account's id
    assert held.take("a", "3EB0X", now=101.0) == [HeldReceipt("delivered", "4917", 100.0),
                                                   HeldReceipt("read", "4917", 100.5)]
    assert held.take("a", "3EB0X", now=101.0) == []
    assert len(held) == 0


def test_held_receipts_age_out() -> None:
    held = EarlyReceipts(max_age=10.0)
    held.hold("a", "old", "delivered", "1", now=0.0)
    held.hold("a", "new", "delivered", "1", now=5.0)
    assert held.take("a", "old", now=10.0) == []
    assert [r.at for r in held.take("a", "new", now=10.0)] == [5.0]


def test_what_strangers_can_make_it_hold_is_bounded() -> None:
    """Anyone can send a receipt naming any id: a flood of them keeps at most
    ``max_held`` (the newest), and a few per id."""
    held = EarlyReceipts(max_held=100)
    for n in range(10_000):
        held.hold("a", f"id{n}", "delivered", "1", now=float(n) / 1000)
    assert len(held) <= 100
    assert held.take("a", "id0", now=10.0) == []
    assert len(held.take("a", "id9999", now=10.0)) == 1
    for _ in range(50):
        held.hold("a", "same", "read", "1", now=10.0)
    assert len(held.take("a", "same", now=10.0)) == 4


def test_bounds_must_be_usable() -> None:
    with pytest.raises(ValueError):
        EarlyReceipts(max_held=0)
    with pytest.raises(ValueError):
        EarlyReceipts(max_age=float("nan"))


def test_a_receipt_is_recorded_at_its_own_time_within_what_is_possible() -> None:
    """The device's time, but never before the send it confirms nor in the future;
    0 or NaN (the engine did not say) is the moment the outbox applies it."""
    from actors.outbox.receipts import receipt_time

    assert receipt_time(1_000.0, record_time=900.0, now=1_100.0) == 1_000.0
    assert receipt_time(800.0, record_time=900.0, now=1_100.0) == 900.0
    assert receipt_time(5_000.0, record_time=900.0, now=1_100.0) == 1_100.0
    for unknown in (0.0, -1.0, float("nan"), float("-inf")):
        assert receipt_time(unknown, record_time=900.0, now=1_100.0) == 1_100.0
    assert receipt_time(float("inf"), record_time=900.0, now=1_100.0) == 1_100.0


def test_a_held_receipt_keeps_its_own_time() -> None:
    from actors.outbox.receipts import EarlyReceipts

    held = EarlyReceipts()
    held.hold("s", "3EB0", "delivered", "4917", now=100.0, sent_at=95.0)
    (receipt,) = held.take("s", "3EB0", now=101.0)
    assert (receipt.at, receipt.sent_at) == (100.0, 95.0)
