"""Pairing by phone number: request a code, type it on the (simulated) phone."""

from __future__ import annotations

import re

from tests.integration.harness import Gateway

REQUEST = ("mutation($p: String!, $s: String) { "
           "whatsAppRequestPairingCode(phoneNumber: $p, session: $s) }")


def test_pairing_code_links_the_number_it_was_requested_for(gateway: Gateway) -> None:
    refused = gateway.gql(REQUEST, {"p": "+14155552671", "s": "default"})
    assert refused.error_code == "NOT_CONNECTED"  # no pairing in progress yet

    assert not gateway.connect().errors
    gateway.wait_state("QR_PENDING")
    result = gateway.gql(REQUEST, {"p": "+1 415 555 2671", "s": "default"})
    assert not result.errors, result
    code = result.data["whatsAppRequestPairingCode"]
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)

    wrong = gateway.sim("scan", "--code", "AAAA-AAAA", check=False)
    assert wrong.returncode == 1 and "does not match" in wrong.stderr
    gateway.sim("scan", "--code", code)
    status = gateway.wait_state("CONNECTED")
    assert status["phoneNumber"] == "+14155552671"


def test_status_reports_a_bridge_state(gateway: Gateway) -> None:
    query = "{ whatsAppStatus { state bridgeState bannedUntil } }"
    assert gateway.gql(query).data["whatsAppStatus"] == {
        "state": "NEW", "bridgeState": "UNCONFIGURED", "bannedUntil": None}
    gateway.link()
    assert gateway.gql(query).data["whatsAppStatus"]["bridgeState"] == "CONNECTED"
