"""How a member's web tier finds the leader's supervisor (actors/leader_supervisor.py),
against real Thespian Admins on loopback: two leaders, each holding a global actor, and
a member following the first. The lookup through the member finds the first leader's
actor; once the member follows the second (``updateCapability``, as the launcher does
after a failover), the next lookup finds the second's. This also pins the one private
Thespian call the module makes (``admin_address``): a Thespian that changes it fails
here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.system import port_listening
from tests.integration.harness import free_port, wait_for
from tests.integration.peer_process import run_peer


def _peer(log: Path, *args: object) -> str:
    return run_peer("tests.integration.leader_lookup_peer", log, *args)


@pytest.fixture
def admins(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    """Leader A, leader B and member M (following A), each stopped at the end."""
    a, b, m = free_port(), free_port(), free_port()
    started: list[int] = []
    try:
        for port, args in ((a, ("leader",)), (b, ("leader",)), (m, ("member", a))):
            _peer(tmp_path / f"start-{port}", "start", port, *args)
            started.append(port)
            wait_for(lambda p=port: port_listening(p, "127.0.0.1"), 20, 0.05,
                     f"the Admin on {port}")
        yield a, b, m
    finally:
        for port in reversed(started):
            _peer(tmp_path / f"stop-{port}", "stop", port)
        for port in started:
            wait_for(lambda p=port: not port_listening(p, "127.0.0.1"), 20, 0.05,
                     f"the Admin on {port} to stop")


def test_a_member_finds_the_global_actor_of_the_leader_it_follows(
        admins: tuple[int, int, int], tmp_path: Path) -> None:
    a, b, m = admins
    before, after = json.loads(_peer(tmp_path / "lookup", "lookup", m, b))
    assert before is not None and before["port"] == str(a), before
    assert after is not None and after["port"] == str(b), after
