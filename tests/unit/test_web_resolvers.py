"""Every resolver's argument handling, through POST /graphql in process: a bad
argument is refused with its code before any actor is asked; a good one reaches the
actors as the right message (tests/unit/web_helpers.py's FakeBridge records them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.messages import (
    Accepted,
    CheckNumbers,
    Connect,
    Disconnect,
    Failed,
    ForgetSession,
    GetMessage,
    GetMessageByKey,
    GetStatus,
    ListMessages,
    Ok,
    RequestPairingCode,
    SendText,
    SessionState,
    SessionStatus,
)
from tests.unit.web_helpers import PAIRING_CODE, Web, add_token, codes, record, web, web_config

MAX_LENGTH = 50
MAX_PER_CALL = 3
PHONE = "+14155552671"  # on WhatsApp, says the fake (its digits end in 1)
NOT_ON_WHATSAPP = "+14155552672"
BAD_SESSIONS = ["", "a/b", "..", "x" * 65, "spa ce", "ümlaut"]
BAD_NUMBERS = ["", "4155552671", "+1415555267a", "+999", "+1 415 555 2671 ext 3", "+" + "1" * 30]

NOTIFY = ("mutation($p: String!, $m: String!, $s: String, $k: String) { "
          "sendWhatsAppNotification(phoneNumber: $p, message: $m, session: $s, "
          "idempotencyKey: $k) }")
SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) { "
        "id state session phoneNumber acceptedAt duplicate idempotencyKey history { state } } }")
MESSAGES = ("query($s: String, $st: String, $p: String, $f: Int, $a: String) { "
            "whatsAppMessages(session: $s, state: $st, phoneNumber: $p, first: $f, after: $a) "
            "{ edges { cursor node { id phoneNumber } } pageInfo { hasNextPage endCursor } } }")
CHECK = ("query($n: [String!]!, $s: String) { whatsAppCheckNumbers(phoneNumbers: $n, "
         "session: $s) { input phoneNumber onWhatsApp jid cached reason } }")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Web, str]]:
    config = web_config(tmp_path, **{"messages.max_length": MAX_LENGTH,
                                     "numbers.max_per_call": MAX_PER_CALL,
                                     "numbers.per_session_per_minute": 4})
    token = add_token(config, "ops", "admin")
    yield from ((w, token) for w in web(config))


def gql(site: tuple[Web, str], query: str, variables: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    w, token = site
    return w.gql(query, variables, token)


def field_of(result: dict[str, Any]) -> str | None:
    return result["errors"][0]["extensions"].get("field")  # type: ignore[no-any-return]


# ---- sessions ---------------------------------------------------------------------------


@pytest.mark.parametrize("operation, kind", [
    ("query($s: String) { whatsAppStatus(session: $s) { state } }", GetStatus),
    ("mutation($s: String) { whatsAppConnect(session: $s) }", Connect),
    ("mutation($s: String) { whatsAppDisconnect(session: $s) }", Disconnect),
    ("mutation($s: String!) { whatsAppForgetSession(session: $s) }", ForgetSession),
])
@pytest.mark.parametrize("bad", BAD_SESSIONS)
def test_a_bad_session_name_is_invalid_session_and_asks_nothing(
        site: tuple[Web, str], operation: str, kind: type, bad: str) -> None:
    result = gql(site, operation, {"s": bad})
    assert codes(result) == ["INVALID_SESSION"] and field_of(result) == "session"
    assert site[0].bridge.asked == []


def test_a_null_session_is_the_default(site: tuple[Web, str]) -> None:
    w, _ = site
    gql(site, "query($s: String) { whatsAppStatus(session: $s) { session } }", {"s": None})
    gql(site, "mutation($s: String) { whatsAppConnect(session: $s) }", {"s": None})
    assert [m.session for m in w.bridge.asked] == ["default", "default"]
    assert w.bridge.audited("mutation")[0]["session"] == "default"


def test_the_status_is_shaped_from_the_session_status(site: tuple[Web, str]) -> None:
    w, _ = site
    w.bridge.handlers[GetStatus] = lambda m: SessionStatus(
        m.session, SessionState.QR_PENDING, qr_code="2@abc,def", qr_expires_at=0.0)
    status = gql(site, "query { whatsAppStatus(session: \"s1\") { session state connected "
                       "bridgeState qrCode qrCodeSvg qrCodeRaw phoneNumber } }")
    status = status["data"]["whatsAppStatus"]
    assert status["session"] == "s1" and status["state"] == "QR_PENDING"
    assert status["connected"] is False and status["qrCodeRaw"] == "2@abc,def"
    assert status["qrCodeSvg"].startswith("data:image/svg+xml") and status["qrCode"]
    assert status["phoneNumber"] is None


def test_connect_disconnect_and_forget_ask_the_supervisor(site: tuple[Web, str]) -> None:
    w, _ = site
    assert gql(site, "mutation { whatsAppConnect(session: \"s1\") }")["data"] == {
        "whatsAppConnect": True}
    gql(site, "mutation { whatsAppDisconnect(session: \"s1\", keepSession: true) }")
    gql(site, "mutation { whatsAppDisconnect(session: \"s1\", keepSession: null) }")
    gql(site, "mutation { whatsAppForgetSession(session: \"s1\") }")
    assert [m.keep_session for m in w.bridge.asked_of(Disconnect)] == [True, False]
    assert w.bridge.asked_of(ForgetSession)[0].session == "s1"
    assert [e["operation"] for e in w.bridge.audited("mutation")] == [
        "whatsAppConnect", "whatsAppDisconnect", "whatsAppDisconnect", "whatsAppForgetSession"]


def test_forget_session_needs_a_name(site: tuple[Web, str]) -> None:
    result = gql(site, "mutation { whatsAppForgetSession }")
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]


# ---- sends ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_a_bad_number_is_invalid_number_and_sends_nothing(site: tuple[Web, str],
                                                          bad: str) -> None:
    result = gql(site, NOTIFY, {"p": bad, "m": "hi"})
    assert codes(result) == ["INVALID_NUMBER"]
    assert site[0].bridge.asked == []
    assert site[0].bridge.audited("mutation")[0]["outcome"] == "INVALID_NUMBER"


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "x" * (MAX_LENGTH + 1), "a\x00b"])
def test_an_empty_oversized_or_nul_message_is_invalid_message(site: tuple[Web, str],
                                                              text: str) -> None:
    result = gql(site, NOTIFY, {"p": PHONE, "m": text})
    assert codes(result) == ["INVALID_MESSAGE"] and field_of(result) == "message"
    assert site[0].bridge.asked == []


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_an_idempotency_key_of_bad_length_is_invalid_message(site: tuple[Web, str],
                                                             key: str) -> None:
    result = gql(site, NOTIFY, {"p": PHONE, "m": "hi", "k": key})
    assert codes(result) == ["INVALID_MESSAGE"] and field_of(result) == "idempotencyKey"
    assert site[0].bridge.asked == []


def test_a_good_send_reaches_the_outbox_normalised(site: tuple[Web, str]) -> None:
    w, _ = site
    result = gql(site, NOTIFY, {"p": "+1 (415) 555-2671", "m": "x" * MAX_LENGTH,
                                "k": "k" * 128})
    assert result == {"data": {"sendWhatsAppNotification": True}}
    [send] = w.bridge.asked_of(SendText)
    assert (send.phone, send.session, send.requester) == ("14155552671", "default", "ops")
    assert send.idempotency_key == "k" * 128 and not send.require_connected
    assert w.bridge.asked_of(CheckNumbers)[0].phones == ("14155552671",)
    [entry] = w.bridge.audited("mutation")
    assert entry["recipient"] == "14155552671" and entry["messageId"] == "m1"
    assert "text" not in entry and "message" not in entry


def test_a_number_known_not_to_be_on_whatsapp_is_refused_before_the_send(
        site: tuple[Web, str]) -> None:
    result = gql(site, NOTIFY, {"p": NOT_ON_WHATSAPP, "m": "hi"})
    assert codes(result) == ["NOT_ON_WHATSAPP"]
    assert result["errors"][0]["extensions"]["phoneNumber"] == NOT_ON_WHATSAPP
    assert site[0].bridge.asked_of(SendText) == []


def test_a_retried_key_whose_message_failed_is_send_failed(site: tuple[Web, str]) -> None:
    w, _ = site
    failed = record(state="FAILED", reason="REJECTED")
    w.bridge.handlers[SendText] = lambda m: Accepted("m9", "FAILED", 0.0, duplicate=True,
                                                     record=failed)
    result = gql(site, NOTIFY, {"p": PHONE, "m": "hi", "k": "once"})
    assert codes(result) == ["SEND_FAILED"]
    assert result["errors"][0]["extensions"]["messageId"] == "m9"
    assert "REJECTED" in result["errors"][0]["message"]


@pytest.mark.parametrize("valid_for", [0, -1, -(2**31)])
def test_valid_for_seconds_must_be_positive(site: tuple[Web, str], valid_for: int) -> None:
    result = gql(site, SEND, {"i": {"phoneNumber": PHONE, "message": "hi",
                                    "validForSeconds": valid_for}})
    assert codes(result) == ["INVALID_MESSAGE"] and field_of(result) == "validForSeconds"
    assert site[0].bridge.asked == []


@pytest.mark.parametrize("valid_for", [2**31, 1.5, "60", float("1e300")])
def test_valid_for_seconds_beyond_a_graphql_int_is_refused_by_graphql(
        site: tuple[Web, str], valid_for: Any) -> None:
    result = gql(site, SEND, {"i": {"phoneNumber": PHONE, "message": "hi",
                                    "validForSeconds": valid_for}})
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]
    assert site[0].bridge.asked == []


def test_send_message_returns_the_record(site: tuple[Web, str]) -> None:
    w, _ = site
    result = gql(site, SEND, {"i": {"phoneNumber": PHONE, "message": "hi", "session": None,
                                    "validForSeconds": 2**31 - 1, "idempotencyKey": "k1"}})
    message = result["data"]["sendWhatsAppMessage"]
    assert message["id"] == "m1" and message["state"] == "QUEUED"
    assert message["phoneNumber"] == PHONE and message["session"] == "default"
    assert message["duplicate"] is False and message["idempotencyKey"] == "k1"
    assert message["history"] == [{"state": "QUEUED"}]
    assert w.bridge.asked_of(SendText)[0].valid_for == float(2**31 - 1)


def test_the_connection_test_sends_only_on_a_live_connection(site: tuple[Web, str]) -> None:
    w, _ = site
    result = gql(site, "mutation { testWhatsAppConnection(phoneNumber: \"+14155552671\") }")
    assert result == {"data": {"testWhatsAppConnection": True}}
    [send] = w.bridge.asked_of(SendText)
    assert send.require_connected and send.text
    bad = gql(site, "mutation { testWhatsAppConnection(phoneNumber: \"12\") }")
    assert codes(bad) == ["INVALID_NUMBER"]


def test_a_pairing_code_needs_a_good_number_and_session(site: tuple[Web, str]) -> None:
    w, _ = site
    query = ("mutation($p: String!, $s: String) { whatsAppRequestPairingCode(phoneNumber: $p, "
             "session: $s) }")
    assert codes(gql(site, query, {"p": "not a number"})) == ["INVALID_NUMBER"]
    assert codes(gql(site, query, {"p": PHONE, "s": "../x"})) == ["INVALID_SESSION"]
    assert w.bridge.asked == []
    assert gql(site, query, {"p": PHONE})["data"] == {"whatsAppRequestPairingCode": PAIRING_CODE}
    assert w.bridge.asked_of(RequestPairingCode)[0].phone == "14155552671"


# ---- messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", [0, -1, 201, -(2**31)])
def test_a_page_size_out_of_range_is_refused(site: tuple[Web, str], first: int) -> None:
    result = gql(site, MESSAGES, {"f": first})
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"] and field_of(result) == "first"
    assert site[0].bridge.asked == []


@pytest.mark.parametrize("first", [2**31, "ten", 2.5, None])
def test_a_page_size_that_is_no_int_is_refused_or_defaulted(site: tuple[Web, str],
                                                            first: Any) -> None:
    result = gql(site, MESSAGES, {"f": first})
    if first is None:  # null means the default (20)
        assert codes(result) == [] and site[0].bridge.asked_of(ListMessages)[0].first == 20
    else:
        assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]


def test_messages_check_state_number_and_session(site: tuple[Web, str]) -> None:
    w, _ = site
    assert codes(gql(site, MESSAGES, {"st": "LOST"})) == ["GRAPHQL_VALIDATION_FAILED"]
    assert codes(gql(site, MESSAGES, {"p": "12"})) == ["INVALID_NUMBER"]
    assert codes(gql(site, MESSAGES, {"s": "a/b"})) == ["INVALID_SESSION"]
    assert w.bridge.asked == []
    page = gql(site, MESSAGES, {"s": "s1", "st": "SENT", "p": PHONE, "f": 200, "a": "c0"})
    assert page["data"]["whatsAppMessages"] == {
        "edges": [{"cursor": "c1", "node": {"id": "m1", "phoneNumber": PHONE}}],
        "pageInfo": {"hasNextPage": False, "endCursor": "c1"}}
    [asked] = w.bridge.asked_of(ListMessages)
    assert (asked.session, asked.state, asked.phone, asked.first, asked.after) == (
        "s1", "SENT", "14155552671", 200, "c0")


def test_a_missing_message_is_null(site: tuple[Web, str]) -> None:
    w, _ = site
    w.bridge.handlers[GetMessage] = lambda m: Ok(None if m.message_id == "7" else record())
    assert gql(site, "query { whatsAppMessage(id: 7) { id } }")["data"] == {
        "whatsAppMessage": None}
    assert w.bridge.asked_of(GetMessage)[-1].message_id == "7"  # an ID may be sent as an Int


BY_KEY = ("query($k: String!, $s: String) { whatsAppMessageByKey(idempotencyKey: $k, "
          "session: $s) { id idempotencyKey } }")


def test_a_send_without_a_key_is_given_one_to_find_it_by(site: tuple[Web, str]) -> None:
    """A caller told UNCERTAIN needs a key to look its message up: the gateway makes
    one when the caller gave none, per send."""
    w, _ = site
    for _ in range(2):
        assert gql(site, NOTIFY, {"p": PHONE, "m": "hi"})["data"] == {
            "sendWhatsAppNotification": True}
    keys = [m.idempotency_key for m in w.bridge.asked_of(SendText)]
    assert all(k is not None and k.startswith("auto-") for k in keys)
    assert len(set(keys)) == 2
    gql(site, "mutation { testWhatsAppConnection(phoneNumber: \"+14155552671\") }")
    assert (w.bridge.asked_of(SendText)[-1].idempotency_key or "").startswith("auto-")


def test_an_uncertain_send_names_its_key(site: tuple[Web, str]) -> None:
    w, _ = site
    w.bridge.handlers[SendText] = lambda m: Failed(
        "UNCERTAIN", "no answer", {"idempotencyKey": m.idempotency_key, "session": m.session})
    result = gql(site, NOTIFY, {"p": PHONE, "m": "hi"})
    assert codes(result) == ["UNCERTAIN"]
    key = result["errors"][0]["extensions"]["idempotencyKey"]
    assert key == w.bridge.asked_of(SendText)[0].idempotency_key


def test_a_message_is_found_by_the_callers_own_key(site: tuple[Web, str]) -> None:
    w, _ = site
    w.bridge.handlers[GetMessageByKey] = lambda m: Ok(
        record(idempotency_key=m.idempotency_key) if m.idempotency_key == "k1" else None)
    found = gql(site, BY_KEY, {"k": "k1", "s": None})["data"]["whatsAppMessageByKey"]
    assert found == {"id": "m1", "idempotencyKey": "k1"}
    [asked] = w.bridge.asked_of(GetMessageByKey)
    assert (asked.session, asked.idempotency_key, asked.requester) == ("default", "k1", "ops")
    assert gql(site, BY_KEY, {"k": "other"})["data"] == {"whatsAppMessageByKey": None}
    assert codes(gql(site, BY_KEY, {"k": ""})) == ["INVALID_MESSAGE"]
    assert codes(gql(site, BY_KEY, {"k": "k" * 129})) == ["INVALID_MESSAGE"]
    assert codes(gql(site, BY_KEY, {"k": "k1", "s": "a/b"})) == ["INVALID_SESSION"]
    assert len(w.bridge.asked_of(GetMessageByKey)) == 2


def test_finding_by_key_needs_the_send_permission_on_the_session(
        site: tuple[Web, str]) -> None:
    w, _ = site
    viewer = add_token(w.config, "watch", "viewer")
    sender = add_token(w.config, "app", "sender", sessions=("default",))
    w.bridge.handlers[GetMessageByKey] = lambda m: Ok(None)
    assert codes(w.gql(BY_KEY, {"k": "k1"}, viewer)) == ["FORBIDDEN"]
    assert codes(w.gql(BY_KEY, {"k": "k1", "s": "other"}, sender)) == ["FORBIDDEN"]
    assert w.gql(BY_KEY, {"k": "k1"}, sender)["data"] == {"whatsAppMessageByKey": None}
    assert [m.requester for m in w.bridge.asked_of(GetMessageByKey)] == ["app"]


# ---- number checks ----------------------------------------------------------------------


def test_number_checks_are_limited_per_call(site: tuple[Web, str]) -> None:
    result = gql(site, CHECK, {"n": [PHONE] * (MAX_PER_CALL + 1)})
    assert codes(result) == ["INVALID_NUMBER"] and field_of(result) == "phoneNumbers"
    assert f"at most {MAX_PER_CALL}" in result["errors"][0]["message"]
    assert codes(gql(site, CHECK, {"n": [PHONE, "nope"]})) == ["INVALID_NUMBER"]
    assert codes(gql(site, CHECK, {"n": [PHONE], "s": ""})) == ["INVALID_SESSION"]
    assert site[0].bridge.asked == []


def test_number_checks_answer_from_one_lookup_then_the_cache(site: tuple[Web, str]) -> None:
    w, _ = site
    first = gql(site, CHECK, {"n": [PHONE, NOT_ON_WHATSAPP, "0014155552671"]})
    answers = first["data"]["whatsAppCheckNumbers"]
    assert [a["onWhatsApp"] for a in answers] == [True, False, True]
    assert answers[2]["input"] == "0014155552671" and answers[2]["phoneNumber"] == PHONE
    assert not any(a["cached"] for a in answers)
    assert [m.phones for m in w.bridge.asked_of(CheckNumbers)] == [
        ("14155552671", "14155552672")]
    again = gql(site, CHECK, {"n": [PHONE]})["data"]["whatsAppCheckNumbers"]
    assert again[0]["cached"] and len(w.bridge.asked_of(CheckNumbers)) == 1


def test_number_checks_beyond_the_lookup_budget_are_rate_limited(site: tuple[Web, str]) -> None:
    gql(site, CHECK, {"n": ["+14155552601", "+14155552602", "+14155552603"]})
    result = gql(site, CHECK, {"n": ["+14155552604", "+14155552605"]})  # 5 > 4 a minute
    assert codes(result) == ["RATE_LIMITED"]
    extensions = result["errors"][0]["extensions"]
    assert extensions["scope"] == "lookup_minute" and extensions["retryAfterSeconds"] >= 1


# ---- the gateway as a whole -------------------------------------------------------------


def test_sessions_and_gateway_read_the_health_report(site: tuple[Web, str]) -> None:
    result = gql(site, "query { whatsAppSessions { session state } whatsAppGateway { "
                       "queueDepth queueBySession { session depth } dailyUsage { limit } "
                       "limits { maxMessageLength } principal { name actions } } }")
    data = result["data"]
    assert [s["session"] for s in data["whatsAppSessions"]] == ["alpha", "beta", "default"]
    gateway = data["whatsAppGateway"]
    assert gateway["queueDepth"] == 3 and gateway["limits"]["maxMessageLength"] == MAX_LENGTH
    assert gateway["principal"]["name"] == "ops" and "send" in gateway["principal"]["actions"]
