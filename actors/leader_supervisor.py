"""How a member's processes find the active leader's supervisor (issue 22).

A member runs no supervisor: the leader's supervisor serves its web tier. Asking the
member's Admin for it by global name (``createActor(..., globalName=...)``) works only
once per Admin in Thespian 4.0.1: the Admin cannot create the supervisor itself, so it
passes the request to the convention leader, which answers the requester directly;
the member's Admin keeps its own record of that request as pending forever
(``GlobalNamesAdmin.h_PendingActor`` in thespian/system/admin/globalNames.py), and
every later request for the same name joins it and is never answered (the caller
gives up after Thespian's 50 s). After a leader failover the web tier also kept the
dead leader's supervisor.

So a member asks instead, with Thespian's status message (``Thespian_StatusReq``,
answered by every Admin itself): its own Admin says which convention leader it
follows (``conventionLeader``: the address the launcher last gave it, see
``gateway.cli.leader_follow``), and that leader's Admin lists its global actors, the
supervisor among them. Nothing is cached in an Admin, so after a failover the next
lookup finds the new leader's supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ask(target, message, seconds) -> the reply, or None when none came in time.
Ask = Callable[[Any, Any, float], Any]


@dataclass(frozen=True)
class LeaderSupervisor:
    """The convention leader's Admin and its supervisor (Thespian addresses)."""

    leader: Any
    supervisor: Any


def admin_address(system: Any, address: str, port: int) -> Any:
    """The Thespian address of the Admin listening on ``address:port``.

    Thespian 4.0.1 offers no public way to name an Admin; this is the transport call its
    own shell uses (thespian/shell.py, ``parseActorAddress``). The only private access
    of this module: ``tests/unit/test_leader_supervisor.py`` breaks if it changes.
    """
    return system._systemBase.transport.getAddressFromString((address, port))


def following(ask: Ask, local_admin: Any, seconds: float) -> Any:
    """The convention leader the member's Admin follows now; None: no answer."""
    status = _status(ask, local_admin, seconds)
    return None if status is None else status.conventionLeader


def supervisor_of(ask: Ask, leader: Any, name: str, seconds: float) -> Any:
    """The actor ``leader``'s Admin holds under the global ``name``; None: no answer
    (a dead leader) or no such actor (a leader still starting)."""
    status = _status(ask, leader, seconds)
    return None if status is None else status.globalActors.get(name)


def find(ask: Ask, local_admin: Any, name: str, seconds: float) -> LeaderSupervisor | None:
    """The followed leader and its supervisor, each question bounded by ``seconds``;
    None when either is not known."""
    leader = following(ask, local_admin, seconds)
    if leader is None:
        return None
    supervisor = supervisor_of(ask, leader, name, seconds)
    return None if supervisor is None else LeaderSupervisor(leader, supervisor)


def is_status(reply: Any) -> bool:
    """Whether ``reply`` is an Admin's answer to a status question (anything else on
    the same context is a late reply to an earlier question)."""
    from thespian.system.messages.status import Thespian_SystemStatus

    return isinstance(reply, Thespian_SystemStatus)


def _status(ask: Ask, admin: Any, seconds: float) -> Any:
    """An Admin's ``Thespian_SystemStatus``; None: no answer in time."""
    from thespian.actors import Thespian_StatusReq

    reply = ask(admin, Thespian_StatusReq(), seconds)
    return reply if is_status(reply) else None
