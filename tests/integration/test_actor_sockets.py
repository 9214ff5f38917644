"""Every actor-system socket a wagate process opens refuses the outside, unread.

Thespian unpickles whatever reaches an actor-system socket, so a connection from
outside ``cluster.allow_networks`` must be closed before a byte of it is read. Here a
cluster leader runs on 127.0.0.1 with ``allow_networks = ["127.0.0.1/32"]``; the
attacker connects from 127.0.0.2 (loopback too, so nothing leaves the machine, but
outside the allowed network) to every kind of socket: the launcher's, the actors',
the web tier's and those of each CLI command that talks to the actors, and sends a
framed pickle whose unpickling would create a marker file.

The control: the same payload, from the same address, to an actor-system endpoint
opened *without* wagate's filter (a process that joins the gateway's actor system
with plain Thespian) does create its marker, so the payload is one Thespian runs.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.integration.harness import Gateway, group_members, wait_for
from tests.integration.test_processes import listening_sockets, socket_inodes

OUTSIDE = "127.0.0.2"  # a loopback address outside allow_networks (127.0.0.1/32)
CLUSTER = {"role": "leader", "host_name": "alpha", "advertise_address": "127.0.0.1",
           "allow_networks": ["127.0.0.1/32"]}
# Asks wait this long while the test holds the supervisor stopped (never that long).
LONG_ASK = 120.0

# A process that joins the gateway's actor system the way wagate did before every
# socket was filtered: bound to loopback, no accept filter. It then waits for messages.
UNFILTERED_ENDPOINT = """
import sys
from actors.system import bind_only
bind_only("127.0.0.1")
from thespian.actors import ActorSystem
system = ActorSystem("multiprocTCPBase", {"Admin Port": int(sys.argv[1])})
while True:
    system.listen(1.0)
"""


class _CreatesFile:
    """Unpickling this opens ``path`` for writing, which creates it: any code an
    attacker likes would run the same way."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def framed_payload(marker: Path) -> bytes:
    """A message as Thespian's TCP transport frames it: ``<length>>`` then the pickle."""
    data = pickle.dumps(_CreatesFile(marker))
    return b"%d>" % len(data) + data


