"""A session's linked device and what belongs to it (actors.session.links): link epochs, the
account a message may be sent from, and the bounded session registry."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from actors.messages import SessionState, SessionStatus
from actors.session.links import (
    evictable,
    holds_nothing,
    keep_account,
    link_ended,
    new_entry,
    not_connected_yet,
    over_limit,
    updated_entry,
    wrong_account,
)


def counter(start: int = 0) -> Callable[[], int]:
    numbers = itertools.count(start + 1)
    return lambda: next(numbers)


def test_messages_of_an_older_epoch_belong_to_an_ended_link() -> None:
    assert link_ended(1, 2)
    assert not link_ended(2, 2)
    assert not link_ended(3, 2)  # accepted for a newer link than this (stale) view
    assert link_ended(None, 1)  # written before epochs existed: epoch 0
    assert not link_ended(None, 0)


def test_a_message_goes_only_from_the_account_it_was_accepted_for() -> None:
    assert wrong_account("15551234567", "15551234567") is None
    assert wrong_account(None, "15551234567") is None  # accepted before accounts were kept
    assert wrong_account("", "15551234567") is None
    problem = wrong_account("15551234567", "19995550123")
    assert problem is not None and "+15551234567" in problem and "+19995550123" in problem
    # A connection whose account the engine did not say proves nothing: refused.
    for live in (None, ""):
        refused = wrong_account("15551234567", live)
        assert refused is not None and "did not report" in refused


def test_a_paired_session_keeps_its_account_until_it_reports_one() -> None:
    before = SessionStatus("s", SessionState.RECONNECTING, paired=True, phone="15551234567")
    restarted = SessionStatus("s", SessionState.CONNECTING, paired=True, phone=None)
    assert keep_account(before, restarted).phone == "15551234567"
    other = SessionStatus("s", SessionState.CONNECTED, paired=True, phone="19995550123")
    assert keep_account(before, other).phone == "19995550123"  # the live one wins
    lost = SessionStatus("s", SessionState.CONNECTING, paired=False, phone=None)
    assert keep_account(before, lost).phone is None  # credentials gone: no account
    assert keep_account(None, restarted).phone is None
    unpaired_before = SessionStatus("s", SessionState.NEW, paired=False, phone="1555")
    assert keep_account(unpaired_before, restarted).phone is None


def test_a_new_session_and_each_logout_start_a_new_epoch() -> None:
    next_epoch = counter(10)
    entry = updated_entry(None, {"want": "connected"}, next_epoch)
    assert entry == {**new_entry(11), "want": "connected"}
    entry = updated_entry(entry, {"state": "CONNECTED", "paired": True}, next_epoch)
    assert entry["epoch"] == 11  # connecting changes nothing
    entry = updated_entry(entry, {"state": "LOGGED_OUT", "paired": False}, next_epoch)
    assert entry["epoch"] == 12 and entry["want"] == "disconnected"
    again = updated_entry(entry, {"state": "LOGGED_OUT", "phone": None}, next_epoch)
    assert again["epoch"] == 12  # a repeated report of the same logout is not another
    entry = updated_entry(again, {"want": "connected"}, next_epoch)
    assert entry["want"] == "connected" and entry["epoch"] == 12


def test_only_a_session_that_holds_nothing_may_be_evicted() -> None:
    empty = new_entry(1) | {"state": "LOGGED_OUT"}
    assert holds_nothing(empty, running=False, has_stores=False)
    assert not holds_nothing(empty, running=True, has_stores=False)
    assert not holds_nothing(empty, running=False, has_stores=True)
    assert not holds_nothing(empty | {"paired": True}, running=False, has_stores=False)
    sessions = {
        "linked": new_entry(1) | {"paired": True, "state": "DISCONNECTED"},
        "late": new_entry(5) | {"state": "LOGGED_OUT"},
        "early": new_entry(2) | {"state": "QR_EXPIRED"},
        "running": new_entry(3),
        "files": new_entry(4) | {"state": "FAILED"},
    }
    candidates = evictable(sessions, ["running"], lambda name: name == "files")
    assert candidates == ["early", "late"]  # the oldest epoch first


def test_an_oversized_registry_sheds_only_sessions_that_hold_nothing() -> None:
    sessions = {f"junk{i}": new_entry(i) for i in range(10)}
    sessions |= {f"linked{i}": new_entry(100 + i) | {"paired": True} for i in range(3)}
    dropped = over_limit(sessions, 5, (), lambda name: False)
    assert len(dropped) == 8 and all(name.startswith("junk") for name in dropped)
    assert len(sessions) - len(dropped) == 5
    linked_only = {f"linked{i}": new_entry(i) | {"paired": True} for i in range(7)}
    assert over_limit(linked_only, 5, (), lambda name: False) == []  # nothing to drop
    assert over_limit(sessions, 50, (), lambda name: False) == []


def test_a_message_handed_to_a_process_not_connected_yet_waits_instead_of_failing() -> None:
    """A restarted process gets a resent message before its connection says which
    account it is: "unknown" must not fail it for good (ACCOUNT_CHANGED is permanent);
    it waits (NOT_CONNECTED) until the account is known. Seen with a resend after a
    fenced session process: the recipient had the message, the caller heard FAILED."""
    assert not_connected_yet(None)
    for state in SessionState:
        status = SessionStatus("s1", state, phone="15551234567")
        assert not_connected_yet(status) == (state is not SessionState.CONNECTED)
