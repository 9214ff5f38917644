"""The real engine's end-of-call errors and pairing statuses, mapped (no engine loaded)."""

from __future__ import annotations

import pytest

from actors.transport.base import Disconnected, LoggedOut, TemporaryBan
from actors.transport.engine_events import (
    ban_from_log,
    closes_qr_channel,
    event_for_call_end,
    pairing_needs_detail,
    unencodable_event,
)

# Go's protobuf writes "proto:" then a space that is, per build, a plain or a no-break one.
PREFIXES = ("proto: ", "proto:\u00a0")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_engines_marshal_error_names_the_event(prefix: str) -> None:
    text = f"{prefix}required field neonize.TemporaryBan.Code not set"
    assert unencodable_event(text) == ("TemporaryBan", "Code")
    assert unencodable_event("failed to dial whatsapp web websocket: EOF") is None
    assert unencodable_event("") is None


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_ban_the_engine_cannot_encode_is_a_ban_with_no_known_end(prefix: str) -> None:
    event = event_for_call_end(f"{prefix}required field neonize.TemporaryBan.Code not set")
    assert isinstance(event, TemporaryBan) and event.until is None
    assert "ban code the engine cannot report" in event.reason


def test_other_unencodable_events_map_to_what_they_were() -> None:
    failure = event_for_call_end("proto: required field neonize.ConnectFailure.Reason not set")
    assert isinstance(failure, Disconnected) and not failure.recovering
    assert "refused the connection" in failure.reason and "415" in failure.reason
    receipt = event_for_call_end("proto: required field neonize.Receipt.Type not set")
    assert isinstance(receipt, Disconnected) and "receipt" in receipt.reason
    logout = event_for_call_end("proto: required field neonize.LoggedOut.Reason not set")
    assert isinstance(logout, LoggedOut)
    other = event_for_call_end("proto: required field neonize.Presence.From not set")
    assert isinstance(other, Disconnected) and "Presence.From" in other.reason


def test_an_ordinary_end_stays_a_disconnect() -> None:
    assert event_for_call_end(None) == Disconnected("client stopped unexpectedly")
    assert event_for_call_end("boom") == Disconnected("boom")


def test_which_pairing_statuses_wait_for_their_reason_and_which_close_the_channel() -> None:
    for status in ("timeout", "err-unexpected-state", "error"):
        assert pairing_needs_detail(status) and closes_qr_channel(status)
    for status in ("success", "err-client-outdated", "err-scanned-without-multidevice"):
        assert not pairing_needs_detail(status) and closes_qr_channel(status)
    for status in ("passkey-request", "passkey-confirmation"):  # the channel stays open
        assert not pairing_needs_detail(status) and not closes_qr_channel(status)


def test_the_engines_ban_log_line_gives_the_code_and_the_end() -> None:
    line = 'Temporary ban connect failure: <failure code="105" expire="3600" reason="402"/>'
    assert ban_from_log(line) == ("105", 3600.0)
    event = event_for_call_end("proto: required field neonize.TemporaryBan.Code not set",
                               ban_from_log(line), now=1000.0)
    assert isinstance(event, TemporaryBan) and event.until == 4600.0
    assert "105" in event.reason


@pytest.mark.parametrize("expire", ["", "soon", "-1", "nan", "inf", "1e30"])
def test_a_ban_log_line_without_a_usable_end_gives_nothing(expire: str) -> None:
    line = f'Temporary ban connect failure: <failure code="105" expire="{expire}"/>'
    assert ban_from_log(line) is None
    assert ban_from_log("Unknown connect failure: <failure reason=\"415\"/>") is None
