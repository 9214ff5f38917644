"""A host's check of its own session processes against their leases (issue 22).

Every host that runs session processes in lease mode runs this check: a member's
``HostAgent`` and the leader's ``LeaseAgent`` (its own host has session processes
too). One copy, so the two hosts' rules cannot drift apart. Each look:

- reads the local marks (``actors.leases.local``: which processes of this host were
  granted a lease, with their epoch), without the database when there are none;
- asks the database once which (pid, epoch) this host holds now, by the database's
  clock, waiting at most ``timeout_seconds`` on a thread of its own
  (``actors.leases.bounded``): an actor must not hang on a database that does not
  answer, and an unanswered look decides nothing (each process's own keeper stops it
  by its own deadline);
- applies ``actors.leases.reconcile``: SIGTERM to a process without a current lease,
  SIGKILL half a margin later if it is still there (stopped or stuck in a call, it
  can do neither by itself). Before the SIGTERM it names the processes (session, pid)
  to ``tell``: the actor tells the supervisor, so these exits are recorded as fenced
  stops, not crashes that spend the restart budget. A process that ended itself after
  losing its lease (its mark says why, ``lost``) is told of the same way, after its
  exit.

No Thespian here: the actors call ``reconcile`` from their timers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import structlog

from actors.leases.bounded import BoundedQuestion
from actors.leases.local import Mark, marks, marks_dir
from actors.leases.reconcile import reconcile
from actors.leases.store import LeaseStore
from actors.leases.timing import LeaseTiming
from gateway.core.config import ClusterConfig

log = structlog.get_logger("wagate.lease_check")

# One look at the database waits at most this long: the agent answers heartbeats too.
QUESTION_TIMEOUT_SECONDS = 1.0

# (session id, pid) of local processes fenced: about to be stopped for holding no
# lease, or ended by themselves after losing it.
Stopping: TypeAlias = tuple[tuple[str, int], ...]


def _nobody(_processes: Stopping, _lost: str) -> None:
    """No one to tell (the default)."""


class LocalLeases:
    """This host's session processes, checked against their leases."""

    def __init__(self, cluster: ClusterConfig, data_path: Path, host: str, *,
                 timeout_seconds: float = QUESTION_TIMEOUT_SECONDS,
                 kill: Callable[[int, int], None] = os.kill) -> None:
        timing = LeaseTiming.of(cluster)
        self.store = LeaseStore(cluster.database_url, timing, host=host,
                                timeout_seconds=timeout_seconds)
        self.question: BoundedQuestion[set[tuple[int, int]]] = BoundedQuestion(
            timeout_seconds, "lease-reconcile")
        self.directory = marks_dir(data_path)
        # Half the margin: the kill lands before anyone may take the lease over.
        self.grace = timing.margin / 2
        self.pending: dict[int, float] = {}
        self._kill = kill

    def reconcile(self, tell: Callable[[Stopping, str], None] = _nobody) -> None:
        """One look: stop what holds no lease, kill what was asked and is still there.
        ``tell(processes, lost)`` hears of the processes to stop before any is
        signalled (``lost`` ""), and of those that ended themselves after losing their
        lease (``lost``: why, as their mark says)."""
        local = self._look(tell)
        if not local:
            self.pending = {}
            return
        held = self.question.ask(self.store.held_by_host)
        if isinstance(held, str):
            return  # unknown: each process's own keeper stops it by its deadline
        self._apply(local, held, tell, "a local session process holds no lease; stopping it")

    def fence(self, started_before: int,
              tell: Callable[[Stopping, str], None] = _nobody) -> None:
        """One look while the leader is silent: stop every local process that was
        granted a lease and started before ``started_before`` (``local.ticks_now``
        when the silence was found), held or not, and kill what was asked and is
        still there.

        The leader's heartbeat names the sessions it placed here, but a process it
        started after its last beat (a crashed session's restart) is not named, and it
        holds its lease: the database alone would keep it, and the leader would wait
        for that lease for ever (issue 22, C1). No database look: the silent leader,
        not the lease, decides here. A process started after the silence was found
        was placed by another leader (a standby that took over): not ours to stop."""
        local = [m for m in self._look(tell) if m.started <= started_before]
        if not local:
            self.pending = {}
            return
        self._apply(local, set(), tell, "the leader has gone quiet; stopping a local "
                                        "session process")

    def _look(self, tell: Callable[[Stopping, str], None]) -> list[Mark]:
        """The live marks; those of processes that ended themselves after losing their
        lease are told of (``lost``: why, as their mark says), once, as they go."""
        ended: list[Mark] = []
        local = marks(self.directory, ended)
        for lost in sorted({m.lost for m in ended}):
            tell(tuple((m.session, m.pid) for m in ended if m.lost == lost), lost)
        return local

    def _apply(self, local: list[Mark], held: set[tuple[int, int]],
               tell: Callable[[Stopping, str], None], why: str) -> None:
        actions = reconcile(local, held, self.pending, time.monotonic(), self.grace)
        self.pending = actions.pending
        stopping = tuple((m.session, m.pid) for m in local if m.pid in actions.term)
        if stopping:
            tell(stopping, "")
        for pid, signum in ([(p, signal.SIGTERM) for p in actions.term]
                            + [(p, signal.SIGKILL) for p in actions.kill]):
            log.error(why, pid=pid, signal=signum.name, host=self.store.host)
            with contextlib.suppress(ProcessLookupError):
                self._kill(pid, signum)

    def close(self) -> None:
        if not self.question.hanging:  # a hanging question keeps its connection
            self.store.close()
