"""What the hosts of a cluster tell each other: which wagate they run, and nothing secret.

A leader and members exchange pickled dataclasses, which another version of wagate
misreads field by field; so a member of another version is refused by the leader
(nothing placed on it, said in health and the log) and refuses the leader itself.
The "other version" is this very code copied with its protocol number raised, run
from the copy: a real second build, not a patched process.

Capabilities travel to every host and Thespian logs them when a member misses its
check-ins, so they carry what placement needs and never a credential.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import protocol
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster import HEARTBEAT, LEADER, MEMBER

CODE_ROOT = Path(__file__).resolve().parents[2]


def _cluster_config(shared: Path, role: str, host: str, sessions: int,
                    **extra: Any) -> dict[str, Any]:
    return {"storage": {"sessions_dir": str(shared / "sessions")},
            "simulator": {"server_dir": str(shared / "simulator")},
            "cluster": {"role": role, "host_name": host, "sessions": sessions,
                        "advertise_address": "127.0.0.1", "allow_networks": ["127.0.0.1/32"],
                        **HEARTBEAT, **extra}}


def _member_config(shared: Path, leader: Gateway, **extra: Any) -> dict[str, Any]:
    return _cluster_config(shared, "member", MEMBER, 2,
                           leaders=[f"127.0.0.1:{leader.admin_port}"], **extra)


def other_version(where: Path) -> Path:
    """This wagate copied to ``where`` with the next protocol number."""
    for package in ("actors", "gateway"):
        shutil.copytree(CODE_ROOT / package, where / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    protocol = where / "actors" / "protocol.py"
    text, count = re.subn(r"^PROTOCOL = (\d+)$", lambda m: f"PROTOCOL = {int(m[1]) + 1}",
                          protocol.read_text(), flags=re.MULTILINE)
    assert count == 1, "actors/protocol.py has no PROTOCOL line"
    protocol.write_text(text)
    return where


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (the copy's code)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
            state = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if cwd == directory and state[state.rfind(")") + 2] != "Z":
            found.append(int(entry))
    return found


@contextlib.contextmanager
def nothing_left_in(directory: Path) -> Iterator[None]:
    """Fail if a process of the code in ``directory`` outlives the block (and kill it,
    by pid, so the test leaves nothing behind either way)."""
    try:
        yield
    finally:
        try:
            wait_for(lambda: not processes_in(directory), 30, 0.1,
                     "every process of the other version to end")
        finally:
            for pid in processes_in(directory):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _bytes_of(path: Path) -> bytes:
    """A file's bytes, or none when it went away since it was listed: the running leader
    replaces its status files atomically (a temporary file, then a rename)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _member_entries(leader: Gateway) -> list[dict[str, Any]]:
    return [h for h in leader.health()["hosts"] if h["name"] == MEMBER]


