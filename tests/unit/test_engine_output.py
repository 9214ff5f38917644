"""The engine's own prints are redacted before they are logged (actors/transport/engine_output.py).

The lines are those goneonize prints with fmt.Println (main.go ``SendMessage``,
``Neonize``), with the error texts whatsmeow puts in them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


# A process whose standard output was closed before it started (a service manager or a
# shell's ``>&-``): Python's sys.stdout is None and descriptor 1 is free.
_CLOSED_STDOUT_CHILD = r"""
import os, sys
from actors.transport.engine_output import capture_engine_output
assert sys.stdout is None
lines = []
capture = capture_engine_output(lines.append)
os.write(1, b"SendMessage: Error sending message: failed to get user info for "
            b"4917011111111@s.whatsapp.net\n")
ok = capture.wait_for(1, 10.0)
os.write(2, repr((ok, lines)).encode())
"""


def test_a_closed_standard_output_does_not_stop_the_capture() -> None:
    """With descriptor 1 closed the capture must still take it (what the engine prints
    is captured and redacted), not fail, which would refuse the engine as if it were
    not installed."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(["/bin/sh", "-c", 'exec "$0" -c "$1" >&-', sys.executable,
                             _CLOSED_STDOUT_CHILD], cwd=root, capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode() == repr((True, [
        "SendMessage: Error sending message: failed to get user info for "
        "<redacted>@s.whatsapp.net"]))
