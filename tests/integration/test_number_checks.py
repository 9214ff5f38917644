"""Is this number on WhatsApp? Asked through the API, answered by the simulated
service (which knows which numbers are registered), cached on disk, rate-limited per
session; a send to a number known not to be on WhatsApp is refused at once.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.transport.simulator import SimulatorServer
from tests.integration.harness import Gateway, expect_error, wait_for
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.integration

REGISTERED = "4915112345001"
UNREGISTERED = "4915112345002"
CHECK = ("query($p: [String!]!, $s: String) { whatsAppCheckNumbers(phoneNumbers: $p, "
         "session: $s) { input phoneNumber onWhatsApp jid lid business checkedAt cached "
         "reason } }")


def check(gw: Gateway, *phones: str) -> list[dict[str, Any]]:
    result = gw.gql(CHECK, {"p": list(phones)})
    assert not result.errors, result
    return result.data["whatsAppCheckNumbers"]


def lookups(gw: Gateway) -> int:
    server = SimulatorServer(gw.data_dir)
    try:
        return server.lookup_count()
    finally:
        server.close()


def first_history_reason(gw: Gateway, message_id: str) -> str | None:
    result = gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { history { state reason } } }",
                    {"id": message_id})
    assert not result.errors, result
    entry = result.data["whatsAppMessage"]["history"][0]
    assert entry["state"] == "QUEUED"
    return entry["reason"]


def send_message(gw: Gateway, phone: str, text: str) -> Any:
    return gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
                  "{ id state } }", {"i": {"phoneNumber": f"+{phone}", "message": text}})


def test_check_numbers_tells_registered_from_unregistered_numbers(
        make_gateway: Any) -> None:
    gw = make_gateway().start()
    gw.link()
    gw.sim("unregister", UNREGISTERED)
    first = check(gw, f"+{REGISTERED}", f"+{UNREGISTERED}")
    assert [(c["phoneNumber"], c["onWhatsApp"], c["cached"]) for c in first] == [
        (f"+{REGISTERED}", True, False), (f"+{UNREGISTERED}", False, False)]
    assert first[0]["jid"] == f"{REGISTERED}@s.whatsapp.net" and first[0]["lid"]
    assert first[0]["checkedAt"] and first[1]["jid"] is None
    assert first[0]["input"] == f"+{REGISTERED}"
    assert lookups(gw) == 1, "two numbers, one batched lookup"
    again = check(gw, REGISTERED, UNREGISTERED)
    assert [(c["onWhatsApp"], c["cached"]) for c in again] == [(True, True), (False, True)]
    assert lookups(gw) == 1, "cached answers cost no lookup"
    samples = scrape(gw)
    assert value(samples, "wagate_number_lookups_total", outcome="on_whatsapp") == 1
    assert value(samples, "wagate_number_lookups_total", outcome="not_on_whatsapp") == 1
    assert value(samples, "wagate_number_cache_hits_total") == 2


def test_send_to_number_not_on_whatsapp_is_refused_at_once(make_gateway: Any) -> None:
    gw = make_gateway().start()
    gw.link()
    gw.sim("unregister", UNREGISTERED)
    refused = expect_error(gw.send(f"+{UNREGISTERED}", "your code is 1234"),
                           "NOT_ON_WHATSAPP", "fall back")
    assert refused["extensions"]["phoneNumber"] == f"+{UNREGISTERED}"
    expect_error(send_message(gw, UNREGISTERED, "code 1234"), "NOT_ON_WHATSAPP")
    accepted = send_message(gw, REGISTERED, "code 5678")
    assert not accepted.errors, accepted
    assert first_history_reason(gw, accepted.data["sendWhatsAppMessage"]["id"]) is None
    assert [m["to"] for m in gw.inbox()] == [REGISTERED]
    listed = gw.gql("{ whatsAppMessages { edges { node { phoneNumber } } } }")
    assert [e["node"]["phoneNumber"] for e in listed.data["whatsAppMessages"]["edges"]] == [
        f"+{REGISTERED}"], "a refused send stores nothing"


def test_unregistered_number_gets_the_message_acked_but_never_delivered(
        make_gateway: Any) -> None:
    gw = make_gateway({"delivery": {"check_recipient": False}}).start()
    gw.link()
    gw.sim("unregister", UNREGISTERED)
    gw.sim("auto-receipt", "delivered")
    sent = send_message(gw, UNREGISTERED, "hello")
    assert not sent.errors and sent.data["sendWhatsAppMessage"]["state"] == "SENT", sent
    assert gw.inbox() == []
    gw.sim("register", UNREGISTERED)
    assert not send_message(gw, UNREGISTERED, "hello again").errors
    assert [m["to"] for m in gw.inbox()] == [UNREGISTERED]


def test_cached_answers_survive_a_restart_and_expire_after_their_ttl(
        make_gateway: Any) -> None:
    # A "no" lives a moment (shrunk), a "yes" a week: the TTLs are separate.
    gw = make_gateway({"numbers": {"negative_ttl_hours": 2 / 3600}}).start()
    gw.link()
    gw.sim("unregister", UNREGISTERED)
    check(gw, REGISTERED, UNREGISTERED)
    gw.stop()
    gw.start()
    gw.wait_state("CONNECTED")
    answers = check(gw, REGISTERED)
    assert answers[0]["cached"] and answers[0]["onWhatsApp"] is True
    assert lookups(gw) == 1
    gw.sim("register", UNREGISTERED)  # the number joined WhatsApp
    fresh = wait_for(lambda: (c := check(gw, UNREGISTERED)[0])["onWhatsApp"] and c, 30.0,
                     interval=0.3, message="the negative answer to expire")
    assert not fresh["cached"] and check(gw, REGISTERED)[0]["cached"]


def test_delivery_receipt_clears_a_stale_negative_answer(make_gateway: Any) -> None:
    # Without the pre-send check, as a message accepted before the "no" was cached.
    gw = make_gateway({"delivery": {"check_recipient": False}}).start()
    gw.link()
    gw.sim("unregister", UNREGISTERED)
    assert check(gw, UNREGISTERED)[0]["onWhatsApp"] is False
    gw.sim("register", UNREGISTERED)  # the number joined WhatsApp
    gw.sim("auto-receipt", "delivered")
    message_id = send_message(gw, UNREGISTERED, "hi").data["sendWhatsAppMessage"]["id"]
    wait_for(lambda: gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { state } }",
                            {"id": message_id}).data["whatsAppMessage"]["state"] == "DELIVERED",
             20.0, message="the delivery receipt")
    answer = check(gw, UNREGISTERED)[0]
    assert answer["onWhatsApp"] is True and not answer["cached"]


def test_lookups_are_rate_limited_per_session_but_cache_hits_are_free(
        make_gateway: Any) -> None:
    gw = make_gateway({"numbers": {"per_session_per_minute": 3}}).start()
    gw.link()
    assert len(check(gw, "4915112345101", "4915112345102", "4915112345103")) == 3
    refused = expect_error(gw.gql(CHECK, {"p": ["4915112345104"]}), "RATE_LIMITED",
                           "numbers.per_session_per_minute")
    assert refused["extensions"]["scope"] == "lookup_minute"
    assert 1 <= refused["extensions"]["retryAfterSeconds"] <= 60
    assert all(c["cached"] for c in check(gw, "4915112345101", "4915112345103"))
    # A send never waits for a spent budget: its recipient is simply unknown.
    assert not gw.send("+4915112345105", "hi").errors
    assert lookups(gw) == 1


def test_check_numbers_refuses_more_numbers_than_allowed_per_call(make_gateway: Any) -> None:
    gw = make_gateway({"numbers": {"max_per_call": 2}}).start()
    expect_error(gw.gql(CHECK, {"p": ["4915112345101"] * 3}), "INVALID_NUMBER",
                 "numbers.max_per_call")
    expect_error(gw.gql(CHECK, {"p": ["not a number"]}), "INVALID_NUMBER")


def test_lookup_that_times_out_does_not_block_the_send(make_gateway: Any) -> None:
    gw = make_gateway({"numbers": {"timeout_seconds": 0.5}}).start()
    gw.link()
    gw.sim("unregister", UNREGISTERED)
    server = SimulatorServer(gw.data_dir)
    try:
        server.lookup_delay(60.0)
    finally:
        server.close()
    answer = check(gw, UNREGISTERED)[0]
    assert answer["onWhatsApp"] is None and answer["reason"] == "TIMEOUT", answer
    sent = send_message(gw, REGISTERED, "code 1")
    assert not sent.errors, sent
    assert [m["to"] for m in gw.inbox()] == [REGISTERED]
    # The send went ahead, and its record says its recipient was never confirmed.
    assert first_history_reason(gw, sent.data["sendWhatsAppMessage"]["id"]) == \
        "RECIPIENT_UNKNOWN_TIMEOUT"


def test_lookup_without_a_connection_is_unknown_and_the_send_is_queued(
        make_gateway: Any) -> None:
    gw = make_gateway().start()
    gw.link()
    gw.sim("drop", "--down-for", "60")
    gw.wait_state("RECONNECTING")
    answer = check(gw, REGISTERED)[0]
    assert answer["onWhatsApp"] is None and answer["reason"] == "NOT_CONNECTED", answer
    queued = send_message(gw, REGISTERED, "later")
    assert not queued.errors and queued.data["sendWhatsAppMessage"]["state"] == "QUEUED"
    assert first_history_reason(gw, queued.data["sendWhatsAppMessage"]["id"]) == \
        "RECIPIENT_UNKNOWN_NOT_CONNECTED"


def test_sim_cli_register_and_unregister_validate_the_number(make_gateway: Any) -> None:
    gw = make_gateway()
    # Refused for the number itself, before any gateway or data_dir is looked for.
    for command in ("unregister", "register"):
        done = gw.sim(command, "12ab", check=False)
        assert done.returncode == 2 and "phone number" in done.stderr, done.stderr
    gw.start()
    assert "no longer" in gw.sim("unregister", f"+{UNREGISTERED}").stdout
    assert f"+{UNREGISTERED} is on" in gw.sim("register", UNREGISTERED).stdout
