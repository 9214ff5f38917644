"""A send whose outcome the web tier cannot know (issue #22, H2): the outbox took no
answer back in time, so the message may be accepted. It is UNCERTAIN, never
UNAVAILABLE ("retry"), and names the idempotency key (one the gateway made, the caller
gave none) by which the caller finds the message, and with which a resend is safe.

The outbox is held with SIGSTOP (as a partition holds it: the request may be in its
socket); everything waits with a generous deadline, nothing asserts on timing."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.harness import Gateway, wait_for

pytestmark = pytest.mark.integration

RECIPIENT = "+4915112345009"
SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
        "{ id duplicate idempotencyKey } }")
BY_KEY = ("query($k: String!) { whatsAppMessageByKey(idempotencyKey: $k) "
          "{ id state idempotencyKey } }")


def by_key(gw: Gateway, key: str) -> dict[str, Any] | None:
    result = gw.gql(BY_KEY, {"k": key})
    assert not result.errors, result
    return result.data["whatsAppMessageByKey"]  # type: ignore[no-any-return]


def test_a_send_held_in_the_outbox_is_uncertain_and_found_by_its_key(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"actors": {"ask_timeout_seconds": 1.0},
                       "messages": {"send_timeout_seconds": 2.0}}).start(60)
    gw.link()
    first = gw.gql(SEND, {"i": {"phoneNumber": RECIPIENT, "message": "before"}})
    assert not first.errors, first  # the web tier knows the outbox's address now
    assert first.data["sendWhatsAppMessage"]["idempotencyKey"].startswith("auto-")
    outbox = int(gw.health()["processes"]["outbox"])
    gw.signal_process(outbox, signal.SIGSTOP)
    try:
        held = gw.gql(SEND, {"i": {"phoneNumber": RECIPIENT, "message": "held"}}, timeout=60)
    finally:
        gw.signal_process(outbox, signal.SIGCONT)
    [error] = held.errors
    assert error["extensions"]["code"] == "UNCERTAIN", held
    key = error["extensions"]["idempotencyKey"]
    assert key.startswith("auto-") and error["extensions"]["session"] == "default"

    found = wait_for(lambda: by_key(gw, key), 30.0, message="the held message by its key")
    assert found is not None and found["idempotencyKey"] == key
    again = gw.gql(SEND, {"i": {"phoneNumber": RECIPIENT, "message": "held",
                                "idempotencyKey": key}})
    assert not again.errors, again
    assert again.data["sendWhatsAppMessage"] == {"id": found["id"], "duplicate": True,
                                                 "idempotencyKey": key}
    wait_for(lambda: by_key(gw, key)["state"] in ("SENT", "DELIVERED"), 30.0,  # type: ignore[index]
             message="the held message to be sent")
    assert [m["text"] for m in gw.inbox()].count("held") == 1  # sent once, not twice