def _log(gateway: Gateway, name: str = "actors.log") -> str:
    path = gateway.data_dir / "logs" / name
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_member_of_another_protocol_is_refused_by_both_sides(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    leader = make_gateway(_cluster_config(shared, "leader", LEADER, 1),
                          name="leader").start(60)
    other = other_version(tmp_path / "other-wagate")
    member = make_gateway(_member_config(shared, leader), name="member",
                          key_file=leader.key_file, code_dir=other)

    with nothing_left_in(other):
        code, log = member.start_refused(120)
    # The member refuses, and says why and what to do.
    assert code == 1, log
    assert "refusing to join the leader" in log, log
    ours = protocol.PROTOCOL
    assert f"protocol {ours + 1}" in log and f"protocol {ours}" in log, log
    assert "same wagate version" in log, log

    # The leader placed nothing there, and says so.
    entry = wait_for(lambda: [h for h in _member_entries(leader) if h["refused"]], 30, 0.2,
                     "the leader's health to list the refused member")[0]
    assert f"protocol {ours + 1}" in entry["refused"], entry  # what the member runs
    assert f"protocol {ours}" in entry["refused"], entry
    assert (entry["alive"], entry["sessions"]) == (False, 0), entry
    assert leader.health()["status"] == "degraded"
    assert "runs another wagate" in _log(leader)
    assert "a member joined" not in _log(leader)  # logged where its agent is placed

    # A member of the same wagate, under the same name, is welcome afterwards.
    make_gateway(_member_config(shared, leader), name="member-ok",
                 key_file=leader.key_file).start(60)
    wait_for(lambda: [h for h in _member_entries(leader) if h["alive"]], 30, 0.2,
             "the matching member to join")
    entries = _member_entries(leader)
    assert len(entries) == 1 and entries[0]["refused"] is None, entries
    assert leader.health()["status"] == "ok"
    assert "a member joined" in _log(leader)


def test_no_secret_reaches_a_log_when_a_member_misses_checkins(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    secret = f"planted-{uuid.uuid4().hex}"
    credentials = {"proxy": f"socks5://wagate:{secret}-proxy@127.0.0.1:9",
                   "session_store": f"postgresql://wagate:{secret}-dsn@127.0.0.1:9/w_{{session}}"}
    # Thespian's own member timer, shrunk: 3 missed 1 s check-ins and the member is dead.
    fast = {"reregister_seconds": 1.0}
    shared = tmp_path / "shared"
    leader_config = _cluster_config(shared, "leader", LEADER, 1, **fast)
    leader_config["transport"] = {"proxy": f"http://wagate:{secret}-leader@127.0.0.1:9"}
    leader = make_gateway(leader_config, name="leader").start(60)
    member_config = _member_config(shared, leader, **fast)
    member_config["transport"] = credentials
    member = make_gateway(member_config, name="member", key_file=leader.key_file).start(60)
    wait_for(lambda: "a member joined" in _log(leader), 30, 0.2,
             "the leader to receive the member's capabilities")

    member.kill_everything()  # it stops checking in (a 1 s period may drop it earlier)

    def missed_checkins() -> list[str]:
        return [line for line in _log(leader, "thespian.log").splitlines()
                if "missed" in line and "checkins" in line and MEMBER in line]

    lines = wait_for(missed_checkins, 90, 0.5, "Thespian to log the member's missed check-ins")
    # The control: that line carries the member's capabilities, so a secret among
    # them would be there.
    assert all("wagate_host" in line for line in lines), lines
    wait_for(lambda: "a member left the convention" in _log(leader)
             or "stopped answering" in _log(leader), 60, 0.5,
             "the leader to log that the member is gone")
    health = str(leader.health())
    assert secret not in health

    written = [path for path in tmp_path.rglob("*") if path.is_file()
               and path not in (leader.config_path, member.config_path)]
    leaked = [str(path.relative_to(tmp_path)) for path in written
              if secret.encode() in _bytes_of(path)]
    assert not leaked, f"the planted secret is in: {leaked}"


@pytest.mark.long
@pytest.mark.xfail(strict=True, reason=(
    "with a 2 s re-registration period, below Thespian's hysteresis (repeated convention "
    "messages held back up to 45 s), the leader's Thespian drops a healthy member after "
    "reregister_seconds x heartbeat_misses ('a member left the convention': its sessions "
    "move); at the default 60 s a member stayed for the 260 s observed"))
def test_a_healthy_member_stays_in_the_convention(make_gateway: Callable[..., Gateway],
                                                  tmp_path: Path) -> None:
    """Found by the partition tests (tests/integration/test_partitions.py): Thespian's
    own re-registration, shrunk to 2 s x 3 misses, must keep a live member alive."""
    fast = {"reregister_seconds": 2.0}
    shared = tmp_path / "shared"
    leader = make_gateway(_cluster_config(shared, "leader", LEADER, 1, **fast),
                          name="leader").start(60)
    make_gateway(_member_config(shared, leader, **fast), name="member",
                 key_file=leader.key_file).start(60)
    wait_for(lambda: [h for h in _member_entries(leader) if h["alive"]], 30, 0.2,
             "the member to join")
    deadline = time.monotonic() + 5 * fast["reregister_seconds"] * HEARTBEAT["heartbeat_misses"]
    while time.monotonic() < deadline:
        assert [h for h in _member_entries(leader) if h["alive"]], _log(leader)[-2000:]
        time.sleep(0.5)
