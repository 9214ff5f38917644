"""A member's launcher follows the active leader (issue 22, one active leader).

Every ``cluster.lease_renew_seconds`` it asks the lease database which leader holds the
leadership lock (``actors.leases.leader.LeaderDirectory``, at most 1 s on a thread of
its own) and, when that is another of its ``cluster.leaders`` than the one it joined,
re-joins it by changing its Admin's ``Convention Address.IPv4`` capability: Thespian's
Admin then registers with the new address at once (``capabilities_have_changed`` ->
``setup_convention`` in thespian/system/admin/convention.py), the new leader's
supervisor sees the member join and places its agent there. The member's sessions
are not restarted by the move: the old leader's agent fences them when that leader
goes quiet, and the new leader places them again once their leases are free. A
leader restarted at the same address is another run (host and pid in the row): the
member registers with it again the same way.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from actors.leases.follow import decide, first_leader, incarnation
from gateway.core.config import Config

log = structlog.get_logger("wagate.serve")

CONVENTION_CAPABILITY = "Convention Address.IPv4"
QUESTION_SECONDS = 1.0


class LeaderFollower:
    """The launcher's side: ``tick`` from its serving loop, as often as it likes."""

    def __init__(self, config: Config) -> None:
        from actors.leases.bounded import BoundedQuestion
        from actors.leases.leader import LeaderDirectory, Published

        cluster = config.cluster
        self.leaders = tuple(cluster.leaders)
        self.joined = first_leader(self.leaders)
        self.period = cluster.lease_renew_seconds
        self.directory = LeaderDirectory(cluster.database_url,
                                         timeout_seconds=QUESTION_SECONDS)
        self.question: BoundedQuestion[Published | None] = BoundedQuestion(
            QUESTION_SECONDS, "leader-directory")
        self.joined_run: tuple[str, int] | None = None  # which run of it, when known
        self.next_at = 0.0
        self.problem: str | None = None

    def start(self) -> str:
        """The address to join at start: the leader holding the lock when the database
        names a listed one within the bound, else the first of ``cluster.leaders``.
        The connection is closed again before the actor system forks its Admin."""
        published = self.question.ask(self.directory.current)
        if not isinstance(published, str) and published is not None:
            move = decide(self.leaders, self.joined, published, self.joined_run)
            if move.to is not None:
                self.joined, self.joined_run = move.to, incarnation(published)
        self.close()
        return self.joined

    def tick(self, system: Any) -> None:
        """Ask when the period is over; re-join when the active leader changed."""
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.period
        published = self.question.ask(self.directory.current)
        if isinstance(published, str):
            return  # unknown: stay where we are
        move = decide(self.leaders, self.joined, published, self.joined_run)
        if move.problem is not None and move.problem != self.problem:
            log.error(move.problem)
        self.problem = move.problem
        if move.to is None:
            return
        assert published is not None  # decide moves only to a published leader
        log.warning("the active leader changed; this member joins it", old=self.joined,
                    new=move.to, leader_host=published.host, leader_pid=published.pid)
        try:
            system.updateCapability(CONVENTION_CAPABILITY, move.to)
        except Exception as exc:  # the Admin did not confirm: asked again next period
            log.error("could not re-join the active leader; trying again", new=move.to,
                      error=repr(exc))
            return
        self.joined, self.joined_run = move.to, incarnation(published)

    def close(self) -> None:
        if not self.question.hanging:
            self.directory.close()
