"""The README's failure-path tour shows what it says, with its delays shrunk: a plain
``sim drop`` is over at once but visible (a new connection, counted as a reconnect);
an outage longer than the reconnect schedule ends FAILED, and a send then says why."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.core.times import iso_time
from tests.integration.harness import Gateway, expect_error, wait_for

# The shipped schedule (0, 5, 15, 35, 65 s) scaled down twentyfold.
TOUR = {"reconnect": {"attempts": 5, "first_delay_seconds": 0.25, "delay_seconds": 1.5}}
SINCE = "query { whatsAppStatus { state connectedSince reconnectAttempt } }"


def since(gw: Gateway) -> dict[str, Any]:
    result = gw.gql(SINCE)
    assert not result.errors, result
    return result.data["whatsAppStatus"]


def test_the_failure_tour(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(TOUR).start()
    gw.link()
    first = since(gw)["connectedSince"]
    # connectedSince has whole seconds: a reconnect within the second of the link would
    # show the same value, so the drop waits for the clock to pass that second.
    wait_for(lambda: iso_time(time.time()) > first, 5, 0.05, "the next second")

    dropped = gw.sim("drop")
    assert "reconnect attempt is immediate" in dropped.stdout
    again = wait_for(lambda: (s := since(gw))["state"] == "CONNECTED"
                     and s["connectedSince"] != first and s, 15,
                     message="a new connection after the drop")
    assert again["reconnectAttempt"] == 0

    outage = gw.sim("drop", "--down-for", "600")
    assert "FAILED if the outage outlasts its reconnect attempts" in outage.stdout
    failed = gw.wait_state("FAILED", timeout=30)
    assert failed["lastError"]["code"] == "RECONNECT_FAILED"
    error = expect_error(gw.send("+14155552671", "during the outage"), "NOT_CONNECTED",
                         "gave up", "RECONNECT_FAILED", "whatsAppConnect")
    assert error["extensions"]["reason"] == "RECONNECT_FAILED"

    gw.sim("restore")
    assert gw.connect().data == {"whatsAppConnect": True}
    gw.wait_state("CONNECTED", timeout=15)
    assert gw.send("+14155552671", "after the outage").data == {
        "sendWhatsAppNotification": True}
