"""Which children have stopped reading their mail: a hung process is killed, so that
it restarts like any crashed one.

The supervisor restarts a child whose process exits. A process that is alive but
stuck (a deadlock in a C library, a disk that stopped answering, a SIGSTOP) never
exits, and nothing replaced it: in issue 16's soak an outbox left stuck on a lock made
every send wait out its deadline for as long as the gateway ran. So the supervisor
asks each child on its own host who it is (``WhoAreYou``), one question at a time,
every ``probe_every`` seconds; an answer (``ProcessInfo``) shows the process reads its
mail and names its pid. A question left unanswered for ``supervisor.hang_seconds``
makes the child hung: the supervisor kills that pid, and the exit is a crash like any
other (restarted after the backoff, counted in the restart budget).

A child is judged only once it has answered a first time. Until then it may still be
opening its stores (an outbox checks its journal at start, which takes as long as the
journal is big): slow, not hung. A handler that runs longer than ``hang_seconds`` is
treated as a hang, so the key must stay above the longest a handler may take.

Durations on the monotonic clock: a wall-clock step must not make every child look
silent at once. No Thespian here: the supervisor feeds it what it sees.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

# At least this long between two questions to one child: the supervisor's heartbeat
# (actors.supervisor.snapshot) is what runs the watchdog, once a second.
MIN_PROBE_SECONDS = 1.0
QUESTIONS_PER_HANG = 4  # questions asked within one hang_seconds, at most

# A gap this long between two looks means the supervisor itself was held (stopped, a
# paused VM, a long handler of its own): see ``Watchdog.hung``.
STALL_SECONDS = 5.0

K = TypeVar("K", bound=Hashable)  # the supervisor's key of a child


def probe_every(hang_seconds: float) -> float:
    """How often each child is asked: a hang is then noticed within about
    ``hang_seconds`` plus one period."""
    return max(MIN_PROBE_SECONDS, hang_seconds / QUESTIONS_PER_HANG)


@dataclass(slots=True)
class _Watch:
    pid: int | None = None  # as the process itself last said
    asked_at: float | None = None  # the open question, if any
    last_asked: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Hung(Generic[K]):
    key: K
    pid: int
    silent_for: float  # seconds since the open question was asked


class Watchdog(Generic[K]):
    """The questions open to each child's current process, by the supervisor's key."""

    def __init__(self, hang_seconds: float) -> None:
        self.hang_seconds = hang_seconds
        self.period = probe_every(hang_seconds)
        self._watches: dict[K, _Watch] = {}
        self._last_look: float | None = None

    def forget(self, key: K) -> None:
        """The child's process is gone or replaced: what was open to it is void."""
        self._watches.pop(key, None)

    def keep(self, keys: Iterable[K]) -> None:
        """Watch only ``keys`` from now on: a child asked to exit may take its time (a
        session logs out first), and one placed on another host is not ours to kill."""
        wanted = set(keys)
        for key in [k for k in self._watches if k not in wanted]:
            self.forget(key)

    def to_ask(self, keys: Iterable[K], now: float) -> list[K]:
        """Which of ``keys`` (the children alive on this host) to ask now; each is noted
        as asked. One open question per child: a stuck process's mail does not pile up."""
        due = []
        for key in keys:
            watch = self._watches.setdefault(key, _Watch())
            if watch.asked_at is None and now - watch.last_asked >= self.period:
                watch.asked_at = watch.last_asked = now
                due.append(key)
        return due

    def answered(self, key: K, pid: int) -> None:
        """The child's current process answered: it reads its mail."""
        watch = self._watches.setdefault(key, _Watch())
        watch.pid, watch.asked_at = pid, None

    def hung(self, now: float) -> list[Hung[K]]:
        """The children that answered once and have left a question open longer than
        ``hang_seconds``; each is forgotten (one kill per process).

        After a stall of the supervisor itself, every open question's clock starts
        again: while it was held its children's answers waited unread in its own
        mailbox (they may still be queued behind this look), and a whole host held
        together and resumed (a paused VM) would otherwise lose every process at once."""
        if self._last_look is not None and now - self._last_look > STALL_SECONDS:
            for watch in self._watches.values():
                if watch.asked_at is not None:
                    watch.asked_at = now
        self._last_look = now
        found = [Hung(key, watch.pid, now - watch.asked_at)
                 for key, watch in self._watches.items()
                 if watch.pid is not None and watch.asked_at is not None
                 and now - watch.asked_at > self.hang_seconds]
        for hung in found:
            self.forget(hung.key)
        return found


def parent_of(pid: int) -> int | None:
    """The parent of process ``pid`` (field 4 of /proc/PID/stat); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name before may hold anything
    return int(fields[1]) if len(fields) > 1 else None


def kill_child(pid: int) -> bool:
    """SIGKILL ``pid`` if it is a child of this process (a Thespian actor is forked by
    its parent actor's process). The pid was named by the process itself, but it may
    have exited since and the number gone to another process; for that one to be a
    child of this process too, the numbers would have had to come round the whole pid
    space in between. SIGKILL ends a stopped process too."""
    if parent_of(pid) != os.getpid():
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
