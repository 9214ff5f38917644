"""The note of this process's listening actor-system sockets stays as small as the
sockets alive (``actors.system.drop_listeners_at_fork``).

A web worker opens a Thespian transport for every call context it makes; the note
kept a weak reference to each, dead or not, for the life of the process: memory that
grew with every context (issue 16's soak, seen with ``tracemalloc``). Run in a child
interpreter: the patch it installs is process-wide and stays.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import gc
from actors import system
system.bind_only("127.0.0.1")
system.drop_listeners_at_fork()
from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress
from thespian.system.transport.TCPTransport import ExternalTransportCopy, TCPTransport
admin = ActorAddress(TCPv4ActorAddress("127.0.0.1", 1900))
kept = TCPTransport(ExternalTransportCopy(), admin, False, False)
for _ in range(200):
    TCPTransport(ExternalTransportCopy(), admin, False, False).close()
gc.collect()
print(len(system._listeners), kept.socket in system._listeners)
kept.close()
"""


def test_closed_transports_leave_nothing_in_the_note_of_listeners() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]  # only the open one, and still noted
