"""Every error code of the public contract, seen by a client over real HTTP.

A GraphQL client programs against ``extensions.code`` and shows ``message`` to a
person, so each check asserts both: the stable code (plus its documented
extensions) and a message that says what to do. ``Gateway.post_graphql`` also
fails any response carrying a stack trace, so every request here doubles as a
check that nothing internal leaks.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable

import pytest
import requests

from tests.integration.harness import Gateway, expect_error, group_alive, wait_for

# A valid US number used where the recipient does not matter.
PHONE = "+14155550100"


def unique_text(label: str) -> str:
    """A message text no other test sends, so inbox checks cannot see another test's
    messages on a shared gateway."""
    return f"{label} {uuid.uuid4().hex}"


def texts_in_inbox(gateway: Gateway) -> list[str]:
    return [m["text"] for m in gateway.inbox()]


# ---- INVALID_NUMBER ----------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["(415) 555-2671", "+1 415 555 CALL", "+1415"],
                         ids=["no-country-code", "letters", "too-short"])
def test_invalid_number_is_rejected_before_anything_is_sent(linked_gateway: Gateway,
                                                            phone: str) -> None:
    """A wrong number must never be guessed at (it could reach a stranger): the caller
    gets INVALID_NUMBER naming the field and the fix, and nothing is sent."""
    text = unique_text("invalid number")
    for result in (linked_gateway.send(phone, text), linked_gateway.send_test(phone)):
        error = expect_error(result, "INVALID_NUMBER", "country code", phone)
        assert error["extensions"]["field"] == "phoneNumber"
    assert text not in texts_in_inbox(linked_gateway)


@pytest.mark.parametrize("phone", ["+1 (415) 555-2671", "0014155552671", "+1.415.555.2671"])
def test_common_spellings_of_a_number_are_normalised(linked_gateway: Gateway,
                                                     phone: str) -> None:
    """People paste numbers with separators or a 00 prefix; they must reach the same
    normalised recipient (the key of the per-number rate limit, too)."""
    text = unique_text("normalised")
    result = linked_gateway.send(phone, text)
    assert result.data == {"sendWhatsAppNotification": True}, result
    [message] = [m for m in linked_gateway.inbox() if m["text"] == text]
    assert message["to"] == "14155552671"


# ---- INVALID_MESSAGE ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fragments"), [
    ("", ("empty",)),
    (" \n\t  \n", ("empty",)),
    ("x" * 4097, ("4097", "4096")),
    ("\U0001f600" * 4097, ("4097", "4096")),
], ids=["empty", "whitespace-only", "4097-ascii", "4097-emoji"])
def test_invalid_message_is_rejected(linked_gateway: Gateway, text: str,
                                     fragments: tuple[str, ...]) -> None:
    """Empty or over-long texts are refused with INVALID_MESSAGE; the length counts
    Unicode code points (an emoji is one), as the contract says."""
    error = expect_error(linked_gateway.send(PHONE, text), "INVALID_MESSAGE", *fragments)
    assert error["extensions"]["field"] == "message"


def test_longest_allowed_message_is_delivered_unchanged(linked_gateway: Gateway) -> None:
    """4096 code points is the limit, not 4096 bytes or UTF-16 units: 4096 emoji (16 KB
    of UTF-8, 8192 UTF-16 units) are accepted and arrive unchanged."""
    text = "\U0001f600" * 4096
    result = linked_gateway.send("+14155550101", text)
    assert result.data == {"sendWhatsAppNotification": True}, result
    assert text in texts_in_inbox(linked_gateway)


# ---- INVALID_SESSION ---------------------------------------------------------------------


def test_session_name_cannot_escape_the_data_dir(linked_gateway: Gateway) -> None:
    """Session names become directory names: "../x" must be refused by every operation
    before it reaches the disk."""
    gw = linked_gateway
    session = "../x"
    results = [
        gw.gql("query($s: String) { whatsAppStatus(session: $s) { state } }", {"s": session}),
        gw.connect(session),
        gw.disconnect(session),
        gw.send(PHONE, "hello", session=session),
        gw.send_test(PHONE, session=session),
    ]
    for result in results:
        error = expect_error(result, "INVALID_SESSION", "session", "A-Z")
        assert error["extensions"]["field"] == "session"
    assert not (gw.data_dir / "x").exists()
    assert not (gw.data_dir.parent / "x").exists()


# ---- NOT_CONNECTED / QR_EXPIRED ----------------------------------------------------------


def test_never_linked_session_is_not_connected(linked_gateway: Gateway) -> None:
    """Sending on a session nobody linked must fail at once (not queue forever), tell
    the state, and say how to link it."""
    text = unique_text("never linked")
    for result in (linked_gateway.send(PHONE, text, session="never-linked"),
                   linked_gateway.send_test(PHONE, session="never-linked")):
        error = expect_error(result, "NOT_CONNECTED", "never-linked", "whatsAppConnect")
        assert error["extensions"]["state"] == "NEW"
    assert linked_gateway.status("never-linked")["state"] == "NEW"
    assert text not in texts_in_inbox(linked_gateway)


def test_send_after_the_pairing_window_closed_is_qr_expired(
        make_gateway: Callable[..., Gateway]) -> None:
    """A session whose QR codes all expired unscanned answers QR_EXPIRED (not a generic
    NOT_CONNECTED), so the caller knows a new pairing is needed."""
    gw = make_gateway({"qr": {"first_seconds": 0.5, "codes": 1}}).start()
    assert gw.connect().data == {"whatsAppConnect": True}
    expired = gw.wait_state("QR_EXPIRED")
    assert expired["lastError"]["code"] == "QR_EXPIRED"
    for result in (gw.send(PHONE, "hello"), gw.send_test(PHONE)):
        error = expect_error(result, "QR_EXPIRED", "whatsAppConnect")
        assert error["extensions"]["state"] == "QR_EXPIRED"
    assert gw.inbox() == []


# ---- SEND_FAILED -------------------------------------------------------------------------


def test_permanent_send_failure_is_send_failed(linked_gateway: Gateway) -> None:
    """When WhatsApp rejects a message the caller learns it (SEND_FAILED with the
    reason and the message id), and the session keeps working for the next one."""
    gw = linked_gateway
    rejected, accepted = unique_text("rejected"), unique_text("accepted")
    gw.sim("fail-next", "1", "--session", "default")
    error = expect_error(gw.send("+14155550102", rejected), "SEND_FAILED", "did not accept")
    assert error["extensions"]["reason"] == "REJECTED"
    assert error["extensions"]["messageId"]
    assert gw.send("+14155550102", accepted).data == {"sendWhatsAppNotification": True}
    texts = texts_in_inbox(gw)
    assert accepted in texts and rejected not in texts
    assert gw.status()["state"] == "CONNECTED"


# ---- GRAPHQL_VALIDATION_FAILED -----------------------------------------------------------


@pytest.mark.parametrize(("query", "fragment"), [
    ("{ whatsAppStatus { connected }", "Syntax Error"),
    ("{ whatsAppStatus { connected bogusField } }", "bogusField"),
    ("mutation { sendWhatsAppNotification(phoneNumber: \"+14155550100\") }", "message"),
], ids=["syntax-error", "unknown-field", "missing-argument"])
def test_malformed_documents_are_validation_errors(linked_gateway: Gateway, query: str,
                                                   fragment: str) -> None:
    """A broken query is the client's bug: GRAPHQL_VALIDATION_FAILED pointing at the
    problem, and no resolver runs."""
    expect_error(linked_gateway.gql(query), "GRAPHQL_VALIDATION_FAILED", fragment)


def test_broken_requests_get_json_errors_without_internals(linked_gateway: Gateway) -> None:
    """Requests that are not GraphQL at all (not JSON, oversized, mistyped variables)
    still get a JSON error with a code, never an HTML error page or a stack trace."""
    gw = linked_gateway
    not_json = gw.http.post(gw.url + "/graphql", data="query { nope", timeout=10,
                            headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 400
    assert not_json.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

    # On a connection of its own: gunicorn closes a keep-alive connection whose unread
    # body exceeds 64 KB after answering, which would break the pooled connection.
    huge = requests.post(gw.url + "/graphql", timeout=10, headers=gw.http.headers, json={
        "query": "{ whatsAppStatus { state } }", "variables": {"pad": "x" * 300_000}})
    assert huge.status_code == 413
    assert huge.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

    mistyped = gw.gql("mutation($p: String!, $m: String!) { "
                      "sendWhatsAppNotification(phoneNumber: $p, message: $m) }",
                      {"p": 14155550100, "m": "hi"})
    expect_error(mistyped, "GRAPHQL_VALIDATION_FAILED", "$p")
    for response in (not_json, huge):
        assert "Traceback" not in response.text


# ---- bad input is the caller's error, never INTERNAL --------------------------------------


def test_explicit_null_for_an_argument_with_a_default_means_the_default(
        linked_gateway: Gateway) -> None:
    """``session: null`` (or a null variable) used to reach the resolvers as None and fail
    as INTERNAL with a traceback; null for an argument that has a default is the default."""
    gw = linked_gateway
    status = gw.gql("{ whatsAppStatus(session: null) { session state } }")
    assert status.data == {"whatsAppStatus": {"session": "default", "state": "CONNECTED"}}
    status = gw.gql("query($s: String) { whatsAppStatus(session: $s) { session } }",
                    {"s": None})
    assert status.data == {"whatsAppStatus": {"session": "default"}}, status
    text = unique_text("null session")
    sent = gw.gql("mutation($m: String!) { sendWhatsAppNotification(phoneNumber: "
                  "\"+14155550102\", message: $m, session: null) }", {"m": text})
    assert sent.data == {"sendWhatsAppNotification": True}, sent
    tested = gw.gql("mutation { testWhatsAppConnection(phoneNumber: \"+14155550102\", "
                    "session: null) }")
    assert tested.data == {"testWhatsAppConnection": True}, tested
    page = gw.gql("{ whatsAppMessages(first: null, session: \"default\") { edges { cursor } "
                  "pageInfo { hasNextPage } } }")
    assert not page.errors and 1 <= len(page.data["whatsAppMessages"]["edges"]) <= 20, page
    record = gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
                    "{ session validUntil } }",
                    {"i": {"phoneNumber": "+14155550102", "message": unique_text("null input"),
                           "session": None, "validForSeconds": None}})
    assert record.data == {"sendWhatsAppMessage": {"session": "default", "validUntil": None}}
    assert text in texts_in_inbox(gw)


@pytest.mark.parametrize("query", [
    "{ " + "whatsAppStatus { " * 3000 + "state" + " }" * 3001,
    "{ whatsAppStatus(session: " + "[" * 1000 + "]" * 1000 + ") { state } }",
    "{ whatsAppStatus { ...F0 } } " + " ".join(
        f"fragment F{i} on WhatsAppStatus {{ ...F{i + 1} }}" for i in range(3000))
    + " fragment F3000 on WhatsAppStatus { state }",
    "{ whatsAppStatus { ...F0 } } " + " ".join(
        f"fragment F{i} on WhatsAppStatus {{ ...F{i + 1} }}" for i in range(600))
    + " fragment F600 on WhatsAppStatus { state }",
], ids=["3000-levels", "1000-nested-lists", "3000-fragment-chain", "600-fragment-chain"])
def test_deeply_nested_documents_are_validation_errors(linked_gateway: Gateway,
                                                       query: str) -> None:
    """graphql-core parses and validates by recursion: these used to end in RecursionError
    (INTERNAL, or an HTTP 500). They are the client's mistake: GRAPHQL_VALIDATION_FAILED."""
    response = linked_gateway.post_graphql({"query": query})
    assert response.status_code == 200, response.text[:300]
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", error
    assert "deep" in error["message"], error
    assert linked_gateway.status()["state"] == "CONNECTED"


