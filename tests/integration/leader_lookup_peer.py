"""A peer process for test_leader_supervisor.py: each command runs in a process of its
own, as Thespian keeps one actor system per process.

    start PORT leader|member [LEADER_PORT]   start an Admin (a leader also creates the
                                             global actor); returns once it listens
    lookup MEMBER_PORT OTHER_LEADER_PORT     through the member: find the followed
                                             leader's actor, ask it, move the member to
                                             the other leader, find and ask again;
                                             prints the two answers as JSON
    stop PORT                                shut that Admin down
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from thespian.actors import Actor

from actors import leader_supervisor
from actors.system import bind_only

NAME = "test.leader-supervisor"
LOOPBACK = "127.0.0.1"
SECONDS = 5.0


class Named(Actor):  # type: ignore[misc]
    """The leader's global actor: never on a member, as the supervisor."""

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any],
                                   requirements: dict[str, Any] | None = None) -> bool:
        return capabilities.get("test_role") != "member"

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if msg == "who":
            self.send(sender, {"port": self.admin_port, "pid": os.getpid()})

    @property
    def admin_port(self) -> Any:
        return os.environ.get("LEADER_LOOKUP_PORT")


def _system(port: int, **capabilities: Any) -> Any:
    bind_only(LOOPBACK)
    from thespian.actors import ActorSystem

    return ActorSystem("multiprocTCPBase", {"Admin Port": port, **capabilities})


def start(port: int, role: str, leader: int | None) -> None:
    os.environ["LEADER_LOOKUP_PORT"] = str(port)  # inherited by the Admin and its actors
    capabilities: dict[str, Any] = {"test_role": role}
    if leader is not None:
        capabilities["Convention Address.IPv4"] = f"{LOOPBACK}:{leader}"
    system = _system(port, **capabilities)
    if role == "leader":
        system.createActor(Named, globalName=NAME)


def lookup(member: int, other: int) -> None:
    system = _system(member)
    answers = [_ask_found(system, member)]
    system.updateCapability("Convention Address.IPv4", f"{LOOPBACK}:{other}")
    answers.append(_ask_found(system, member))
    print(json.dumps(answers))


def _ask_found(system: Any, member: int) -> Any:
    local = leader_supervisor.admin_address(system, LOOPBACK, member)
    found = leader_supervisor.find(system.ask, local, NAME, SECONDS)
    return None if found is None else system.ask(found.supervisor, "who", SECONDS)


def stop(port: int) -> None:
    _system(port).shutdown()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "start":
        start(int(args[0]), args[1], int(args[2]) if len(args) > 2 else None)
    elif command == "lookup":
        lookup(int(args[0]), int(args[1]))
    else:
        stop(int(args[0]))
