"""A failed audit ``tell`` must not cut short the next send on the same thread.

Regression (found by test_member_api_partition's blackhole case, about one run in
four): a send made just after the cut came back UNAVAILABLE ("retry") within two
milliseconds, and was accepted and sent all the same. The web process's audit sender
had just told a batch to the audit actor on the same helper thread, through the same
Thespian context. Under blackhole routes the connect fails at once, and Thespian keeps
that failure's callback for the context's next run, while the ``tell`` returns as if
all went well. The next run was the send's ``ask``: the old failure's callback
aborted it, so the ask returned None at once, with the send already written into the
socket it reused, whose bytes the kernel delivered after the heal. The bridge took the
early None for a dead outbox, asked the supervisor (unreachable too) for new routes,
and answered UNAVAILABLE.

Here the stand-ins of ``bridge_peer`` play the actors across a cut: the supervisor
answers the routes once and then exits (a question to it fails at once), and the
audit actor it names cannot be reached (the connect fails at once). The real bridge,
with one helper thread, sends, tells an audit entry, and sends again. Before the fix
the second send was answered UNAVAILABLE although the outbox had it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.system import LOOPBACK, port_listening
from tests.integration.bridge_peer import ANSWERS
from tests.integration.harness import free_port, wait_for
from tests.integration.peer_process import run_peer

pytestmark = pytest.mark.integration


def _peer(log: Path, *args: object) -> str:
    return run_peer("tests.integration.bridge_peer", log, *args)


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The stand-ins' Admin and the file where the outbox writes each key it got."""
    port, received = free_port(), tmp_path / "received"
    try:
        _peer(tmp_path / "start", "start", port, received)
        wait_for(lambda: port_listening(port, LOOPBACK), 20, 0.05, "the Admin")
        yield port, received
    finally:
        # Also when the start failed half-way: an Admin it left listening is stopped.
        if port_listening(port, LOOPBACK):
            _peer(tmp_path / "stop", "stop", port)
            wait_for(lambda: not port_listening(port, LOOPBACK), 20, 0.05,
                     "the Admin to stop")


def test_a_send_after_an_audit_tell_that_failed_at_once_is_answered_by_the_outbox(
        admin: tuple[int, Path], tmp_path: Path) -> None:
    port, received = admin
    output = _peer(tmp_path / "send", "send", port)
    [line] = [x for x in output.splitlines() if x.startswith(ANSWERS)]
    first, second = json.loads(line.removeprefix(ANSWERS))
    assert first == {"key": "first", "code": "OK", "duplicate": False}, first
    # The outbox has the second send once, and its answer came back to the caller.
    wait_for(lambda: received.exists() and received.read_text().split().count("second"),
             10, 0.05, "the outbox to have the second send")
    assert received.read_text().split() == ["first", "second"]
    assert second == {"key": "second", "code": "OK", "duplicate": False}, second