@pytest.mark.parametrize(("query", "variables"), [
    ("mutation($m: String!) { sendWhatsAppNotification(phoneNumber: \"+14155550103\", "
     "message: $m) }", {"m": "lone \ud800 surrogate"}),
    ("mutation($k: String!) { sendWhatsAppNotification(phoneNumber: \"+14155550103\", "
     "message: \"hi\", idempotencyKey: $k) }", {"k": "key \udc00"}),
    ("query($id: ID!) { whatsAppMessage(id: $id) { id } }", {"id": "\ud83d"}),
], ids=["message", "idempotency-key", "message-id"])
def test_unpaired_surrogates_are_refused_before_any_actor_sees_them(
        linked_gateway: Gateway, query: str, variables: dict[str, str]) -> None:
    """JSON can spell a lone UTF-16 surrogate; SQLite cannot store it, so the outbox
    failed on it (INTERNAL, or UNAVAILABLE while it restarted). Refused at the door."""
    gw = linked_gateway
    response = gw.post_graphql({"query": query, "variables": variables})
    assert response.status_code == 400, response.text[:300]
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "surrogate" in error["message"] and "valid Unicode" in error["message"]
    ok = gw.send("+14155550103", unique_text("after a surrogate"))
    assert ok.data == {"sendWhatsAppNotification": True}, ok


