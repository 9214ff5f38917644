"""A peer process for test_bridge_contexts.py: each command runs in a process of its
own, as Thespian keeps one actor system per process.

    start PORT LOG     start an Admin with two stand-ins: a supervisor (under the
                       supervisor's global name) that answers the routes once and
                       then exits, so that the next question fails at once, as one
                       across blackhole routes does; it names an audit
                       actor no connection can reach (127.255.255.255: the connect
                       fails at once, as under blackhole routes); and an outbox that
                       accepts every send and appends its key to LOG
    send PORT          the web tier's bridge, as a web process holds it, with one
                       helper thread: a send, an audit entry (told to the unreachable
                       audit actor), another send; prints the two answers as JSON
    stop PORT          shut that Admin down

The stand-ins replace the gateway's actors, not the code under test: the bridge,
its helper threads, its contexts and Thespian are the real ones.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, ActorTypeDispatcher
from thespian.system.transport.IPBase import TCPv4ActorAddress

from actors.messages import Accepted, GetRoutes, MessageState, Ok, SendText
from actors.system import LOOPBACK, SUPERVISOR_NAME, bind_only
from gateway.api.errors import GatewayError
from gateway.web.bridge import ActorBridge

# Loopback's broadcast address: a TCP connect to it fails at once (ENETUNREACH),
# inside 127.0.0.0/8, with nothing sent anywhere.
UNREACHABLE = "127.255.255.255"
ASK_SECONDS = 2.0
DRAIN_SECONDS = 10.0
ANSWERS = "answers: "  # the line the test reads (log lines go to the same output)


class StandInOutbox(ActorTypeDispatcher):
    """Accepts every send; the file named by the log message keeps each key it got."""

    log: Path | None = None

    def receiveMsg_str(self, msg: str, sender: Any) -> None:
        self.log = Path(msg)

    def receiveMsg_SendText(self, msg: SendText, sender: Any) -> None:
        assert self.log is not None
        seen = self.log.read_text().split() if self.log.exists() else []
        with self.log.open("a") as out:
            out.write(f"{msg.idempotency_key}\n")
        self.send(sender, Accepted(str(msg.idempotency_key), MessageState.QUEUED, time.time(),
                                   msg.request_id, duplicate=msg.idempotency_key in seen))


class StandInSupervisor(ActorTypeDispatcher):
    """Names the outbox (given as its first message) and the unreachable audit actor,
    once, and exits."""

    outbox: Any = None

    def receiveMsg_ActorAddress(self, msg: Any, sender: Any) -> None:
        self.outbox = msg

    def receiveMsg_GetRoutes(self, msg: GetRoutes, sender: Any) -> None:
        audit = ActorAddress(TCPv4ActorAddress(UNREACHABLE, 1, external=True))
        self.send(sender, Ok({"outbox": self.outbox, "audit": audit}, msg.request_id))
        self.send(self.myAddress, ActorExitRequest())


def _system(port: int) -> Any:
    bind_only(LOOPBACK)
    from thespian.actors import ActorSystem

    return ActorSystem("multiprocTCPBase", {"Admin Port": port})


def start(port: int, log: str) -> None:
    system = _system(port)
    outbox = system.createActor(StandInOutbox)
    system.tell(outbox, log)
    supervisor = system.createActor(StandInSupervisor, globalName=SUPERVISOR_NAME)
    system.tell(supervisor, outbox)


def send(port: int) -> None:
    bridge = ActorBridge(port, ASK_SECONDS, max_calls=1)
    answers = [_answer(bridge, "first")]
    bridge.audit("mutation", operation="sendWhatsAppMessage")
    assert bridge._audit_queue().drain(DRAIN_SECONDS), "the audit entry was never told"
    answers.append(_answer(bridge, "second"))
    print(ANSWERS + json.dumps(answers))


def _answer(bridge: ActorBridge, key: str) -> dict[str, Any]:
    message = SendText("s1", "14155550177", "a text", idempotency_key=key)
    try:
        accepted = bridge.ask(message, to_outbox=True)
    except GatewayError as exc:
        return {"key": key, "code": exc.code}
    return {"key": key, "code": "OK", "duplicate": accepted.duplicate}


def stop(port: int) -> None:
    _system(port).shutdown()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "start":
        start(int(args[0]), args[1])
    elif command == "send":
        send(int(args[0]))
    else:
        stop(int(args[0]))
