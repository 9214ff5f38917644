"""LeaseAgent: the leader's own host checks its session processes against their leases.

A member's ``HostAgent`` stops every local session process that no longer holds a
current lease, and kills it half a margin later (issue 22, item 1). The leader's host
runs session processes too (its ``cluster.sessions`` slots), and one of them stopped
or stuck in a call cannot let go by itself either: its own keeper's threads do not
run while the process is stopped, so its account would stay connected while the
leader, whose gate sees the lease expire, starts a new process for it. So in lease
mode the supervisor starts this actor on its own host (required by host name) and
sends it the ``StartAgent`` a member's agent gets; it runs the same check
(``actors.leases.host_check``) every ``heartbeat_seconds``, and tells the supervisor
(``LeaseFenced``) before it stops a process, so that stop is a fenced one, not a crash.
It fences nothing else: the leader's own sessions are never "placed by a leader that
went quiet".

Its own process: a look at a database that does not answer waits up to a second,
which the supervisor (which answers the web tier) must not spend. If it dies, the
supervisor starts another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.messages import FENCE_NO_LEASE, LeaseFenced, StartAgent
from actors.run_once import RunOnce
from actors.system import host_config, host_name, on_required_host
from gateway.core.config import lease_mode

if TYPE_CHECKING:
    from actors.leases.host_check import LocalLeases, Stopping

log = structlog.get_logger("wagate.lease_agent")


def local_leases() -> LocalLeases | None:
    """This host's lease check in lease mode (``cluster.database_url``), else None;
    psycopg is imported only then."""
    config = host_config()
    if config is None or not lease_mode(config):
        return None
    from actors.leases.host_check import LocalLeases

    return LocalLeases(config.cluster, config.data_path, host_name(config))


@dataclass(frozen=True, slots=True)
class _Look:
    """Time to check the local session processes again."""


class LeaseAgent(RunOnce, ActorTypeDispatcher):
    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict, requirements: dict | None = None
                                   ) -> bool:
        """Placed by host name: the supervisor's own."""
        return on_required_host(capabilities, requirements)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interval = 1.0
        self.leases: LocalLeases | None = None
        self.host = ""
        self.supervisor: Any = None  # told of every process this agent stops

    def receiveMsg_StartAgent(self, msg: StartAgent, sender: Any) -> None:
        if self.leases is not None:
            return
        self.interval = msg.heartbeat_seconds
        self.host, self.supervisor = msg.host, sender
        self.leases = local_leases()
        if self.leases is None:
            log.warning("lease agent started without lease mode; it does nothing")
            return
        self.wakeupAfter(timedelta(seconds=self.interval), payload=_Look())
        log.info("lease agent started", host=msg.host, every_seconds=self.interval)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if not isinstance(msg.payload, _Look) or self.leases is None:
            return
        # The next look first: a failed handler is not run again (RunOnce).
        self.wakeupAfter(timedelta(seconds=self.interval), payload=_Look())
        self.leases.reconcile(self._fenced)

    def _fenced(self, processes: Stopping, lost: str) -> None:
        """Told before the signal (or after a process ended itself, ``lost``): these
        exits are fenced stops, not crashes."""
        self.send(self.supervisor, LeaseFenced(self.host, processes, lost or FENCE_NO_LEASE))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.leases is not None:
            self.leases.close()
            self.leases = None
