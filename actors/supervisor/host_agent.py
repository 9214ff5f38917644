"""HostAgent: the leader's hand on one member host of a cluster.

The supervisor (on the leader) places one agent on every member that joins its
convention, with the member's host name as the requirement. The agent answers the
supervisor's heartbeats, which is how the leader notices a member that died or was
cut off long before Thespian's own re-registration timer would. In the other
direction, the agent is the member's fence: when the leader stays silent for
``fence_seconds`` (shorter than the leader's own window, so it happens first), it
stops the sessions the leader placed on this host. A member cut off from the leader
thus never keeps a session connected while the leader starts it elsewhere (the same
WhatsApp device connected twice is ``StreamReplaced``, which is terminal).

The fence knows nothing of pauses (unlike the leader's check, which forgives its own):
a member that was frozen itself may have been given up by the leader meanwhile, and
stopping its sessions once too often only costs a reconnect.

With leases (``cluster.database_url``), the agent also reconciles by pid: every
local session process that was granted a lease (its mark, ``actors.leases.local``)
must still hold it by the database's clock; one that does not is stopped, and killed
half a margin later (``actors.leases.reconcile``). That covers a process too stuck or
stopped to let go by itself. While the leader is silent, the agent stops every local
session process that was granted a lease and started before the silence was found,
not only those in the last heartbeat's list: a process the leader started after that
beat holds its lease, and nobody else would stop it (one started later is another
leader's, after a failover). Each look at the database waits at most a second, on a
thread of its own (``actors.leases.bounded``). The leader hears of each such stop
before the signal (``LeaseFenced``), as of a fence (``SessionsFenced``): neither is a
crash. The check itself is ``actors.leases.host_check``, which the leader's own host
runs too (``actors.supervisor.lease_agent``).

The member's launcher also uses this class, locally and briefly, to learn the process
group of its actor system (``WhoAreYou``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.leases.local import ticks_now
from actors.messages import (
    FENCE_LEADER_SILENT,
    FENCE_NO_LEASE,
    HostBeat,
    HostBeatAck,
    LeaseFenced,
    SessionsFenced,
    StartAgent,
)
from actors.run_once import RunOnce
from actors.supervisor.lease_agent import local_leases
from actors.supervisor.placement import HeartbeatTracker
from actors.system import on_required_host
from actors.whoami import TellsItsProcess

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.leases.host_check import LocalLeases, Stopping

log = structlog.get_logger("wagate.host_agent")

LEADER = "leader"


@dataclass(frozen=True, slots=True)
class _Check:
    """Time to look whether the leader is still heard."""


class HostAgent(TellsItsProcess, RunOnce, ActorTypeDispatcher):
    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict, requirements: dict | None = None
                                   ) -> bool:
        """Placed by host name (``wagate_host``); without a requirement: locally."""
        return on_required_host(capabilities, requirements)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host = ""
        self.leader: Any = None
        self.tracker: HeartbeatTracker | None = None
        self.interval = 1.0
        self.sessions: tuple[tuple[str, Any], ...] = ()
        self.leases: LocalLeases | None = None  # with cluster.database_url
        # When the leader's silence was found (``ticks_now``); None while it is heard.
        self.silent_since: int | None = None

    def receiveMsg_StartAgent(self, msg: StartAgent, sender: Any) -> None:
        self.host, self.leader = msg.host, sender
        self.interval = msg.heartbeat_seconds
        # One "miss" of fence_seconds: the tracker's window is exactly that long.
        self.tracker = HeartbeatTracker(msg.fence_seconds, 1)
        self.tracker.watch(LEADER, time.monotonic())
        self.wakeupAfter(timedelta(seconds=self.interval), payload=_Check())
        self.leases = local_leases()
        log.info("host agent started", host=msg.host, fence_seconds=msg.fence_seconds)

    def receiveMsg_HostBeat(self, msg: HostBeat, sender: Any) -> None:
        if self.tracker is None:
            return
        self.tracker.heard(LEADER, time.monotonic())
        self.silent_since = None
        self.sessions = msg.sessions
        self.send(sender, HostBeatAck(self.host, msg.seq))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if not isinstance(msg.payload, _Check) or self.tracker is None:
            return
        # The next check first: a failed handler is not run again (RunOnce).
        self.wakeupAfter(timedelta(seconds=self.interval), payload=_Check())
        silent = self.tracker.lost(time.monotonic())
        if silent and self.silent_since is None:
            self.silent_since = ticks_now()
        if silent and self.sessions:
            log.error("the leader has gone quiet; stopping the sessions it placed here so "
                      "that no session runs twice", host=self.host,
                      sessions=[s for s, _ in self.sessions])
            # Told first: these exits are fenced stops, not crashes.
            self.send(self.leader, SessionsFenced(self.host, self.sessions))
            for _, address in self.sessions:
                self.send(address, ActorExitRequest())
            self.sessions = ()
        if self.leases is not None:
            # A silent leader: every local session process it may have started goes,
            # named or not (C1); one started since is another leader's.
            if self.silent_since is not None:
                self.leases.fence(self.silent_since, self._telling(FENCE_LEADER_SILENT))
            else:
                self.leases.reconcile(self._telling(FENCE_NO_LEASE))

    def _telling(self, reason: str) -> Callable[[Stopping, str], None]:
        """How the check tells the leader of the processes it stops, before the signal
        (or after one ended itself, ``lost``): fenced stops, not crashes. A session the
        last beat named is told twice (SessionsFenced too); the leader records it once."""
        def tell(processes: Stopping, lost: str) -> None:
            self.send(self.leader, LeaseFenced(self.host, processes, lost or reason))
        return tell

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.tracker = None
        if self.leases is not None:
            self.leases.close()
