"""``wagate`` typed in another directory than the gateway's finds the running gateway,
the same way for ``status`` and ``sim``; no read-only or control command creates a
data_dir (an empty ``./data`` made by a mistyped command used to answer "(no
messages)" and "call whatsAppConnect first" while the gateway ran elsewhere)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, free_port

REPO = Path(__file__).resolve().parents[2]


def wagate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``wagate ARGS`` run in ``cwd`` (this checkout's code, whatever the directory)."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def elsewhere(root: Path, admin_port: int) -> Path:
    """A directory other than the gateway's, whose configs/gateway.toml (read by every
    command without --config) only moves actors.admin_port off the shared default."""
    where = root / "elsewhere"
    (where / "configs").mkdir(parents=True)
    (where / "configs" / "gateway.toml").write_text(f"[actors]\nadmin_port = {admin_port}\n",
                                                    encoding="utf-8")
    return where


def test_sim_typed_in_another_directory_drives_the_running_gateway(
        gateway: Gateway, tmp_path: Path) -> None:
    where = elsewhere(tmp_path, gateway.admin_port)
    assert not gateway.connect().errors
    gateway.wait_state("QR_PENDING")

    scanned = wagate(where, "sim", "scan")
    assert scanned.returncode == 0, scanned.stderr
    assert "linked session 'default'" in scanned.stdout
    assert f"gateway running on 127.0.0.1:{gateway.admin_port}" in scanned.stderr
    phone = gateway.wait_state("CONNECTED")["phoneNumber"]

    # A linked session shows no code: scan says so at once, not after --wait (an hour
    # here; the subprocess's deadline is two minutes).
    again = wagate(where, "sim", "scan", "--wait", "3600")
    assert again.returncode == 0, again.stderr
    assert f"session 'default' is already linked to phone +{phone.lstrip('+')}" in again.stdout
    other = wagate(where, "sim", "scan", "--wait", "3600", "--phone", "+15550001111")
    assert other.returncode == 1 and "already linked" in other.stderr, other

    assert gateway.send("+14155552671", "from elsewhere").data == {
        "sendWhatsAppNotification": True}
    inbox = wagate(where, "sim", "inbox")
    assert inbox.returncode == 0, inbox.stderr
    assert "from elsewhere" in inbox.stdout

    status = wagate(where, "status")
    assert status.returncode == 0, status.stderr
    assert "CONNECTED" in status.stdout
    assert sorted(p.name for p in where.iterdir()) == ["configs"]  # no ./data appeared


COMMANDS = [["status"], ["drain", "--timeout", "0"], ["sim", "inbox"], ["sim", "drop"],
            ["sim", "restore"], ["sim", "scan", "--wait", "0"], ["sim", "logout"],
            ["sim", "unregister", "+14155552671"], ["token", "list"],
            ["token", "revoke", "nobody"], ["keys", "check"],
            ["audit", "verify"], ["audit", "tail"]]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_no_read_only_or_control_command_creates_a_data_dir(
        command: list[str], tmp_path: Path) -> None:
    where = elsewhere(tmp_path, free_port())  # nothing listens there
    done = wagate(where, *command)
    assert sorted(p.name for p in where.iterdir()) == ["configs"], (done.stdout, done.stderr)
    if command[0] == "sim":
        assert done.returncode == 1, done
        assert "no gateway runs on data_dir" in done.stderr
        assert "wagate serve --demo" in done.stderr and "--data-dir" in done.stderr


def test_sim_on_a_named_data_dir_that_does_not_exist_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    done = wagate(tmp_path, "sim", "inbox", "--data-dir", str(missing))
    assert done.returncode == 1
    assert f"no gateway runs on data_dir {missing} (it does not exist)" in done.stderr
    assert not missing.exists()


NOBODY = 65534  # a uid that is not this test's


def test_sim_never_drives_a_gateway_another_user_runs(gateway: Gateway, tmp_path: Path
                                                      ) -> None:
    """Found on actors.admin_port, a gateway whose simulated service belongs to another
    user is not this user's: `wagate sim` used its directory anyway (as root it even
    re-moded it and left root-owned files the other gateway cannot write)."""
    if os.geteuid() != 0:
        pytest.skip("making a directory another user's needs root (the unit test "
                    "test_a_simulator_dir_of_another_user_is_refused covers the check)")
    assert not gateway.connect().errors
    gateway.wait_state("QR_PENDING")  # its simulated service exists now
    simulator = gateway.data_dir / "simulator"
    assert simulator.is_dir()
    before = {p.name for p in simulator.iterdir()}
    os.chown(simulator, NOBODY, -1)
    try:
        done = wagate(elsewhere(tmp_path, gateway.admin_port), "sim", "inbox")
        assert done.returncode == 1, done
        assert "belongs to another user" in done.stderr, done.stderr
        assert "--data-dir" in done.stderr
        assert {p.name for p in simulator.iterdir()} == before
        assert simulator.stat().st_uid == NOBODY
    finally:
        os.chown(simulator, os.geteuid(), -1)


def test_no_command_joins_a_listener_of_another_user_on_the_admin_port(tmp_path: Path
                                                                      ) -> None:
    """The actor system speaks pickle: joining a listener another user of the machine
    put on actors.admin_port (free while no gateway of ours runs) lets that user run
    code as whoever typed `wagate status` or `wagate sim`. Refused before joining."""
    if os.geteuid() != 0:
        pytest.skip("a listener of another user needs root (tests/unit/test_listeners.py "
                    "covers reading its owner)")
    port = free_port()
    os.seteuid(NOBODY)  # the socket's owner is the effective uid that made it
    try:
        stranger = socket.socket()
    finally:
        os.seteuid(0)
    with stranger:
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        where = elsewhere(tmp_path, port)
        for command in (["status"], ["status", "--admin-port", str(port)], ["sim", "inbox"]):
            done = wagate(where, *command)
            assert done.returncode == 1, (command, done)
            assert f"127.0.0.1:{port} (actors.admin_port) is another user's (uid {NOBODY})" \
                in done.stderr, (command, done.stderr)
    assert sorted(p.name for p in where.iterdir()) == ["configs"]
