"""The engine's own prints are redacted before they are logged (actors/transport/engine_output.py).

The lines are those goneonize prints with fmt.Println (main.go ``SendMessage``,
``Neonize``), with the error texts whatsmeow puts in them.
"""

from __future__ import annotations

import pytest

from actors.transport.engine_output import redact


@pytest.mark.parametrize(("line", "kept"), [
    ("SendMessage: Error sending message: failed to get user info for "
     "4917011111111@s.whatsapp.net to fill LID cache: failed to send usync query: "
     "websocket not connected",
     "SendMessage: Error sending message: failed to get user info for "
     "<redacted>@s.whatsapp.net to fill LID cache: failed to send usync query: "
     "websocket not connected"),
    ("SendMessage: Error sending message: no LID found for 4917011111111:7@s.whatsapp.net",
     "SendMessage: Error sending message: no LID found for <redacted>@s.whatsapp.net"),
    ("failed to encrypt for 123456789012345:3@lid", "failed to encrypt for <redacted>@lid"),
    ("Pair Code:  ABCD-EFGH", "Pair Code:  <redacted>"),
    ("calling +49 170 1234567 failed", "calling <number> failed"),
    ("SendMessage: Error sending message: client is nil",
     "SendMessage: Error sending message: client is nil"),
    ("Login event: timeout", "Login event: timeout"),
    ("server returned error 479", "server returned error 479"),  # codes stay readable
])
def test_numbers_addresses_and_pairing_codes_are_redacted(line: str, kept: str) -> None:
    assert redact(line) == kept
