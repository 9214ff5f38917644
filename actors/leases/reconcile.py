"""What a host's agent does with the local session processes: pure, no I/O.

Every local process that was granted a lease (``actors.leases.local``) must still
hold it: a row with this host, its pid and its epoch, unexpired by the database's
clock. One that does not is asked to stop (SIGTERM) and, if it is still there
``grace`` seconds later, killed (SIGKILL): a process stuck in a call or stopped can
do neither by itself. The grace is half the margin, so the kill lands before anyone
may take the lease. When the database does not answer, nothing is decided: the
process's own keeper stops it by its own deadline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from actors.leases.local import Mark


@dataclass(frozen=True, slots=True)
class Actions:
    """Pids to ask to stop now, pids to kill now, and the stops still pending (pid ->
    when it was first asked, on the agent's clock)."""

    term: tuple[int, ...]
    kill: tuple[int, ...]
    pending: dict[int, float]


def reconcile(local: Iterable[Mark], held: set[tuple[int, int]],
              pending: Mapping[int, float], now: float, grace: float) -> Actions:
    """``held``: (pid, epoch) of this host's current leases."""
    term: list[int] = []
    kill: list[int] = []
    still: dict[int, float] = {}
    for entry in local:
        if (entry.pid, entry.epoch) in held:
            continue
        asked = pending.get(entry.pid)
        if asked is None:
            term.append(entry.pid)
            still[entry.pid] = now
        elif now - asked >= grace:
            kill.append(entry.pid)
            still[entry.pid] = asked
        else:
            still[entry.pid] = asked
    return Actions(tuple(term), tuple(kill), still)
