"""The supervisor's children, by typed key.

The supervisor keeps its children by a key of its own, never by actor address
(addresses are unhashable and ports get reused): the two workers by kind, each
session by its id. ``ChildKey`` says which one it is as two fields, so no code has to
take a string like ``"session:<id>"`` apart again.

Nothing here is stored or sent to another host: the supervisor's registry on disk
holds plain dicts by session id, and ``HostBeat`` names sessions by id. Plain data,
no Thespian: the supervisor and its cluster half both read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from actors.messages import SessionCommand
from actors.supervisor.policy import RestartBudget

Kind = Literal["audit", "outbox", "webhooks", "session"]


@dataclass(frozen=True, slots=True)
class ChildKey:
    """Which child: a worker by its kind, or a session by its id (``name``)."""

    kind: Kind
    name: str = ""  # the session id; "" for the workers

    @classmethod
    def of_session(cls, session: str) -> ChildKey:
        return cls("session", session)

    @property
    def is_session(self) -> bool:
        return self.kind == "session"

    def __str__(self) -> str:
        """For the log only (``session:<id>``, ``outbox``): never parsed back."""
        return f"{self.kind}:{self.name}" if self.is_session else self.kind


AUDIT = ChildKey("audit")
OUTBOX = ChildKey("outbox")
WEBHOOKS = ChildKey("webhooks")
# started in this order: the audit log's writer first
WORKERS = (AUDIT, OUTBOX, WEBHOOKS)


@dataclass
class Child:
    """One supervised actor."""

    actor_class: type
    address: Any = None
    incarnation: int = 0
    retiring: bool = False  # asked to exit: its ChildActorExited is not a crash
    respawn: bool = False  # a command arrived while retiring: start a new process after
    failures: int = 0  # consecutive crashes, for the backoff
    budget: RestartBudget | None = None
    pending_commands: list[SessionCommand] = field(default_factory=list)
    host: str | None = None  # where its current process runs (cluster placement)
    resume_attempt: int = 1  # the connect attempt its next process goes on with
    # The process whose exit last counted as a crash, and when: a fence notice that
    # arrives after that exit takes the crash back (RestartBudget.pardon).
    crashed: tuple[Any, float] | None = None
    # (host, pid) of its current process, as that process reported it, and of the
    # process whose exit last counted as a crash: a host's lease check names the
    # processes it stops by pid (``process_at``).
    pid: tuple[str, int] | None = None
    crashed_pid: tuple[str, int] | None = None

    def process_at(self, host: str, pid: int) -> Any:
        """The address of this child's process ``pid`` on ``host``: its current one, or
        the one whose exit last counted as a crash; None for any other (a pid the
        supervisor never heard from, or of a process replaced since)."""
        if self.address is not None and self.pid == (host, pid):
            return self.address
        if self.crashed is not None and self.crashed_pid == (host, pid):
            return self.crashed[0]
        return None

    def fence(self, address: Any) -> str | None:
        """A member's agent stopped this child's process at ``address`` (the fence): a
        stop, not a crash. "retire" when its exit is still to come (that exit then
        starts the next process at once, like a retirement: no backoff, no budget);
        "pardon" when its exit came first and counted as a crash (taken back); None
        for another process (one already moved or replaced: nothing to correct)."""
        if address is None:
            return None
        if self.address is not None and self.address == address:
            if not self.retiring:
                self.retiring = self.respawn = True
            return "retire"
        if self.crashed is not None and self.crashed[0] == address:
            if self.budget is not None:
                self.budget.pardon(self.crashed[1])
            self.failures = max(0, self.failures - 1)
            self.crashed = self.crashed_pid = None
            return "pardon"
        return None


class Children(dict[ChildKey, Child]):
    """Every supervised child by key, with the questions asked of them as a group."""

    def sessions(self) -> Iterator[tuple[str, Child]]:
        """Each session child with its session id."""
        for key, child in list(self.items()):
            if key.is_session:
                yield key.name, child

    def session(self, session: str) -> Child | None:
        return self.get(ChildKey.of_session(session))

    def address(self, key: ChildKey) -> Any:
        """The child's current address; None while it (re)starts or if there is none."""
        child = self.get(key)
        return child.address if child is not None else None

    def key_of(self, address: Any) -> ChildKey | None:
        """The key of the child whose current process is at ``address``."""
        return next((k for k, c in self.items() if c.address == address), None)

    def session_hosts(self, running_only: bool = False, but: str | None = None) -> list[str]:
        """The host of each session child (placement and the health report count
        them); ``running_only`` leaves out those without a process now, ``but`` one
        session."""
        return [c.host for s, c in self.sessions() if c.host is not None and s != but
                and (c.address is not None or not running_only)]

    def running_sessions(self) -> list[tuple[str, Child]]:
        """The sessions with a process up and not already on its way out: what a
        leader that steps down stops (each is started again once it leads)."""
        return [(s, c) for s, c in self.sessions() if c.address is not None and not c.retiring]

    def placed_on(self, host: str) -> tuple[tuple[str, Any], ...]:
        """The sessions whose current process runs on ``host``: (id, address)."""
        return tuple((s, c.address) for s, c in self.sessions()
                     if c.host == host and c.address is not None)
