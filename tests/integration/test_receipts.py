"""Receipts reach the message they confirm, whoever WhatsApp says sent them.

WhatsApp increasingly names people by LID instead of their number. The simulated
service can do the same (``wagate sim receipt --lid``); the session maps the LID back
to the number with its LID store, and a receipt counts only for a message of the
session that received it, from that message's recipient.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.transport.simulator import SimulatorServer
from tests.integration.harness import Gateway, wait_for

pytestmark = pytest.mark.integration

RECIPIENT = "4915112345001"
STRANGER = "4915112345999"


def send(gw: Gateway, phone: str, text: str, session: str = "default") -> str:
    result = gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
                    "{ id state } }",
                    {"i": {"phoneNumber": f"+{phone}", "message": text, "session": session}})
    assert not result.errors, result
    return result.data["sendWhatsAppMessage"]["id"]


def record(gw: Gateway, message_id: str) -> dict[str, Any]:
    result = gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { state "
                    "history { state } } }", {"id": message_id})
    assert not result.errors, result
    return result.data["whatsAppMessage"]


def wait_state(gw: Gateway, message_id: str, state: str) -> dict[str, Any]:
    return wait_for(lambda: (r := record(gw, message_id))["state"] == state and r, 15.0,
                    message=f"message {message_id} to be {state}")


def wa_id(gw: Gateway, text: str) -> str:
    """The WhatsApp id the simulated service gave the message with ``text``."""
    found = wait_for(lambda: [m["id"] for m in gw.inbox() if m["text"] == text], 15.0,
                     message=f"{text!r} in the simulated inbox")
    (only,) = found
    return only


def test_a_receipt_naming_the_recipient_by_lid_reaches_its_message(
        linked_gateway: Gateway) -> None:
    gw = linked_gateway
    message = send(gw, RECIPIENT, "lid receipt")
    wait_state(gw, message, "SENT")
    whatsapp_id = wa_id(gw, "lid receipt")
    gw.sim("receipt", whatsapp_id, "--lid")
    wait_state(gw, message, "DELIVERED")
    gw.sim("receipt", whatsapp_id, "--lid", "--read")
    final = wait_state(gw, message, "READ")
    assert [h["state"] for h in final["history"]] == [
        "QUEUED", "SENDING", "SENT", "DELIVERED", "READ"]


def test_a_receipt_that_overtakes_the_send_s_own_answer_still_counts(
        linked_gateway: Gateway) -> None:
    """The recipient's device can confirm a message before the engine has handed the
    gateway the message's WhatsApp id: the receipt waits for the id."""
    gw = linked_gateway
    gw.sim("auto-receipt", "delivered", "--lid")
    try:
        message = send(gw, RECIPIENT, "fast recipient")
        wait_state(gw, message, "DELIVERED")
    finally:
        gw.sim("auto-receipt", "off")


def test_receipts_from_anyone_but_the_recipient_or_via_another_session_change_nothing(
        linked_gateway: Gateway) -> None:
    gw = linked_gateway
    gw.link("other")
    mine = send(gw, RECIPIENT, "only mine")
    theirs = send(gw, RECIPIENT, "other session's", session="other")
    wait_state(gw, mine, "SENT")
    wait_state(gw, theirs, "SENT")
    mine_wa = wa_id(gw, "only mine")

    # Someone else (by number, or by a LID nobody can map), then the other session:
    # each queued before a genuine receipt on the same path, so once that one counted,
    # the others were seen and ignored.
    gw.sim("receipt", mine_wa, "--read", "--from", STRANGER)
    gw.sim("receipt", mine_wa, "--read", "--lid", "--from", STRANGER)
    gw.sim("receipt", mine_wa)
    assert wait_state(gw, mine, "DELIVERED")["state"] == "DELIVERED"
    gw.sim("receipt", mine_wa, "--read", "--session", "other")
    gw.sim("receipt", wa_id(gw, "other session's"), "--session", "other")
    wait_state(gw, theirs, "DELIVERED")
    assert record(gw, mine)["state"] == "DELIVERED"  # never READ


def test_a_message_is_delivered_at_the_time_the_receipt_says(linked_gateway: Gateway) -> None:
    """The recipient's device dates its receipt (the engine passes the time on): the
    DELIVERED entry of the history is that time, not when the outbox got round to it.
    The API gives whole seconds: the receipt is dated one second after SENT and
    applied once the clock is two seconds past it, so the two times differ."""
    import time
    from datetime import datetime

    def history_time(message_id: str, state: str) -> float:
        result = gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { history { state at } } }",
                        {"id": message_id})
        at = next(h["at"] for h in result.data["whatsAppMessage"]["history"]
                  if h["state"] == state)
        return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()

    gw = linked_gateway
    message = send(gw, RECIPIENT, "dated receipt")
    wait_state(gw, message, "SENT")
    device_time = history_time(message, "SENT") + 1.0
    wait_for(lambda: time.time() > device_time + 2.0, 10.0, message="the clock to move on")
    gw.sim("receipt", wa_id(gw, "dated receipt"), "--at", repr(device_time))
    wait_state(gw, message, "DELIVERED")
    assert history_time(message, "DELIVERED") == device_time


