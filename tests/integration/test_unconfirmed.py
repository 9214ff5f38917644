"""Messages WhatsApp's server took but no device of the recipient's confirmed.

A send's ack only says the server has the message: the real engine skips recipient
devices it fails to encrypt for (whatsmeow ``encryptMessageForDevices`` logs a warning
and goes on), and the server may answer with an error ack. A message that stays SENT
past ``delivery.unconfirmed_after_seconds`` is flagged on its record
(``deliveryUnconfirmed``), counted on /metrics and named in a health warning, until a
receipt arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.harness import Gateway, wait_for
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.integration

RECIPIENT = "4915112345001"
AFTER_SECONDS = 1.0


def record(gw: Gateway, message_id: str) -> dict[str, Any]:
    result = gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { state deliveryUnconfirmed "
                    "} }", {"id": message_id})
    assert not result.errors, result
    return result.data["whatsAppMessage"]


def unconfirmed_metric(gw: Gateway) -> float:
    return scrape(gw)["wagate_messages_unconfirmed"].get((("session", "default"),), 0.0)


def test_a_message_sent_without_a_receipt_is_flagged_until_one_arrives(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"delivery": {"unconfirmed_after_seconds": AFTER_SECONDS}}).start()
    gw.link()
    result = gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
                    "{ id } }", {"i": {"phoneNumber": f"+{RECIPIENT}", "message": "no receipt"}})
    assert not result.errors, result
    message = result.data["sendWhatsAppMessage"]["id"]
    wait_for(lambda: record(gw, message)["state"] == "SENT", 15.0,
                     message="the message to be SENT")
    wait_for(lambda: record(gw, message)["deliveryUnconfirmed"], 15.0,
             message="the SENT message to be flagged")
    health = gw.health()
    (warning,) = [w for w in health["warnings"] if w["code"] == "DELIVERY_UNCONFIRMED"]
    assert warning["session"] == "default" and warning["count"] == 1
    assert "deliveryUnconfirmed" in warning["message"]
    (session,) = [s for s in health["sessions"] if s["session"] == "default"]
    assert session["unconfirmedMessages"] == 1
    assert unconfirmed_metric(gw) == 1.0

    wa_id = wait_for(lambda: [m["id"] for m in gw.inbox() if m["text"] == "no receipt"], 15.0,
                     message="the message in the simulated inbox")[0]
    gw.sim("receipt", wa_id)
    wait_for(lambda: record(gw, message)["state"] == "DELIVERED", 15.0,
             message="the receipt to count")
    assert record(gw, message)["deliveryUnconfirmed"] is False
    assert [w for w in gw.health()["warnings"] if w["code"] == "DELIVERY_UNCONFIRMED"] == []
    assert unconfirmed_metric(gw) == 0.0


FORGET = "mutation($s: String!) { whatsAppForgetSession(session: $s) }"


def test_a_forgotten_session_leaves_no_unconfirmed_warning_behind(
        make_gateway: Callable[..., Gateway]) -> None:
    """A session removed with whatsAppForgetSession is gone from whatsAppStatus and
    /admin/health's sessions; its SENT records stay until retention (168 h), and they
    must not keep a DELIVERY_UNCONFIRMED warning and a metric naming it."""
    gw = make_gateway({"delivery": {"unconfirmed_after_seconds": AFTER_SECONDS}}).start()
    gw.link("s1")
    result = gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
                    "{ id } }", {"i": {"phoneNumber": f"+{RECIPIENT}", "message": "gone",
                                       "session": "s1"}})
    assert not result.errors, result
    message = result.data["sendWhatsAppMessage"]["id"]
    wait_for(lambda: record(gw, message)["deliveryUnconfirmed"], 15.0,
             message="the SENT message to be flagged")
    assert [w["session"] for w in gw.health()["warnings"]
            if w["code"] == "DELIVERY_UNCONFIRMED"] == ["s1"]

    assert gw.disconnect("s1").data == {"whatsAppDisconnect": True}  # log out
    gw.wait_state("LOGGED_OUT", "s1")
    wait_for(lambda: gw.gql(FORGET, {"s": "s1"}).data == {"whatsAppForgetSession": True}, 20,
             message="s1 to be forgettable once its process exited")
    wait_for(lambda: "s1" not in [s["session"] for s in gw.health()["sessions"]], 15.0,
             message="s1 gone from health")
    assert [w for w in gw.health()["warnings"] if w["code"] == "DELIVERY_UNCONFIRMED"] == []
    assert (("session", "s1"),) not in scrape(gw).get("wagate_messages_unconfirmed", {})
