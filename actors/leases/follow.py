"""Which leader a member joins: the one holding the leadership lock (issue 22). Pure.

A member takes part in one Thespian convention at a time, the one of the address in
its ``Convention Address.IPv4`` capability. With leases, the active leader is the
holder of the PostgreSQL advisory lock (``actors.leases.leader``), which publishes its
convention address; the member's launcher reads it every ``lease_renew_seconds`` and
re-joins when it changed. This module decides, from what was read, whether to move.

A member moves only to an address listed in its own ``cluster.leaders``: the database
names the leader, but never makes a member talk to a host its operator did not list.
It never moves on an unknown answer (database unreachable) or to a published leader
that no longer holds the lock (it died; a standby will publish itself). A leader
restarted at the same address is joined again (Thespian's member would otherwise
wait for its own re-registration timer, which did not bring it back in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class PublishedLeader(Protocol):
    """What the decision needs of the published row (``leader.Published`` fits)."""

    @property
    def address(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def held(self) -> bool: ...


def incarnation(published: PublishedLeader) -> tuple[str, int]:
    """Which run of a leader holds the lock: a leader restarted at the same address is
    another one, which the member must register with again."""
    return published.host, published.pid


@dataclass(frozen=True, slots=True)
class Move:
    """Re-join ``to`` (None: stay); ``problem``: why a published leader is refused."""

    to: str | None = None
    problem: str | None = None


STAY = Move()


def decide(leaders: Sequence[str], joined: str, published: PublishedLeader | None,
           joined_run: tuple[str, int] | None = None) -> Move:
    """Where a member that joined ``joined`` (the leader's run ``joined_run``, None when
    not known) should be, given the published leader. The same address held by
    another run is a move too: the member registers with the restarted leader."""
    if published is None or not published.held:
        return STAY
    if published.address == joined and incarnation(published) == joined_run:
        return STAY
    if published.address not in leaders:
        return Move(problem=(
            f"the active leader publishes {published.address}, which is not in this "
            f"member's cluster.leaders ({', '.join(leaders)}): this member stays with "
            f"{joined}; list every leader's \"advertise_address:admin_port\" in "
            "cluster.leaders"))
    return Move(to=published.address)


def first_leader(leaders: Sequence[str]) -> str:
    """The address a member joins at start, before it has read the database."""
    return leaders[0]