INCOMING = ("query($after: String) { whatsAppIncomingMessages(after: $after, first: 50) "
            "{ edges { cursor node { id session whatsAppMessageId kind text phoneNumber "
            "senderJid pushName isGroup quotedMessageId sentAt receivedAt readAt } } "
            "pageInfo { hasNextPage endCursor } } }")


def incoming(gw: Gateway, after: str | None = None) -> list[dict[str, Any]]:
    result = gw.gql(INCOMING, {"after": after})
    assert not result.errors, result
    return [edge["node"] for edge in result.data["whatsAppIncomingMessages"]["edges"]]


def test_receipts_and_a_reply_flow_end_to_end_through_the_simulated_phone(
        linked_gateway: Gateway) -> None:
    """`wagate sim receipt ID delivered|read` moves the message on (a late delivery
    never back); `wagate sim reply --quote` reaches whatsAppIncomingMessages, and
    whatsAppMarkRead sends its read receipt; the reply's text is in no log."""
    gw = linked_gateway
    message = send(gw, RECIPIENT, "receipts end to end")
    wait_state(gw, message, "SENT")
    whatsapp_id = wa_id(gw, "receipts end to end")
    gw.sim("receipt", whatsapp_id, "delivered")
    wait_state(gw, message, "DELIVERED")
    gw.sim("receipt", whatsapp_id, "read")
    wait_state(gw, message, "READ")
    gw.sim("receipt", whatsapp_id, "delivered")  # late, from a second device
    secret = "reply text 7f3a9c never logged"
    gw.sim("reply", "--to-session", "default", "--from", RECIPIENT, "--text", secret,
           "--quote", whatsapp_id, "--name", "Ann")
    (reply,) = wait_for(lambda: incoming(gw), 15.0, message="the reply to be stored")
    assert reply["text"] == secret and reply["kind"] == "text"
    assert reply["phoneNumber"] == f"+{RECIPIENT}" and reply["quotedMessageId"] == whatsapp_id
    assert reply["senderJid"] == f"{RECIPIENT}@s.whatsapp.net" and not reply["isGroup"]
    assert reply["pushName"] == "Ann" and reply["readAt"] is None
    assert record(gw, message)["state"] == "READ"  # the late delivery moved nothing back
    marked = gw.gql("mutation($id: ID!) { whatsAppMarkRead(id: $id) }", {"id": reply["id"]})
    assert not marked.errors and marked.data["whatsAppMarkRead"] is True, marked
    unknown = gw.gql("mutation { whatsAppMarkRead(id: \"0123456789abcdef\") }")
    assert not unknown.errors and unknown.data["whatsAppMarkRead"] is False, unknown
    server = SimulatorServer(gw.data_dir)
    try:
        marks = server.read_marks()
    finally:
        server.close()
    assert [(m["chat"], m["ids"]) for m in marks] == [
        (f"{RECIPIENT}@s.whatsapp.net", [reply["whatsAppMessageId"]])]
    cursor = gw.gql(INCOMING, {}).data["whatsAppIncomingMessages"]["pageInfo"]["endCursor"]
    assert incoming(gw, cursor) == []  # nothing since the last one seen
    assert incoming(gw)[0]["readAt"] is not None
    logs = [p for p in gw.root.rglob("*.log*") if p.is_file()]
    assert logs and not [p for p in logs if secret in p.read_text(errors="replace")]


def test_a_ten_megabyte_reply_is_stored_cut_to_the_bound_and_flagged(
        linked_gateway: Gateway) -> None:
    """`wagate sim reply --text-file` with 10 MB of text (more than a command line takes):
    the reply is kept, cut to messages.max_incoming_text_chars (65536 by default) and
    flagged truncated in its record and its message.received event."""
    gw = linked_gateway
    before = gw.gql(INCOMING, {}).data["whatsAppIncomingMessages"]["pageInfo"]["endCursor"]
    huge = gw.root / "huge-reply.txt"
    huge.write_text("é" + "x" * (10 * 1024 * 1024), encoding="utf-8")
    gw.sim("reply", "--from", RECIPIENT, "--text-file", str(huge))
    huge.unlink()

    def stored() -> list[dict[str, Any]]:
        result = gw.gql("query($after: String) { whatsAppIncomingMessages(after: $after) "
                        "{ edges { node { id text truncated } } } }", {"after": before})
        assert not result.errors, result
        return [edge["node"] for edge in result.data["whatsAppIncomingMessages"]["edges"]]

    (reply,) = wait_for(stored, 30.0, message="the 10 MB reply to be stored")
    assert reply["truncated"] is True and len(reply["text"]) == 65536
    assert reply["text"] == "é" + "x" * 65535
    events = gw.gql("{ whatsAppEvents(types: [MESSAGE_RECEIVED], first: 500) "
                    "{ edges { node { data } } } }")
    assert not events.errors, events
    data = [e["node"]["data"] for e in events.data["whatsAppEvents"]["edges"]]
    (event,) = [d for d in data if d["incoming_id"] == reply["id"]]
    assert event["truncated"] is True and len(event["text"]) == 65536
    earlier = [d for d in data if d["incoming_id"] != reply["id"]]
    assert earlier and not any(d["truncated"] for d in earlier)
