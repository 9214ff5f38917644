"""Hop benchmark: what one actor message costs in Thespian, the bound under a send's CPU.

Why it exists: a ``sendWhatsAppNotification`` crosses processes four times (web
worker -> outbox -> session -> outbox -> web worker; its audit entry leaves in a
batch, gateway/web/audit_queue.py), each a
Thespian message over TCP: pickling, a send, the receiver's read and unpickling, an
acknowledgement sent back, and the transport's loop around them (a fresh epoll set
every turn). Issue 17 asks for a send at <= 3.5 ms of server CPU. This measures the
part no code of ours can remove while the hops stay Thespian messages, so the note can
say what bounds the figure and what a cheaper hop would have to be.

How: a throwaway ``multiprocTCPBase`` actor system bound to 127.0.0.1 (the gateway's
own system base), an echo actor and a driver actor in their own processes. The driver
sends a message, waits for the echo's answer, sends the next: ``--messages`` round
trips of two payloads, a tiny one and one shaped like the gateway's SendText (a
dataclass with a 160-character text). CPU (user + system, /proc) of the two actor
processes over the whole run, per one-way message: what a hop costs both ends
together. The floor is the same exchange over a plain socketpair between two
processes with pickle (no actor system), measured in the same run. Each payload is
measured with Thespian's default selector (epoll) and with poll, which the gateway's
processes use (``actors.system.poll_thespian_sockets``).

Run: ``python -m tests.perf.bench_hop`` (``--messages``). Exits 0 whatever the
figures; only a benchmark that could not run fails. Only 127.0.0.1 is contacted; the
actor system is shut down at the end, also on error.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

from thespian.actors import Actor, ActorSystem

from actors.system import poll_thespian_sockets
from tests.integration.harness import free_port
from tests.perf.bench_idle import cpu_seconds

SEND_TARGET_MS = 3.5  # issue 17: server CPU per send, the whole path


@dataclass(frozen=True, slots=True)
class Shaped:
    """Like a SendText: a few short strings, a phone number and a notification."""

    session: str
    phone: str
    text: str
    request_id: str
    requester: str
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    echo: Any
    payload: Any
    count: int


@dataclass(frozen=True, slots=True)
class Done:
    seconds: float
    pid: int


class Echo(Actor):  # type: ignore[misc]
    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if msg == "pid":
            self.send(sender, os.getpid())
        elif not isinstance(msg, (Done, Run)) and not hasattr(msg, "exitRequest"):
            self.send(sender, msg)


class Driver(Actor):  # type: ignore[misc]
    """Makes ``count`` round trips to the echo actor, then tells its asker."""

    def __init__(self) -> None:
        super().__init__()
        self.left = 0
        self.run: Run | None = None
        self.asker: Any = None
        self.started = 0.0

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if msg == "pid":
            self.send(sender, os.getpid())
        elif isinstance(msg, Run):
            self.run, self.asker, self.left = msg, sender, msg.count
            self.started = time.monotonic()
            self.send(msg.echo, msg.payload)
        elif self.run is not None and sender == self.run.echo:
            self.left -= 1
            if self.left > 0:
                self.send(self.run.echo, self.run.payload)
            else:
                self.send(self.asker, Done(time.monotonic() - self.started, os.getpid()))


def shaped() -> Shaped:
    return Shaped("default", "+14155552671", "Your verification code is 481516. " * 4,
                  "r-5b8f0c2e.1234.17", "bench-sender", "order-1234567")


def actor_hop_ms(port: int, payload: Any, count: int, poll: bool) -> tuple[float, float]:
    """(CPU ms per one-way message, both actor processes; wall µs per round trip).
    ``poll``: Thespian's loop waits with poll, as the gateway's processes do
    (``actors.system.poll_thespian_sockets``); else with its default, epoll."""
    from thespian.system.transport import TCPTransport

    default = TCPTransport.selectors
    if poll:
        poll_thespian_sockets()  # inherited by the Admin and actors forked below
    try:
        return _hop(port, payload, count)
    finally:
        TCPTransport.selectors = default


def _hop(port: int, payload: Any, count: int) -> tuple[float, float]:
    system = ActorSystem("multiprocTCPBase", {"Admin Port": port,
                                              "Admin Routing": False})
    try:
        echo, driver = system.createActor(Echo), system.createActor(Driver)
        pids = [system.ask(echo, "pid", 10), system.ask(driver, "pid", 10)]
        system.ask(driver, Run(echo, payload, 1000), 60)  # warm: sockets open
        before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        done = system.ask(driver, Run(echo, payload, count), 600)
        after = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        if not isinstance(done, Done):
            raise RuntimeError(f"the driver did not finish: {done!r}")
        return (after - before) * 1000 / (2 * count), done.seconds * 1e6 / count
    finally:
        system.shutdown()


def _echo_socket(sock: socket.socket) -> None:
    while True:
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return
        body = sock.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)
        message = pickle.loads(body)
        out = pickle.dumps(message)
        sock.sendall(struct.pack("!I", len(out)) + out)


def socket_hop_ms(payload: Any, count: int) -> float:
    """The floor: the same round trips over a socketpair with pickle, CPU per one-way
    message of both processes."""
    ours, theirs = socket.socketpair()
    child = mp.get_context("fork").Process(target=_echo_socket, args=(theirs,), daemon=True)
    child.start()
    theirs.close()
    try:
        assert child.pid is not None
        before = (cpu_seconds(child.pid) or 0.0) + time.process_time()
        for _ in range(count):
            out = pickle.dumps(payload)
            ours.sendall(struct.pack("!I", len(out)) + out)
            head = ours.recv(4, socket.MSG_WAITALL)
            pickle.loads(ours.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))
        after = (cpu_seconds(child.pid) or 0.0) + time.process_time()
        return (after - before) * 1000 / (2 * count)
    finally:
        ours.close()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="round trips per payload")
    args = parser.parse_args(argv)
    rows = []
    for name, payload in (("tiny (an int)", 1), ("SendText-shaped", shaped())):
        floor = socket_hop_ms(payload, args.messages)
        for poll in (False, True):
            # the median of three runs: the first on a fresh system varies most
            runs = sorted(actor_hop_ms(free_port(), payload, args.messages, poll)
                          for _ in range(3))
            hop, rtt = runs[1]
            rows.append((f"{name}, {'poll' if poll else 'epoll'}", len(pickle.dumps(payload)),
                         floor, hop, rtt))
    print("=" * 102)
    print(f"Thespian hop cost, multiprocTCPBase on 127.0.0.1, {args.messages} round trips "
          f"per payload (median of 3 runs), {os.cpu_count()} CPUs; the gateway waits with poll")
    print("-" * 102)
    print(f"{'payload, selector':28} {'bytes':>6} {'floor ms/msg':>13} {'actor ms/msg':>13} "
          f"{'x floor':>8} {'round trip µs':>14}")
    for name, size, floor, hop, rtt in rows:
        print(f"{name:28} {size:6d} {floor:13.3f} {hop:13.3f} {hop / floor:8.1f} {rtt:14.0f}")
    hop = rows[-1][3]  # SendText-shaped, poll: as the gateway runs
    print("-" * 102)
    print(f"a send crosses 4 hops (web->outbox, outbox->session, session->outbox, "
          f"outbox->web; its audit entry travels in a batch):\n  {4 * hop:.2f} ms of CPU in "
          f"hops alone, against a target of {SEND_TARGET_MS} ms for the whole send "
          f"({100 * 4 * hop / SEND_TARGET_MS:.0f} % of it)")
    print("=" * 102)
    return 0


if __name__ == "__main__":
    sys.exit(main())