@pytest.mark.parametrize(("value", "code", "fragment"), [
    (0, "INVALID_MESSAGE", "1 to 2147483647"), (-5, "INVALID_MESSAGE", "1 to 2147483647"),
    (2**31, "GRAPHQL_VALIDATION_FAILED", "32-bit"), (1.5, "GRAPHQL_VALIDATION_FAILED", "Int"),
])
def test_valid_for_seconds_outside_its_range_is_refused(linked_gateway: Gateway, value: object,
                                                        code: str, fragment: str) -> None:
    result = linked_gateway.gql(
        "mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) { id } }",
        {"i": {"phoneNumber": PHONE, "message": "x", "validForSeconds": value}})
    expect_error(result, code, fragment)


@pytest.mark.parametrize("first", [0, -1, 201, 2**31 - 1])
def test_page_size_outside_its_range_is_refused(linked_gateway: Gateway, first: int) -> None:
    result = linked_gateway.gql("query($f: Int) { whatsAppMessages(first: $f) { edges "
                                "{ cursor } } }", {"f": first})
    expect_error(result, "GRAPHQL_VALIDATION_FAILED", "first", "1 to 200")


# ---- UNAVAILABLE -------------------------------------------------------------------------


def test_dead_supervisor_is_unavailable_and_stop_still_cleans_up(
        make_gateway: Callable[..., Gateway]) -> None:
    """If the actor tree stops answering under a running web server, callers must get a
    fast, explicit UNAVAILABLE (and load balancers a 503), not hang or see a 500; and
    the launcher must still stop cleanly, leaving no process behind."""
    gw = make_gateway({"actors": {"ask_timeout_seconds": 1.0}}).start()
    supervisor = gw.health()["processes"]["supervisor"]
    gw.signal_process(supervisor, signal.SIGKILL)
    wait_for(lambda: gw.http.get(gw.url + "/readyz", timeout=10).status_code == 503, 10,
             message="readiness to fail")
    # whatsAppStatus reads the supervisor's snapshot file while it is fresh (a few
    # seconds); once the heartbeat stops, it asks the actors and must say UNAVAILABLE.
    wait_for(lambda: gw.gql("{ whatsAppStatus { connected } }").error_code == "UNAVAILABLE",
             15, message="status to stop trusting the stale snapshot")

    ready = gw.http.get(gw.url + "/readyz", timeout=10)
    assert ready.json()["status"] == "unavailable"
    assert gw.http.get(gw.url + "/healthz", timeout=10).status_code == 200  # web is alive
    health = gw.http.get(gw.url + "/admin/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    for result in (gw.gql("{ whatsAppStatus { connected } }"), gw.connect(),
                   gw.send(PHONE, "hello")):
        expect_error(result, "UNAVAILABLE", "not answering", "retry")
    for response in (ready, health):
        assert "Traceback" not in response.text

    # The launcher's stop path must cope with a tree that is already broken:
    # exit code 0 and no process left of either group (stop() asserts both).
    gw.stop()


def test_dead_actor_system_stops_the_launcher_for_a_restart(
        make_gateway: Callable[..., Gateway]) -> None:
    """Without its actor system the gateway can do nothing: the launcher must notice,
    stop the web server and exit non-zero, so that systemd (or the container runtime)
    restarts the whole gateway, rather than answer UNAVAILABLE forever."""
    gw = make_gateway().start()
    state = gw.run_state()
    assert state is not None
    actor_pgid = int(state["actor_pgid"])
    gw.kill_processes(actor_pgid)
    assert gw.process is not None
    code = gw.process.wait(30)
    gw.process = None
    assert code == 1
    wait_for(lambda: not any(group_alive(g) for g in gw.groups), 10,
             message="every process of the gateway to be gone")
    assert "the actor system died" in gw.log_tail()