@dataclass
class Probe:
    """One hostile connection to one listening socket of one process."""

    kind: str
    pid: int
    port: int
    marker: Path
    sock: socket.socket

    def closed(self) -> bool:
        """Closed by the other side (an orderly close or a reset): nothing it sent
        back, nothing waiting."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


def listeners(pid: int) -> list[tuple[str, int]]:
    """The TCP sockets process ``pid`` listens on."""
    found = listening_sockets()
    return [found[inode] for inode in socket_inodes(pid) if inode in found]


def probe(kind: str, pid: int, address: str, port: int, markers: Path) -> Probe:
    marker = markers / f"{kind}-{pid}-{port}"
    sock = socket.create_connection((address, port), timeout=10,
                                    source_address=(OUTSIDE, 0))
    with contextlib.suppress(OSError):  # already closed: refused before the send
        sock.sendall(framed_payload(marker))
    return Probe(kind, pid, port, marker, sock)


def probe_all(kind: str, pid: int, markers: Path, skip: frozenset[int] = frozenset()
              ) -> list[Probe]:
    found = [(a, p) for a, p in listeners(pid) if p not in skip]
    assert found, f"{kind} (pid {pid}) listens on no actor-system socket"
    return [probe(kind, pid, address, port, markers) for address, port in found]


@contextlib.contextmanager
def unfiltered_endpoint(gateway: Gateway, log_dir: Path) -> Iterator[int]:
    """The pid of a process whose actor-system endpoint has no accept filter."""
    env = {**os.environ, "THESPLOG_FILE": str(log_dir / "unfiltered-thespian.log")}
    process = subprocess.Popen([sys.executable, "-c", UNFILTERED_ENDPOINT,
                                str(gateway.admin_port)], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: listeners(process.pid), 60, 0.1, "the unfiltered endpoint")
        yield process.pid
    finally:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def supervisor_stopped(gateway: Gateway, pid: int) -> Iterator[None]:
    """Hold the supervisor (SIGSTOP): every ask to it waits, so every asking process
    keeps running its actor-system endpoint meanwhile. Signalled through the harness,
    which checks that the pid is still a process of this gateway."""
    gateway.signal_process(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        gateway.signal_process(pid, signal.SIGCONT)


def cli(gateway: Gateway, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args,
                             "--config", str(gateway.config_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_sockets(name: str, command: subprocess.Popen[str], count: int) -> None:
    """Wait until ``command`` listens on ``count`` sockets; fail at once if it ended."""
    def ready() -> bool:
        if command.poll() is not None:
            out, err = command.communicate()
            raise AssertionError(f"`wagate {name}` ended early ({command.returncode}): "
                                 f"{out} {err}")
        return len(listeners(command.pid)) >= count

    wait_for(ready, 60, 0.1, f"`wagate {name}` to open its actor-system sockets")


def expect(problems: list[str], predicate: Callable[[], bool], timeout: float,
           what: str) -> None:
    """Wait for ``predicate``; on timeout note ``what`` did not happen and go on, so one
    run reports every kind of socket that fails."""
    try:
        wait_for(predicate, timeout, 0.1, what)
    except AssertionError as exc:
        problems.append(str(exc))


def test_every_actor_system_socket_closes_outside_connections_unread(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gateway = make_gateway({"cluster": CLUSTER, "http": {"workers": 1, "threads": 1},
                            "actors": {"ask_timeout_seconds": LONG_ASK}},
                           name="leader").start(60)
    markers = tmp_path / "markers"
    markers.mkdir()
    probes: list[Probe] = []
    problems: list[str] = []
    commands: dict[str, subprocess.Popen[str]] = {}
    try:
        # The control: unfiltered, the payload runs.
        with unfiltered_endpoint(gateway, tmp_path) as pid:
            control = probe_all("unfiltered", pid, markers)
            wait_for(lambda: all(p.marker.exists() for p in control), 60, 0.1,
                     "the payload to run on an endpoint without the filter")
            for p in control:
                p.sock.close()
                p.marker.unlink()

        # The launcher and every actor (admin, logger, supervisor, audit, outbox, ...)
        # run their endpoints all the time: each closes the connection at once.
        state = gateway.run_state()
        assert state is not None and gateway.process is not None
        running = probe_all("launcher", gateway.process.pid, markers)
        for pid in group_members(int(state["actor_pgid"])):
            running += probe_all("actor", pid, markers)
        probes += running
        for p in running:
            expect(problems, p.closed, 30, f"the {p.kind} (pid {p.pid}) to close the "
                   f"connection to its port {p.port}")

        # The web tier and the CLI commands open their sockets to ask the supervisor;
        # while it is held, each keeps its endpoint running: probe them then.
        supervisor = int(gateway.health()["processes"]["supervisor"])
        workers = [pid for pid in group_members(int(state["web_pgid"]))
                   if pid != int(state["web_pgid"])]  # gunicorn's workers, not its master
        answers: list[int] = []
        with supervisor_stopped(gateway, supervisor):
            request = threading.Thread(target=lambda: answers.append(requests.get(
                gateway.url + "/admin/health", timeout=LONG_ASK + 30,
                headers={"Authorization": f"Bearer {gateway.token}"}).status_code))
            request.start()
            commands["status"] = cli(gateway, "status")
            commands["drain"] = cli(gateway, "drain", "--timeout", str(LONG_ASK))
            commands["token create"] = cli(gateway, "token", "create", "--name", "probe",
                                           "--role", "viewer")
            # Each waits for the supervisor with its sockets open: the status client one,
            # the audit client (token commands) one more, per asking thread.
            wanted = {"status": 1, "drain": 1, "token create": 2}
            for name, count in wanted.items():
                wait_sockets(name, commands[name], count)
            commands["token revoke"] = cli(gateway, "token", "revoke", "probe")
            wait_sockets("token revoke", commands["token revoke"], 2)
            waiting = {f"web worker {pid}": probe_all("web", pid, markers,
                                                     skip=frozenset({gateway.port}))
                       for pid in workers}
            waiting |= {f"wagate {name}": probe_all(name.replace(" ", "-"), c.pid, markers)
                        for name, c in commands.items()}
            for group in waiting.values():
                probes.extend(group)
            # A process runs the endpoint its current ask uses; an endpoint it is not
            # using reads nothing at all (what waits there is closed when it next runs).
            for name, group in waiting.items():
                expect(problems, lambda group=group: any(p.closed() for p in group), 30,
                       f"{name} to close a connection from outside allow_networks")
            assert not answers  # the request is still waiting: it was not answered early
        request.join(LONG_ASK)
        assert answers == [200]
        for name, command in commands.items():
            out, err = command.communicate(timeout=LONG_ASK)
            assert command.returncode == 0, (name, out, err)
    finally:
        for command in commands.values():
            if command.poll() is None:
                command.kill()
                command.wait(10)
        for p in probes:
            p.sock.close()
    ran = sorted(m.name for m in markers.iterdir())
    assert not ran, f"a pickled payload ran in: {ran}; also: {problems}"
    assert not problems, "\n".join(problems)
