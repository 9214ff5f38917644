"""What the gateway exposes on the network: loopback only, and nothing after a stop.

Thespian binds every actor's socket to all interfaces and speaks pickle, so one
socket on a public interface would let anyone on the network run code in the
gateway. ``actors.system.bind_only`` patches a private Thespian attribute
to prevent that; this test lists the real listening sockets of every gateway
process to catch a regression (a Thespian upgrade, a new process, a new server).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from actors.system import port_listening
from tests.integration.harness import Gateway

TCP_LISTEN = "0A"


def _address(hex_address: str, family: socket.AddressFamily) -> str:
    """Decode /proc/net/tcp{,6} notation: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every TCP listener in this network namespace."""
    found = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != TCP_LISTEN:
                continue
            address, port = fields[1].rsplit(":", 1)
            found[int(fields[9])] = (_address(address, family), int(port, 16))
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open (empty if it is gone)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def test_every_listening_socket_is_loopback_only_and_gone_after_stop(gateway: Gateway) -> None:
    """Every TCP listener of the launcher and of both process groups (actors: admin,
    supervisor, workers, sessions, logger; web: gunicorn) is bound to 127.0.0.1,
    and after a graceful stop none of them listens any more."""
    gateway.link()  # so a session process (with its own actor socket) exists too
    assert gateway.process is not None
    pids = [gateway.process.pid, *gateway.actor_pids()]
    assert gateway.session_pid() in pids

    listeners = listening_sockets()
    owned = {inode: listeners[inode] for pid in pids for inode in socket_inodes(pid)
             if inode in listeners}
    ports = {port for _, port in owned.values()}
    assert gateway.port in ports, owned
    assert gateway.admin_port in ports, owned
    # The admin, the supervisor, the limiter, the outbox and the session each listen.
    assert len(ports - {gateway.port}) >= 5, owned
    exposed = {inode: where for inode, where in owned.items() if where[0] != "127.0.0.1"}
    assert not exposed, f"listening beyond loopback: {exposed}"

    gateway.stop()
    still = set(owned) & set(listening_sockets())
    assert not still, f"still listening after stop: {[owned[i] for i in still]}"
    assert not port_listening(gateway.port) and not port_listening(gateway.admin_port)


def test_no_actor_system_socket_is_held_by_a_second_process(gateway: Gateway) -> None:
    """Each listening actor-system socket belongs to the one process that runs it.

    A forked child that inherits its parent's listening socket never accepts on it: a
    connection there waits unread as long as any holder lives, and the port stays
    bound after its owner exits (Thespian forks the Admin while the launcher's own
    endpoint listens, and its logger while the Admin's does). Only gunicorn's HTTP
    socket is shared, on purpose, by its master and workers."""
    assert gateway.process is not None
    pids = [gateway.process.pid, *gateway.actor_pids()]
    listeners = listening_sockets()
    owners: dict[int, list[int]] = {}
    for pid in pids:
        for inode in socket_inodes(pid):
            if inode in listeners and listeners[inode][1] != gateway.port:
                owners.setdefault(inode, []).append(pid)
    assert len(owners) >= 5, owners  # launcher, admin, logger, supervisor, outbox, ...
    shared = {listeners[i]: holders for i, holders in owners.items() if len(holders) > 1}
    assert not shared, f"listening sockets held by several processes: {shared}"
