"""How a member's web tier finds the leader's supervisor (actors/leader_supervisor.py),
against real Thespian Admins on loopback: two leaders, each holding a global actor, and
a member following the first. The lookup through the member finds the first leader's
actor; once the member follows the second (``updateCapability``, as the launcher does
after a failover), the next lookup finds the second's. This also pins the one private
Thespian call the module makes (``admin_address``): a Thespian that changes it fails
here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.system import port_listening
from tests.integration.harness import free_port, wait_for

PEER = [sys.executable, "-m", "tests.integration.leader_lookup_peer"]
ROOT = Path(__file__).resolve().parents[2]
STEP_SECONDS = 60.0  # one command of the peer: an outer bound, never asserted on


def _peer(log: Path, *args: object) -> str:
    """Run one peer command; its output goes to files, never pipes: a started Admin
    daemonises and would hold a pipe open past the command's end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run([*PEER, *map(str, args)], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                              timeout=STEP_SECONDS, check=False)
    assert done.returncode == 0, err.read_text()[-3000:]
    return out.read_text()


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
