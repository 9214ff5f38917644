"""The cluster half of the supervisor (``cluster.role = "leader"``), as an object the
supervisor holds (``SupervisorActor.cluster``).

Members announce themselves through Thespian's convention (``ActorSystemConventionUpdate``
with their capabilities: host name, slots). For each one the supervisor places a
``HostAgent`` there and sends it a heartbeat every ``cluster.heartbeat_seconds``; a
member silent for ``heartbeat_misses`` of them is lost, and its sessions are started
again on the remaining hosts at once (credentials come from the shared session store;
the outbox hands their queued messages to the new processes). Thespian itself would
notice a dead host only after its re-registration window, and never tells a parent
that the children it had there are gone (docs/architecture.md §4).

A check that runs more than 1.5 heartbeats after the previous one means the leader
itself was paused (``placement.PauseDetector``): it could not hear anyone, so it
declares nobody lost and gives every member a new window.

A member that answers again is used for new placements only: its old sessions were
stopped by its agent (the fence) and run elsewhere now, so it never gets a second copy.

A member that runs another wagate (``actors.protocol``: version, protocol, message
layout, Python) is refused: no agent, no session, and the health report lists it
with the reason until a matching host of that name joins (the member refuses too).

The two halves meet at a small interface. ``Cluster`` owns the hosts (who is there,
alive, refused, how many slots) and decides where a session goes; the supervisor owns
the children and the sessions. The supervisor calls the public methods below from
its Thespian handlers and passes in what they need to know of its children; the
cluster asks the supervisor for the rest through ``ClusterOwner``, the only calls it
makes back. No Thespian here: the owner sends, creates and stops actors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from actors.messages import HostBeat, StartAgent
from actors.protocol import describe, identity, incompatibility
from actors.supervisor.placement import HeartbeatTracker, choose_host, loads
from actors.system import HOST_CAPABILITY, ROLE_CAPABILITY, SLOTS_CAPABILITY
from gateway.core.config import ClusterConfig

log = structlog.get_logger("wagate.supervisor")

# Refused members kept for the health report: any system in allow_networks can
# register under any name, so the list is bounded (the oldest goes first).
MAX_REFUSED_HOSTS = 16


@dataclass
class Host:
    """One actor system of the cluster (this one included), by host name."""

    name: str
    role: str  # "leader" | "member" ("single" on one host)
    slots: int
    admin: Any = None  # its Thespian Admin (None: this host)
    agent: Any = None  # its HostAgent (members only)
    alive: bool = True  # False once its heartbeats stopped: nothing new is placed there
    runs: str = ""  # the wagate it runs (actors.protocol.describe)


@dataclass(frozen=True, slots=True)
class RefusedHost:
    """A member that runs another wagate: nothing is placed on it."""

    name: str
    runs: str
    reason: str


@dataclass(frozen=True, slots=True)
class HostCheck:
    """Time to send heartbeats to the members and to look for silent ones."""


class ClusterOwner(Protocol):
    """What the cluster asks of the supervisor that holds it, and nothing more."""

    def send(self, targetAddr: Any, msg: Any) -> None:
        """Thespian's send, from the supervisor's process."""

    def create_agent(self, host: str) -> Any:
        """Start a ``HostAgent`` on member ``host``; its address."""

    def stop_actor(self, address: Any) -> None:
        """Ask the actor at ``address`` to exit."""

    def check_hosts_after(self, seconds: float) -> None:
        """Call ``Cluster.check`` again in ``seconds`` (a ``HostCheck`` wakeup)."""

    def audit(self, event: str, **fields: Any) -> None:
        """Record ``event`` in the audit log."""

    def move_sessions(self, host: str, why: str) -> None:
        """Start every session of lost ``host`` again elsewhere, now."""


class Cluster:
    """The hosts of the cluster as the supervisor sees them; see the module docstring.

    On one host (``cluster.role = "single"``) it holds only this host, and placement
    always answers this host."""

    def __init__(self, owner: ClusterOwner, config: ClusterConfig, local_host: str,
                 local_slots: int) -> None:
        self.owner = owner
        self.config = config
        self.local_host = local_host
        self.hosts: dict[str, Host] = {local_host: Host(local_host, config.role, local_slots)}
        self.refused: dict[str, RefusedHost] = {}  # members running another wagate
        # Members' heartbeats: only a leader has members.
        self.tracker = (HeartbeatTracker(config.heartbeat_seconds, config.heartbeat_misses)
                        if config.role == "leader" else None)
        self.beat_seq = 0
        self.beats_sent: dict[int, float] = {}  # seq -> monotonic send time, the last few

    @property
    def leading(self) -> bool:
        return self.tracker is not None

    # ---- what the supervisor's handlers pass on -------------------------------------

    def member_changed(self, caps: dict[str, Any], added: bool, admin: Any) -> None:
        """A member joined (its capabilities name it) or Thespian saw it leave
        (``ActorSystemConventionUpdate``)."""
        name = caps.get(HOST_CAPABILITY)
        if self.tracker is None or not name or caps.get(ROLE_CAPABILITY) != "member":
            return
        problem = incompatibility(caps)
        if problem is not None:
            if added:
                self._refuse(name, caps, problem)
            return  # never touches a matching host that has the same name
        if not added:
            self._member_left(name, admin)
            return
        old = self.hosts.get(name)
        if old is not None and old.alive and old.admin is not None and old.admin != admin:
            self._host_lost(name, "restarted")  # back before its heartbeats were missed
        if old is not None and old.agent is not None:
            self.owner.stop_actor(old.agent)
        self.refused.pop(name, None)
        self.hosts[name] = Host(name, "member", int(caps.get(SLOTS_CAPABILITY, 0)),
                                admin=admin, runs=describe(caps))
        self.tracker.watch(name, time.monotonic())
        self._place_agent(name)
        log.info("a member joined", host=name, slots=self.hosts[name].slots)
        self.owner.audit("cluster.member_joined", host=name, slots=self.hosts[name].slots)

    def heard(self, name: str, agent: Any, seq: int) -> None:
        """The agent on host ``name`` answered heartbeat ``seq`` (``HostBeatAck``)."""
        host = self.hosts.get(name)
        if host is None or self.tracker is None or host.agent is None or host.agent != agent:
            return
        now = time.monotonic()
        sent = self.beats_sent.get(seq)
        self.tracker.heard(name, now, math.inf if sent is None else now - sent)
        if not host.alive:
            host.alive = True  # the cut healed; its sessions run elsewhere now (fenced here)
            log.warning("a member answers again; new sessions may be placed on it", host=name)
            self.owner.audit("cluster.member_back", host=name)

    def check(self, placed_on: Callable[[str], tuple[tuple[str, Any], ...]]) -> None:
        """Heartbeat time (``HostCheck``): find the silent members, and send each
        live one the sessions ``placed_on(host)`` says run there."""
        assert self.tracker is not None
        # The next check first: a failed handler is not run again (RunOnce).
        self.owner.check_hosts_after(self.config.heartbeat_seconds)
        now = time.monotonic()
        lost, pause = self.tracker.check(now)
        if pause is not None:
            log.warning("the leader's host check ran late: this process was paused, so "
                        "every member counts as just heard from", gap_seconds=round(pause, 1),
                        heartbeat_seconds=self.config.heartbeat_seconds)
        for name in lost:
            host = self.hosts.get(name)
            if host is not None and host.alive:
                log.error("a member stopped answering; moving its sessions", host=name,
                          silent_seconds=round(self.tracker.silent_for(name, now), 1))
                self._host_lost(name, "stopped answering heartbeats")
        self.beat_seq += 1
        self.beats_sent[self.beat_seq] = now
        for old in [seq for seq in self.beats_sent
                    if seq <= self.beat_seq - self.config.heartbeat_misses - 2]:
            del self.beats_sent[old]
        for name, host in list(self.hosts.items()):
            if host.role != "member":
                continue
            if host.agent is None:
                self._place_agent(name)
                continue
            self.owner.send(host.agent, HostBeat(self.beat_seq,
                                                 placed_on(name) if host.alive else ()))

    def is_agent(self, name: str, address: Any) -> bool:
        """Whether ``address`` is the current agent on member ``name``."""
        host = self.hosts.get(name)
        return host is not None and host.agent is not None and host.agent == address

    def agent_exited(self, address: Any) -> bool:
        """A child that is no session nor worker exited: if it was a host's agent,
        the next check places a new one. Whether it was."""
        found = False
        for host in self.hosts.values():
            if host.agent is not None and host.agent == address:
                host.agent = None
                found = True
        return found

    # ---- placement and the health report ---------------------------------------------

    def place(self, placed: list[str], overflow: bool) -> str | None:
        """The host for a session, given the hosts of the other sessions (``placed``):
        free slots and fewest sessions (supervisor.placement)."""
        if self.config.role == "single":
            return self.local_host
        slots = {n: h.slots for n, h in self.hosts.items() if h.alive and
                 (h.role != "member" or h.agent is not None)}
        return choose_host(loads(slots, placed), prefer=self.local_host, overflow=overflow)

    def report(self, running: list[str]) -> tuple[dict[str, Any], ...]:
        """Every host for the health report, given the host of each running session."""
        counts: dict[str, int] = {}
        for host in running:
            counts[host] = counts.get(host, 0) + 1
        now = time.monotonic()
        hosts = tuple({"name": h.name, "role": h.role, "slots": h.slots,
                       "sessions": counts.get(h.name, 0), "alive": h.alive,
                       "late": self.tracker is not None and self.tracker.late(h.name, now),
                       "runs": h.runs or describe(identity()), "refused": None}
                      for h in self.hosts.values())
        return hosts + tuple({"name": r.name, "role": "member", "slots": 0, "sessions": 0,
                              "alive": False, "late": False, "runs": r.runs,
                              "refused": r.reason}
                             for r in self.refused.values())

    # ---- inside ----------------------------------------------------------------------------

    def _member_left(self, name: str, admin: Any) -> None:
        known = self.hosts.get(name)
        if known is None or known.admin != admin:
            return  # another system under that name left, not the one we use
        log.warning("a member left the convention", host=name)
        self._host_lost(name, "left the convention")
        self.hosts.pop(name, None)
        assert self.tracker is not None
        self.tracker.forget(name)

    def _refuse(self, name: str, caps: dict[str, Any], problem: str) -> None:
        """Place nothing on member ``name``, which runs another wagate: every pickle
        between us could be misread. Said in the log, the audit log and the health
        report."""
        log.error("a member runs another wagate; nothing is placed on it (install the "
                  "same version everywhere)", host=name, problem=problem)
        if name not in self.refused:
            self.owner.audit("cluster.member_refused", host=name, reason=problem)
        self.refused.pop(name, None)  # re-inserted last: the newest is kept longest
        self.refused[name] = RefusedHost(name, describe(caps), problem)
        while len(self.refused) > MAX_REFUSED_HOSTS:
            del self.refused[next(iter(self.refused))]

    def _place_agent(self, name: str) -> None:
        host = self.hosts[name]
        host.agent = self.owner.create_agent(name)
        # The member fences itself one heartbeat before the leader gives up on it.
        beat = self.config.heartbeat_seconds
        fence = max(beat, (self.config.heartbeat_misses - 1) * beat)
        self.owner.send(host.agent, StartAgent(name, fence, beat))

    def _host_lost(self, name: str, why: str) -> None:
        """Nothing new goes to host ``name``, and the supervisor moves its sessions."""
        host = self.hosts.get(name)
        if host is None or not host.alive:
            return
        host.alive = False
        self.owner.audit("cluster.member_lost", host=name, reason=why)
        self.owner.move_sessions(name, why)
