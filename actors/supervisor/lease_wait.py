"""The sessions the leader may not start yet because their lease is held (issue 22).

The supervisor's shell around ``actors.leases.gate``: it keeps the sessions waiting to
start, asks the lease database about all of them in one bounded statement, and says
which may start now and when to ask again. No Thespian here: the supervisor schedules
the next question and starts the processes.

The question runs on a thread of its own and the supervisor waits for it at most
``QUESTION_TIMEOUT_SECONDS`` (``actors.leases.bounded``). An unanswered question
starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.leases.bounded import BoundedQuestion
from actors.leases.gate import Verdict, next_check, standby, unreachable, verdict
from actors.leases.leader import LeaderLock
from actors.leases.store import Lease, LeaseStore

# The supervisor's questions must come back quickly: it answers the web tier too.
QUESTION_TIMEOUT_SECONDS = 1.0


@dataclass
class Checked:
    """One look at the waiting sessions."""

    ready: list[str] = field(default_factory=list)
    waiting: dict[str, Verdict] = field(default_factory=dict)
    next_in: float | None = None
    # The lock's holder (or its absence) answered "not ours": this leader is a standby.
    standby: bool = False


class LeaseWaits:
    """Sessions waiting for their lease before the leader starts them."""

    def __init__(self, store: LeaseStore,
                 timeout_seconds: float = QUESTION_TIMEOUT_SECONDS,
                 lock: LeaderLock | None = None) -> None:
        self.store = store
        # Leadership (actors.leases.leader): with a lock, only its holder starts sessions.
        self.lock = lock
        self.timeout_seconds = timeout_seconds
        self.sessions: set[str] = set()
        self._schema_ready = False
        self._question: BoundedQuestion[dict[str, Lease] | None] = BoundedQuestion(
            timeout_seconds, "lease-question")

    def add(self, session: str) -> None:
        self.sessions.add(session)

    def discard(self, session: str) -> None:
        self.sessions.discard(session)

    def claim(self) -> bool | None:
        """Try to hold the leadership lock now, whether sessions wait or not (the lock's
        holder publishes its address, which members join): True when it holds it,
        False when it does not, None when the question went unanswered (a server that
        does not answer grants the lock to nobody else either: nothing changed)."""
        lock = self.lock
        if lock is None:
            return True
        # On the one question thread: the lock's connection is never used by two.
        answer = self._question.ask(lambda: {} if lock.try_acquire() else None)
        if isinstance(answer, str):
            return None
        return answer is not None

    def check(self) -> Checked:
        """Ask the database once about every waiting session; the ready ones are no
        longer waiting (the caller starts them)."""
        if not self.sessions:
            return Checked()
        timing = self.store.timing
        rows = self._ask(sorted(self.sessions))
        if rows is None or isinstance(rows, str):
            down = (standby(timing.renew) if rows is None
                    else unreachable(rows, timing.renew))
            found = Checked(waiting=dict.fromkeys(sorted(self.sessions), down),
                            standby=rows is None)
            found.next_in = next_check(list(found.waiting.values()))
            return found
        found = Checked()
        for session in sorted(self.sessions):
            said = verdict(rows.get(session), timing.margin, timing.renew)
            if said.start:
                found.ready.append(session)
            else:
                found.waiting[session] = said
        self.sessions.difference_update(found.ready)
        found.next_in = next_check(list(found.waiting.values()))
        return found

    def close(self) -> None:
        if not self._question.hanging:  # a hanging question keeps its connections
            self.store.close()
            if self.lock is not None:
                self.lock.release()

    def _ask(self, sessions: list[str]) -> dict[str, Lease] | str | None:
        """The rows of ``sessions``, or why there is no answer, within the bound; None
        when another leader holds the leadership lock."""

        def question() -> dict[str, Lease] | None:
            if self.lock is not None and not self.lock.try_acquire():
                return None
            if not self._schema_ready:  # a new database: no session has made it yet
                self.store.ensure_schema()
                self._schema_ready = True
            return self.store.current_many(sessions)

        return self._question.ask(question)
