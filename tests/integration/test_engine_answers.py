"""What the engine's answers to a send make of a message, end to end: WhatsApp's 429 on
the recipient lookup pauses the session without costing attempts; a number without an
account fails NOT_ON_WHATSAPP and is remembered (docs/engine-behaviour.md). The
simulator answers as the real engine's errors are mapped (actors.transport.neonize)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from tests.integration.harness import Gateway
from tests.integration.test_delivery import (
    FAST_DELIVERY,
    PHONE,
    get_message,
    send_message,
    texts,
    wait_message_state,
)
from tests.integration.test_metrics import scrape, value

PAUSE = 1.0  # delivery.rate_overlimit_pause_seconds, shrunk


def _at(entry: dict[str, str]) -> float:
    return datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()


def test_whatsapps_429_pauses_the_session_with_backoff_and_costs_no_attempt(
        make_gateway: Callable[..., Gateway]) -> None:
    """Three lookups answered 429 in a row, with only 2 attempts allowed: before, each
    counted as a failed attempt and the message FAILED; now it waits out a pause that
    doubles (up to the max), and its one real attempt sends it."""
    gw = make_gateway({"delivery": {**FAST_DELIVERY["delivery"], "max_attempts": 2,
                                    "rate_overlimit_pause_seconds": PAUSE,
                                    "rate_overlimit_max_pause_seconds": 2 * PAUSE}}).start()
    gw.link()
    gw.sim("fail-next", "3", "--rate-overlimit")
    accepted = send_message(gw, "after the pause")
    assert accepted["state"] == "QUEUED"  # the waiting caller hears it is queued
    sent = wait_message_state(gw, accepted["id"], "SENT", timeout=30)
    assert sent["attempts"] == 1
    assert texts(gw) == ["after the pause"]
    history = sent["history"]
    paused = [i for i, h in enumerate(history) if h["reason"] == "RATE_OVERLIMIT"]
    assert len(paused) == 3
    gaps = [_at(history[i + 1]) - _at(history[i]) for i in paused]
    assert [history[i + 1]["state"] for i in paused] == ["SENDING"] * 3
    # the session sent nothing while paused: PAUSE, then doubled, capped at the max
    for gap, pause in zip(gaps, (PAUSE, 2 * PAUSE, 2 * PAUSE), strict=True):
        assert gap >= pause - 0.01, (gaps, history)
    assert value(scrape(gw), "wagate_rate_limited_total", scope="whatsapp") == 3

    # A connection test is never sent later: it fails at once, saying when to retry.
    gw.sim("fail-next", "1", "--rate-overlimit")
    test = gw.send_test(PHONE)
    assert test.error_code == "RATE_LIMITED", test
    extensions = test.errors[0]["extensions"]
    assert extensions["reason"] == "RATE_OVERLIMIT"
    assert extensions["retryAfterSeconds"] >= 1
    gw.stop()


def test_a_number_without_whatsapp_fails_not_on_whatsapp_and_is_remembered(
        make_gateway: Callable[..., Gateway]) -> None:
    """The engine's "no LID found ... from server": before, a generic REJECTED; now
    NOT_ON_WHATSAPP, and the number cache learns it, so the next send to that number
    is refused before it is even stored."""
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    gw.sim("fail-next", "1", "--no-account")
    failed = gw.send(PHONE, "to nobody")
    assert failed.error_code == "NOT_ON_WHATSAPP", failed
    extensions = failed.errors[0]["extensions"]
    assert extensions["reason"] == "NOT_ON_WHATSAPP"
    assert extensions["phoneNumber"] == "14155552671"
    record = get_message(gw, extensions["messageId"])
    assert record is not None
    assert (record["state"], record["reason"]) == ("FAILED", "NOT_ON_WHATSAPP")

    again = gw.send(PHONE, "to nobody, again")
    assert again.error_code == "NOT_ON_WHATSAPP", again
    assert again.errors[0]["extensions"]["checkedAt"]  # the cached answer, not a send
    assert "messageId" not in again.errors[0]["extensions"]
    assert texts(gw) == []
    gw.stop()
