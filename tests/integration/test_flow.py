"""The specification's connection flow, end to end over real HTTP and processes."""

from __future__ import annotations

import base64

from tests.integration.harness import Gateway


def test_status_connect_scan_send(gateway: Gateway) -> None:
    assert gateway.status()["state"] == "NEW"
    assert gateway.connect().data == {"whatsAppConnect": True}
    pending = gateway.wait_state("QR_PENDING")
    assert pending["connected"] is False
    assert base64.b64decode(pending["qrCode"]).startswith(b"\x89PNG")
    assert pending["qrCodeSvg"].startswith("data:image/svg+xml;base64,")
    assert pending["qrCodeRaw"].startswith("2@") and pending["qrCodeRaw"].count(",") == 3
    gateway.sim("scan")
    connected = gateway.wait_state("CONNECTED")
    assert connected["connected"] is True and connected["qrCode"] is None
    assert connected["phoneNumber"]

    result = gateway.send("+1 (415) 555-2671", "Your code is 123456\nValid 5 min")
    assert result.data == {"sendWhatsAppNotification": True}, result
    [message] = gateway.inbox()
    assert message["to"] == "14155552671"
    assert message["text"] == "Your code is 123456\nValid 5 min"
    assert message["session"] == "default"
