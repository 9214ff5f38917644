"""Ban-risk pacing end to end, on the simulator: intervals between a session's sends,
"typing..." before each, and the warm-up cap of a newly linked device.

The intervals are read from what the simulated recipients got (``wagate sim inbox``
timestamps, with a tolerance for the simulator's own latency) and from the records'
history (the outbox's dispatch times), never from how long the test waited.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gateway.core.config import PacingConfig
from tests.integration.harness import Gateway, expect_error, wait_for

pytestmark = pytest.mark.integration

DEFAULTS = dataclasses.asdict(PacingConfig())  # the real engine's defaults
LATENCY = 0.3  # how much the simulator's delivery of two sends may differ in delay
RECIPIENTS = [f"49151123450{n:02d}" for n in range(5)]


def send_all(gw: Gateway, messages: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Send every (phone, text) at once, each request on its own thread, as
    applications do; returns the records as accepted."""
    def one(item: tuple[str, str]) -> dict[str, Any]:
        phone, text = item
        result = gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage("
                        "input: $i) { id acceptedAt } }",
                        {"i": {"phoneNumber": f"+{phone}", "message": text}}, timeout=60.0)
        assert not result.errors, result
        return {**result.data["sendWhatsAppMessage"], "phone": phone, "text": text}

    with ThreadPoolExecutor(len(messages)) as pool:
        return list(pool.map(one, messages))


def delivered(gw: Gateway, count: int) -> list[dict[str, Any]]:
    """The simulated inbox once ``count`` messages arrived, by arrival time."""
    inbox = wait_for(lambda: (box := gw.inbox()) and len(box) >= count and box, 60.0,
                     message=f"{count} messages in the simulated inbox")
    return sorted(inbox, key=lambda m: m["time"])


def dispatch_times(gw: Gateway, message_ids: list[str]) -> list[float]:
    """When the outbox handed each message to the session (its history's SENDING)."""
    times = []
    for message_id in message_ids:
        result = gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { history { state at } } }",
                        {"id": message_id})
        (sending,) = [h["at"] for h in result.data["whatsAppMessage"]["history"]
                      if h["state"] == "SENDING"]
        times.append(_seconds(sending))
    return sorted(times)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def paced(make_gateway: Callable[..., Gateway]) -> Callable[..., Gateway]:
    def start(pacing: dict[str, Any]) -> Gateway:
        gw = make_gateway({"pacing": pacing, "http": {"threads": 16},
                           "messages": {"send_timeout_seconds": 30.0}}).start()
        gw.link()
        return gw
    return start


def test_a_burst_with_the_default_pacing_leaves_spaced_in_order_within_15_seconds(
        paced: Callable[..., Gateway]) -> None:
    """Ten codes accepted at once: one at a time, at least ``min_interval_seconds``
    apart (plus jitter), each recipient's in the order they were accepted, and the
    last within 15 s of the first, because one-time codes age."""
    gw = paced(DEFAULTS)
    texts = [(RECIPIENTS[n % len(RECIPIENTS)], f"code {n}") for n in range(10)]
    accepted = send_all(gw, texts)
    inbox = delivered(gw, 10)
    arrivals = [m["time"] for m in inbox]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= DEFAULTS["min_interval_seconds"] - LATENCY, gaps
    assert arrivals[-1] - arrivals[0] <= 15.0, gaps
    # The outbox's own record of when it let each one go: never closer than the interval.
    dispatched = dispatch_times(gw, [r["id"] for r in accepted])
    assert min(b - a for a, b in itertools.pairwise(dispatched)) >= \
        DEFAULTS["min_interval_seconds"], dispatched
    order = {r["text"]: r["acceptedAt"] for r in accepted}
    for phone in RECIPIENTS:
        received = [m["text"] for m in inbox if m["to"] == phone]
        assert received == sorted(received, key=order.__getitem__), phone


def test_typing_shows_before_every_send(paced: Callable[..., Gateway]) -> None:
    typing = 0.6
    gw = paced({"typing_seconds": typing})
    send_all(gw, [(RECIPIENTS[0], "first"), (RECIPIENTS[1], "second")])
    for message in delivered(gw, 2):
        assert "typing_since" in message, message
        assert message["time"] - message["typing_since"] >= typing - 0.1, message


def test_a_newly_linked_device_is_capped_while_it_warms_up(
        paced: Callable[..., Gateway]) -> None:
    gw = paced({"warmup_days": 1.0, "warmup_daily_cap": 3})
    for n in range(3):
        assert gw.send(RECIPIENTS[n], f"warm {n}").data == {"sendWhatsAppNotification": True}
    refused = expect_error(gw.send(RECIPIENTS[3], "one too many"), "RATE_LIMITED",
                           "warms up", "pacing.warmup_daily_cap")
    assert refused["extensions"]["scope"] == "warmup_day"
    assert 0 < refused["extensions"]["retryAfterSeconds"] <= 86400
    assert len(gw.inbox()) == 3
