"""A send whose outcome the web tier cannot know (issue #22, H2): the outbox took no
answer back in time, so the message may be accepted. It is UNCERTAIN, never
UNAVAILABLE ("retry"), and names the idempotency key (one the gateway made, the caller
gave none) by which the caller finds the message, and with which a resend is safe.

The outbox is held with SIGSTOP (as a partition holds it: the request may be in its
socket); everything waits with a generous deadline, nothing asserts on timing."""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


HELD_CALLS = 40  # more than the 20 transmits a Thespian actor keeps in flight


def test_answers_to_calls_that_gave_up_do_not_hold_up_the_next_send(
        make_gateway: Callable[..., Gateway]) -> None:
    """A burst of sends times out while the outbox is held; when it runs again it
    answers each of them, to call helpers that gave up long ago and sit idle. Before,
    Thespian's outbox waited for each idle helper to acknowledge its answer (up to its
    5-minute transmit timeout) with only 20 transmits in flight, so the answer to the
    next send queued behind them and the gateway answered no send for minutes. Now an
    unanswered helper closes its context: those answers are refused at once."""
    gw = make_gateway({"actors": {"ask_timeout_seconds": 2.0},
                       "messages": {"send_timeout_seconds": 2.0},
                       "limits": {"per_number_per_minute": 100_000,
                                  "per_number_per_hour": 100_000},
                       "http": {"workers": 1, "threads": HELD_CALLS + 8}}).start(60)
    gw.link()
    first = gw.gql(SEND, {"i": {"phoneNumber": RECIPIENT, "message": "before"}})
    assert not first.errors, first
    outbox = int(gw.health()["processes"]["outbox"])
    gw.signal_process(outbox, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(HELD_CALLS) as pool:
            held = list(pool.map(lambda i: gw.gql(SEND, {"i": {
                "phoneNumber": RECIPIENT, "message": f"held {i}"}}, timeout=60),
                range(HELD_CALLS)))
    finally:
        gw.signal_process(outbox, signal.SIGCONT)
    codes = Counter(e["extensions"]["code"] for r in held for e in r.errors)
    assert codes == {"UNCERTAIN": HELD_CALLS}, codes
    # Once they reached the phone the outbox has answered them (or is about to): to
    # helpers that gave up. Before, its sends to the sessions queued behind those
    # answers as well, and this wait failed.
    wait_for(lambda: sum(m["text"].startswith("held ") for m in gw.inbox()) == HELD_CALLS,
             60.0, 0.5, "every held send to reach the phone")

    # Each attempt has its own key: a retry with one key could be answered from the
    # record an earlier attempt left (a duplicate) without showing the outbox answers.
    attempts = itertools.count()

    def a_send_is_answered() -> bool:
        result = gw.gql(SEND, {"i": {"phoneNumber": RECIPIENT, "message": "after",
                                     "idempotencyKey": f"after-{next(attempts)}"}})
        return not result.errors and not result.data["sendWhatsAppMessage"]["duplicate"]

    wait_for(a_send_is_answered, 30.0, 0.2, "a send after the held ones to be answered")
