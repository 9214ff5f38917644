"""May the leader start a session process now? Pure: no database, no actors.

A session's new process must never be started while another process may still be
connected to its account (issue 22). The lease row says who holds it, by the
database's clock; the rule is the one ``actors.leases.store`` applies to a grant: the
lease is free when it was released, or expired at least ``margin`` seconds ago. The
leader asks before every start, so a lost host's session waits for its lease to run
out (its holder disconnects by then, or is killed by its own fence), and a restarted
leader never starts a session whose lease is held elsewhere. The leader's own clock
only decides when to ask again, never whether the lease is free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# How often to ask again at most, and at least: the database's answer decides, these
# only pace the questions.
MIN_RECHECK_SECONDS = 0.05


class LeaseRow(Protocol):
    """What the gate needs of a lease row (``actors.leases.store.Lease`` fits)."""

    @property
    def owner_host(self) -> str: ...
    @property
    def owner_pid(self) -> int: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def released(self) -> bool: ...
    @property
    def db_now(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """Start now, or ask again in ``wait_seconds`` (``reason`` says why, for health)."""

    start: bool
    wait_seconds: float = 0.0
    reason: str = ""
    code: str = "LEASE_HELD"  # the status's lastError code while it waits


START = Verdict(True)


def verdict(row: LeaseRow | None, margin: float, recheck_cap: float) -> Verdict:
    """The verdict for one session's lease row (None: it never had one). A wait is
    until the lease is free by the database's clock, asked again at most every
    ``recheck_cap`` seconds (a release may free it earlier)."""
    if row is None or row.released:
        return START
    left = (row.expires_at - row.db_now).total_seconds() + margin
    if left <= 0:
        return START
    return Verdict(False, max(MIN_RECHECK_SECONDS, min(left, recheck_cap)),
                   f"waiting for its lease: held by host {row.owner_host} (pid "
                   f"{row.owner_pid}) for {max(0.0, left - margin):.1f} s more, then "
                   f"{margin:g} s of margin by the database's clock; the session starts "
                   "once it is free")


def unreachable(error: str, retry: float) -> Verdict:
    """The lease database did not answer: nothing may start (the lease may be held)."""
    return Verdict(False, max(MIN_RECHECK_SECONDS, retry),
                   f"waiting for its lease: the lease database does not answer ({error}); "
                   "the session starts once it answers and the lease is free")


def standby(retry: float) -> Verdict:
    """Another leader holds the leadership lock: only the holder starts sessions."""
    return Verdict(False, max(MIN_RECHECK_SECONDS, retry),
                   "this leader is a standby: another leader holds the leadership lock in "
                   "the lease database (or this one lost it and waits its turn), and only "
                   "the holder starts sessions; it takes over once that leader's database "
                   "connection ends", code="LEADER_STANDBY")


def next_check(verdicts: list[Verdict]) -> float | None:
    """When to ask again about the sessions still waiting; None when none waits."""
    waits = [v.wait_seconds for v in verdicts if not v.start]
    return min(waits) if waits else None
