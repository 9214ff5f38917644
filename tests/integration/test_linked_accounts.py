"""What is accepted for one linked device ends with it: a logout fails the session's
queue (SESSION_LOGGED_OUT), and a message is only ever sent from the account that
was linked when it was accepted (ACCOUNT_CHANGED), over real HTTP against real
processes and the simulated service."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from actors.session.sealed_store import generate_key_text
from tests.integration.harness import Gateway, wait_for

# Between reconnect attempts for the whole test: sends queue instead of failing.
SLOW_RECONNECT = {"reconnect": {"attempts": 5, "delay_seconds": 30.0, "first_delay_seconds": 30.0},
                  "delivery": {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0,
                               "tick_seconds": 0.2}}
MESSAGE = ("mutation($input: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $input) "
           "{ id state } }")
GET_MESSAGE = "query($id: ID!) { whatsAppMessage(id: $id) { id state reason error attempts } }"
RECIPIENT = "+14155552671"
OTHER_PHONE = "19995550123"


def queue_message(gw: Gateway, text: str, session: str = "default") -> str:
    result = gw.gql(MESSAGE, {"input": {"phoneNumber": RECIPIENT, "message": text,
                                        "session": session}})
    assert not result.errors, result
    assert result.data["sendWhatsAppMessage"]["state"] == "QUEUED", result
    return result.data["sendWhatsAppMessage"]["id"]


def queue_message_sent(gw: Gateway, text: str) -> str:
    result = gw.gql(MESSAGE, {"input": {"phoneNumber": RECIPIENT, "message": text}})
    assert not result.errors, result
    return result.data["sendWhatsAppMessage"]["state"]


def message(gw: Gateway, message_id: str) -> dict[str, Any]:
    result = gw.gql(GET_MESSAGE, {"id": message_id})
    assert not result.errors, result
    return result.data["whatsAppMessage"]


def wait_failed(gw: Gateway, message_id: str, reason: str) -> dict[str, Any]:
    return wait_for(lambda: (m := message(gw, message_id))["state"] == "FAILED" and m, 20,
                    message=f"message {message_id} to fail with {reason}")


def reconnecting(gw: Gateway) -> None:
    """The linked session loses its connection and waits (30 s) for its next attempt."""
    gw.sim("drop", "--down-for", "120")
    gw.wait_state("RECONNECTING", timeout=10)


def relink_with_another_phone(gw: Gateway) -> None:
    gw.sim("restore")
    assert gw.connect().data == {"whatsAppConnect": True}
    gw.wait_state("QR_PENDING", timeout=20)
    gw.sim("scan", "--phone", f"+{OTHER_PHONE}")
    assert gw.wait_state("CONNECTED", timeout=20)["phoneNumber"] == f"+{OTHER_PHONE}"


def test_a_logout_fails_the_queue_and_the_next_account_sends_none_of_it(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(SLOW_RECONNECT).start()
    first_phone = gw.link()["phoneNumber"]
    reconnecting(gw)
    queued = queue_message(gw, "queued for the first phone")

    assert gw.disconnect().data == {"whatsAppDisconnect": True}
    gw.wait_state("LOGGED_OUT", timeout=20)
    failed = wait_failed(gw, queued, "SESSION_LOGGED_OUT")
    assert failed["reason"] == "SESSION_LOGGED_OUT" and failed["attempts"] == 0
    assert "whatsAppConnect" in failed["error"]
    wait_for(lambda: gw.health()["queue"]["depth"] == 0, 10, message="an empty queue")

    relink_with_another_phone(gw)
    assert queue_message_sent(gw, "for the second phone") == "SENT"
    inbox = gw.inbox()
    assert [m["text"] for m in inbox] == ["for the second phone"], inbox
    assert inbox[0]["from"] == OTHER_PHONE and f"+{OTHER_PHONE}" != first_phone
    assert message(gw, queued)["state"] == "FAILED"


def test_a_logout_from_the_phone_also_ends_the_queue(
        make_gateway: Callable[..., Gateway]) -> None:
    """The phone unlinks the device while the session is between reconnect attempts:
    the next attempt learns it (LOGGED_OUT) and the queue ends with the device."""
    gw = make_gateway({"reconnect": {"attempts": 30, "delay_seconds": 1.0}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "120")
    gw.wait_state("RECONNECTING", timeout=10)
    queued = queue_message(gw, "queued before the phone unlinked")
    gw.sim("logout")
    gw.sim("restore")
    gw.wait_state("LOGGED_OUT", timeout=30)
    assert wait_failed(gw, queued, "SESSION_LOGGED_OUT")["reason"] == "SESSION_LOGGED_OUT"
    relink_with_another_phone(gw)
    assert gw.inbox() == []


def test_a_queued_message_is_never_sent_from_credentials_replaced_behind_the_gateway(
        make_gateway: Callable[..., Gateway]) -> None:
    """No logout the gateway could see: the session's credentials vanished while it
    was stopped and another phone linked the name. The queued message was accepted for
    the first account; the session refuses to send it from the second."""
    gw = make_gateway(SLOW_RECONNECT).start()
    first_phone = gw.link()["phoneNumber"]
    reconnecting(gw)
    queued = queue_message(gw, "queued for the first phone")
    gw.stop()
    shutil.rmtree(gw.data_dir / "sessions" / "default")

    gw.start()
    gw.sim("restore")
    gw.wait_state("QR_PENDING", timeout=30)  # no credentials: it pairs anew by itself
    gw.sim("scan", "--phone", f"+{OTHER_PHONE}")
    assert gw.wait_state("CONNECTED", timeout=20)["phoneNumber"] == f"+{OTHER_PHONE}"
    failed = wait_failed(gw, queued, "ACCOUNT_CHANGED")
    assert failed["reason"] == "ACCOUNT_CHANGED", failed
    assert first_phone in failed["error"] and f"+{OTHER_PHONE}" in failed["error"]
    assert gw.inbox() == []
    assert queue_message_sent(gw, "from the new account") == "SENT"
    assert [m["from"] for m in gw.inbox()] == [OTHER_PHONE]


def test_a_logout_deletes_credentials_the_session_cannot_read(
        make_gateway: Callable[..., Gateway]) -> None:
    """The key was changed under a running gateway: the session cannot open its
    stores (STORE_UNAVAILABLE). A logout must still end the link here: LOGGED_OUT,
    credentials deleted, so no later start with the right key resumes the device."""
    gw = make_gateway().start()
    gw.link()
    gw.disconnect(keep_session=True)
    gw.wait_state("DISCONNECTED")
    right_key = gw.key_file.read_text()
    gw.key_file.write_text(generate_key_text() + "\n")
    try:
        wait_for(lambda: not gw.connect().errors, 20, message="a connect to be accepted")
        failed = gw.wait_state("FAILED", timeout=20)
        assert failed["lastError"]["code"] == "STORE_UNAVAILABLE", failed
        assert gw.disconnect().data == {"whatsAppDisconnect": True}
        gw.wait_state("LOGGED_OUT", timeout=20)
        wait_for(lambda: not gw.credentials_path().exists(), 20,
                 message="the unreadable credentials to be deleted")
    finally:
        gw.key_file.write_text(right_key)
    assert gw.connect().data == {"whatsAppConnect": True}
    gw.wait_state("QR_PENDING", timeout=20)  # nothing left to resume
