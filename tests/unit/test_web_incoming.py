"""whatsAppIncomingMessages and whatsAppMarkRead in the real web tier (real Flask, real
tokens, real resolvers) over a FakeBridge standing in for the actor system: token
roles, session restrictions, page sizes, and how a stored row reads in the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.messages import Failed, IncomingPage, ListIncoming, MarkRead, Ok
from tests.unit.web_helpers import (
    FakeBridge,
    Web,
    add_token,
    codes,
    default_handlers,
    web,
    web_config,
)

INCOMING = ("query($s: String, $a: String, $f: Int) { whatsAppIncomingMessages(session: $s, "
            "after: $a, first: $f) { edges { cursor node { id session whatsAppMessageId kind "
            "text phoneNumber senderJid senderLid pushName chat isGroup quotedMessageId sentAt "
            "receivedAt readAt optOut } } pageInfo { hasNextPage endCursor } } }")
MARK = "mutation($id: ID!) { whatsAppMarkRead(id: $id) }"


def row(session: str = "default", **changes: Any) -> dict[str, Any]:
    """A row of the outbox's incoming table, as the outbox hands it out."""
    return {"seq": 1, "id": "018d2f0c1a2b3c4d5e6f", "session": session,
            "wa_message_id": "3EB0M1", "chat": "4915112345001@s.whatsapp.net",
            "sender_jid": "4915112345001@s.whatsapp.net", "sender_phone": "4915112345001",
            "sender_lid": "", "push_name": "", "is_group": False, "kind": "text",
            "text": "STOP", "text_hash": "x", "quoted_id": "3EB0Q", "sent_at": 1_767_225_600.0,
            "received_at": 1_767_225_601.0, "read_at": None, "meta": {}, "opt_out": True,
            **changes}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Web, dict[str, str]]]:
    config = web_config(tmp_path)
    tokens = {"admin": add_token(config, "ops", "admin"),
              "alpha": add_token(config, "alpha-ops", "operator", sessions=("alpha",)),
              "two": add_token(config, "two-ops", "operator", sessions=("alpha", "beta")),
              "sender": add_token(config, "app", "sender", sessions=("alpha",)),
              "viewer": add_token(config, "watch", "viewer")}
    handlers = {**default_handlers(),
                ListIncoming: lambda m: Ok(IncomingPage((row(m.session or "default"),),
                                                        ("c1",), False)),
                MarkRead: lambda m: Ok(m.incoming_id == "known")}
    yield from ((w, tokens) for w in web(config, FakeBridge(handlers)))


def test_a_row_reads_as_the_api_s_incoming_message(site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    result = w.gql(INCOMING, {}, tokens["admin"])
    connection = result["data"]["whatsAppIncomingMessages"]
    assert connection["pageInfo"] == {"hasNextPage": False, "endCursor": "c1"}
    assert connection["edges"][0]["node"] == {
        "id": "018d2f0c1a2b3c4d5e6f", "session": "default", "whatsAppMessageId": "3EB0M1",
        "kind": "text", "text": "STOP", "phoneNumber": "+4915112345001",
        "senderJid": "4915112345001@s.whatsapp.net", "senderLid": None, "pushName": None,
        "chat": "4915112345001@s.whatsapp.net", "isGroup": False, "quotedMessageId": "3EB0Q",
        "sentAt": "2026-01-01T00:00:00Z", "receivedAt": "2026-01-01T00:00:01Z",
        "readAt": None, "optOut": True}
    (asked,) = w.bridge.asked_of(ListIncoming)
    assert (asked.session, asked.first, asked.after) == (None, 20, None)


def test_a_token_of_one_session_lists_that_one_and_no_other(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    assert not w.gql(INCOMING, {}, tokens["alpha"]).get("errors")
    assert w.bridge.asked_of(ListIncoming)[-1].session == "alpha"
    assert codes(w.gql(INCOMING, {"s": "beta"}, tokens["alpha"])) == ["FORBIDDEN"]
    assert codes(w.gql(INCOMING, {}, tokens["two"])) == ["FORBIDDEN"]  # must name one
    assert len(w.bridge.asked_of(ListIncoming)) == 1


@pytest.mark.parametrize("role", ["sender", "viewer"])
def test_roles_without_message_records_read_no_replies(site: tuple[Web, dict[str, str]],
                                                       role: str) -> None:
    w, tokens = site
    assert codes(w.gql(INCOMING, {}, tokens[role])) == ["FORBIDDEN"]
    assert not w.bridge.asked_of(ListIncoming)


@pytest.mark.parametrize("first", [0, -1, 201, 2**31 - 1])
def test_a_page_size_out_of_range_is_refused(site: tuple[Web, dict[str, str]],
                                             first: int) -> None:
    w, tokens = site
    assert codes(w.gql(INCOMING, {"f": first}, tokens["admin"])) == ["GRAPHQL_VALIDATION_FAILED"]
    assert not w.bridge.asked_of(ListIncoming)


def test_a_bad_cursor_is_the_outbox_s_validation_error(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    token = add_token(config, "ops", "admin")
    handlers = {**default_handlers(), ListIncoming: lambda m: Failed(
        "GRAPHQL_VALIDATION_FAILED", "invalid cursor 'x'", {"field": "after"})}
    for w in web(config, FakeBridge(handlers)):
        result = w.gql(INCOMING, {"a": "x"}, token)
        assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]
        assert result["errors"][0]["extensions"]["field"] == "after"


def test_mark_read_carries_the_callers_sessions_and_is_audited(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    assert w.gql(MARK, {"id": "known"}, tokens["sender"])["data"]["whatsAppMarkRead"] is True
    assert w.gql(MARK, {"id": "gone"}, tokens["admin"])["data"]["whatsAppMarkRead"] is False
    asked = w.bridge.asked_of(MarkRead)
    assert [(m.incoming_id, m.sessions) for m in asked] == [("known", ("alpha",)),
                                                           ("gone", None)]
    audited = [(a["operation"], a["outcome"]) for a in w.bridge.audited("mutation")]
    assert audited == [("whatsAppMarkRead", "ok"), ("whatsAppMarkRead", "unknown")]


@pytest.mark.parametrize("role", ["alpha", "viewer"])  # an operator and a viewer send nothing
def test_mark_read_needs_the_send_role(site: tuple[Web, dict[str, str]], role: str) -> None:
    w, tokens = site
    assert codes(w.gql(MARK, {"id": "known"}, tokens[role])) == ["FORBIDDEN"]
    assert not w.bridge.asked_of(MarkRead)


def test_mark_read_on_a_session_that_is_not_connected_says_so(tmp_path: Path) -> None:
    config = web_config(tmp_path)
    token = add_token(config, "ops", "admin")
    handlers = {**default_handlers(), MarkRead: lambda m: Failed(
        "NOT_CONNECTED", "session 'default' is RECONNECTING, not CONNECTED",
        {"state": "RECONNECTING", "session": "default"})}
    for w in web(config, FakeBridge(handlers)):
        result = w.gql(MARK, {"id": "known"}, token)
        assert codes(result) == ["NOT_CONNECTED"]
        assert result["errors"][0]["extensions"]["state"] == "RECONNECTING"
