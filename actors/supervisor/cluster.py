"""The cluster half of the supervisor (``cluster.role = "leader"``), as a mixin.

Members announce themselves through Thespian's convention (``ActorSystemConventionUpdate``
with their capabilities: host name, slots). For each one the supervisor places a
``HostAgent`` there and sends it a heartbeat every ``cluster.heartbeat_seconds``; a
member silent for ``heartbeat_misses`` of them is lost, and its sessions are started
again on the remaining hosts at once (credentials come from the shared session store;
the outbox hands their queued messages to the new processes). Thespian itself would
notice a dead host only after its re-registration window, and never tells a parent
that the children it had there are gone (docs/architecture.md §4).

A member that answers again is used for new placements only: its old sessions were
stopped by its agent (the fence) and run elsewhere now, so it never gets a second copy.

A member that runs another wagate (``actors.protocol``: version, protocol, message
layout, Python) is refused: no agent, no session, and the health report lists it
with the reason until a matching host of that name joins (the member refuses too).

The mixin uses the supervisor's own state and helpers (``children``, ``statuses``,
``_respawn``, ``_set_status``, ``_link``, ``_audit``); placement itself is pure
(``actors.supervisor.placement``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from thespian.actors import ActorExitRequest, ActorSystemConventionUpdate

from actors.messages import ErrorInfo, HostBeat, HostBeatAck, SessionState, StartAgent
from actors.protocol import describe, identity, incompatibility
from actors.supervisor.host_agent import HostAgent
from actors.supervisor.placement import choose_host, loads
from actors.system import HOST_CAPABILITY, ROLE_CAPABILITY, SLOTS_CAPABILITY

if TYPE_CHECKING:
    from actors.messages import SessionStatus
    from actors.supervisor.actor import Child
    from actors.supervisor.placement import HeartbeatTracker
    from gateway.core.config import Config

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


def session_key(session: str) -> str:
    return f"session:{session}"


class ClusterSupervision:
    """Mixed into SupervisorActor; see the module docstring."""

    if TYPE_CHECKING:
        # What the mixin uses of SupervisorActor (its state, its helpers) and of
        # Thespian's Actor, declared so the type checker sees the contract between the
        # two halves; SupervisorActor defines them all.
        config: Config | None
        children: dict[str, Child]
        statuses: dict[str, SessionStatus]
        stopping: bool
        hosts: dict[str, Host]
        refused: dict[str, RefusedHost]
        local_host: str
        tracker: HeartbeatTracker | None
        beat_seq: int

        def _respawn(self, key: str) -> None: ...
        def _set_status(self, status: SessionStatus) -> None: ...
        def _audit(self, event: str, **fields: Any) -> None: ...
        def _link(self, session: str) -> None: ...
        def send(self, target: Any, message: Any) -> None: ...
        def createActor(self, actor_class: Any, targetActorRequirements: Any = None,
                        globalName: str | None = None, sourceHash: str | None = None
                        ) -> Any: ...
        def wakeupAfter(self, timePeriod: timedelta, payload: Any = None) -> None: ...

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate,
                                               sender: Any) -> None:
        """A member joined (its capabilities name it) or Thespian saw it leave."""
        caps = msg.remoteCapabilities or {}
        name = caps.get(HOST_CAPABILITY)
        if (self.tracker is None or self.stopping or not name
                or caps.get(ROLE_CAPABILITY) != "member"):
            return
        problem = incompatibility(caps)
        if problem is not None:
            if msg.remoteAdded:
                self._refuse(name, caps, problem)
            return  # never touches a matching host that has the same name
        if not msg.remoteAdded:
            known = self.hosts.get(name)
            if known is None or known.admin != msg.remoteAdminAddress:
                return  # another system under that name left, not the one we use
            log.warning("a member left the convention", host=name)
            self._host_lost(name, "left the convention")
            self.hosts.pop(name, None)
            self.tracker.forget(name)
            return
        old = self.hosts.get(name)
        if (old is not None and old.alive and old.admin is not None
                and old.admin != msg.remoteAdminAddress):
            self._host_lost(name, "restarted")  # back before its heartbeats were missed
        if old is not None and old.agent is not None:
            self.send(old.agent, ActorExitRequest())
        self.refused.pop(name, None)
        self.hosts[name] = Host(name, "member", int(caps.get(SLOTS_CAPABILITY, 0)),
                                admin=msg.remoteAdminAddress, runs=describe(caps))
        self.tracker.watch(name, time.monotonic())
        self._place_agent(name)
        log.info("a member joined", host=name, slots=self.hosts[name].slots)
        self._audit("cluster.member_joined", host=name, slots=self.hosts[name].slots)

    def _refuse(self, name: str, caps: dict[str, Any], problem: str) -> None:
        """Place nothing on member ``name``, which runs another wagate: every pickle
        between us could be misread. Said in the log, the audit log and the health
        report."""
        log.error("a member runs another wagate; nothing is placed on it (install the "
                  "same version everywhere)", host=name, problem=problem)
        if name not in self.refused:
            self._audit("cluster.member_refused", host=name, reason=problem)
        self.refused.pop(name, None)  # re-inserted last: the newest is kept longest
        self.refused[name] = RefusedHost(name, describe(caps), problem)
        while len(self.refused) > MAX_REFUSED_HOSTS:
            del self.refused[next(iter(self.refused))]

    def receiveMsg_HostBeatAck(self, msg: HostBeatAck, sender: Any) -> None:
        host = self.hosts.get(msg.host)
        if host is None or self.tracker is None or host.agent is None or host.agent != sender:
            return
        self.tracker.heard(msg.host, time.monotonic())
        if not host.alive:
            host.alive = True  # the cut healed; its sessions run elsewhere now (fenced here)
            log.warning("a member answers again; new sessions may be placed on it", host=msg.host)
            self._audit("cluster.member_back", host=msg.host)

    def _check_hosts(self) -> None:
        assert self.config is not None and self.tracker is not None
        # The next check first: a failed handler is not run again (RunOnce).
        self.wakeupAfter(timedelta(seconds=self.config.cluster.heartbeat_seconds),
                         payload=HostCheck())
        now = time.monotonic()
        for name in self.tracker.lost(now):
            host = self.hosts.get(name)
            if host is not None and host.alive:
                log.error("a member stopped answering; moving its sessions", host=name,
                          silent_seconds=round(self.tracker.silent_for(name, now), 1))
                self._host_lost(name, "stopped answering heartbeats")
        self.beat_seq += 1
        for name, host in self.hosts.items():
            if host.role != "member":
                continue
            if host.agent is None:
                self._place_agent(name)
                continue
            placed = tuple((key[len("session:"):], child.address)
                           for key, child in self.children.items()
                           if child.host == name and child.address is not None)
            self.send(host.agent, HostBeat(self.beat_seq, placed if host.alive else ()))

    def _place_agent(self, name: str) -> None:
        assert self.config is not None
        cluster = self.config.cluster
        host = self.hosts[name]
        host.agent = self.createActor(HostAgent, targetActorRequirements={HOST_CAPABILITY: name})
        # The member fences itself one heartbeat before the leader gives up on it.
        beat = cluster.heartbeat_seconds
        fence = max(beat, (cluster.heartbeat_misses - 1) * beat)
        self.send(host.agent, StartAgent(name, fence, cluster.heartbeat_seconds))

    def _host_lost(self, name: str, why: str) -> None:
        """Re-place every session of host ``name`` on the remaining hosts, now: the
        credentials are in the shared session store, so they resume without a QR code, and
        the outbox sends their queued messages to the new processes."""
        host = self.hosts.get(name)
        if host is None or not host.alive:
            return
        host.alive = False
        self._audit("cluster.member_lost", host=name, reason=why)
        now = time.time()
        for key, child in list(self.children.items()):
            if child.host != name or not key.startswith("session:"):
                continue
            session = key[len("session:"):]
            old = child.address
            child.address = None
            if old is not None:
                self.send(old, ActorExitRequest())  # if it still runs somewhere, it must stop
            if child.retiring and not child.respawn:
                del self.children[key]  # its ChildActorExited will never come
                self._link(session)
                continue
            if session in self.statuses:
                self._set_status(replace(self.statuses[session], state=SessionState.CONNECTING,
                                         updated_at=now, qr_code=None, qr_expires_at=None,
                                         connected_since=None, pid=None,
                                         last_error=ErrorInfo("HOST_LOST", f"host {name} {why}; "
                                                              "the session moves to another host")))
            self._link(session)  # address None: the outbox takes back what was in flight
            if not self.stopping:
                self._respawn(key)  # a failed start is retried; the other sessions move on

    def _place(self, session: str, overflow: bool) -> str | None:
        """The host for ``session``: free slots and fewest sessions (supervisor.placement)."""
        if self.config is None or self.config.cluster.role == "single":
            return self.local_host
        slots = {n: h.slots for n, h in self.hosts.items() if h.alive and
                 (h.role != "member" or h.agent is not None)}
        placed = [c.host for k, c in self.children.items()
                  if k.startswith("session:") and k != session_key(session) and c.host is not None]
        return choose_host(loads(slots, placed), prefer=self.local_host, overflow=overflow)

    def _host_report(self) -> tuple[dict[str, Any], ...]:
        counts: dict[str, int] = {}
        for key, child in self.children.items():
            if key.startswith("session:") and child.host is not None and child.address is not None:
                counts[child.host] = counts.get(child.host, 0) + 1
        hosts = tuple({"name": h.name, "role": h.role, "slots": h.slots,
                       "sessions": counts.get(h.name, 0), "alive": h.alive,
                       "runs": h.runs or describe(identity()), "refused": None}
                      for h in self.hosts.values())
        return hosts + tuple({"name": r.name, "role": "member", "slots": 0, "sessions": 0,
                              "alive": False, "runs": r.runs, "refused": r.reason}
                             for r in self.refused.values())
