"""Where a session runs, and which hosts still answer: pure logic, no actors.

Thespian places an actor on the first convention member whose capabilities match
and does no balancing of its own (docs/architecture.md §4), so the supervisor chooses
the host itself and names it in the creation's requirements. It notices a dead host
through heartbeats of its own: Thespian's re-registration timer alone takes about 22
minutes with its defaults, and after a host's death no ``ChildActorExited`` arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A check that runs this many intervals after its previous run was itself paused.
PAUSE_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class HostLoad:
    """One host as placement sees it."""

    name: str
    slots: int  # cluster.sessions of that host
    sessions: int  # sessions placed there now


def choose_host(hosts: Iterable[HostLoad], prefer: str | None = None,
                overflow: bool = False) -> str | None:
    """The host with a free slot and the fewest sessions (ties: ``prefer``, the local
    host, which saves a network hop; then by name, so the choice is reproducible).

    ``overflow``: when no host has a free slot, take the least loaded one anyway (a
    session that runs already and must move, after a host died or at a restart:
    keeping it running matters more than the host's slot count). Without it, None:
    a new session is refused. ``sessions.max_sessions`` is the caller's check.
    """
    candidates = list(hosts)
    free = [h for h in candidates if h.sessions < h.slots]
    pool = free or (candidates if overflow else [])
    if not pool:
        return None
    return min(pool, key=lambda h: (h.sessions, h.name != prefer, h.name)).name


def loads(slots: Mapping[str, int], placed: Iterable[str]) -> list[HostLoad]:
    """``HostLoad`` for each host in ``slots``, counting ``placed`` (one host name per
    placed session; names of hosts not in ``slots`` are ignored)."""
    counts = dict.fromkeys(slots, 0)
    for name in placed:
        if name in counts:
            counts[name] += 1
    return [HostLoad(name, slots[name], counts[name]) for name in sorted(slots)]


class PauseDetector:
    """Tells a periodic checker that it was paused itself, not its peers.

    A checker that runs every ``interval`` seconds and finds its previous run more
    than ``PAUSE_FACTOR`` intervals ago was stopped itself (a stalled process, a
    suspended VM, a garbage collector, a machine swapping): during that time it could
    neither hear its peers nor be heard, so their silence says nothing. A leader that
    took its own 6 s stall for its members' silence moved every session onto itself.
    A clock that went backwards is treated the same way (no gap can be trusted).
    """

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be a finite number over 0 (got {interval})")
        self.interval = interval
        self._last: float | None = None

    def paused(self, now: float) -> float | None:
        """Record a run at ``now``: the gap since the previous run when the checker was
        paused (longer than ``PAUSE_FACTOR`` intervals, or negative), else None. The
        first run has no previous one and is never a pause."""
        last, self._last = self._last, now
        if last is None:
            return None
        gap = now - last
        if gap < 0 or gap > self.interval * PAUSE_FACTOR:
            return gap
        return None


# A heartbeat answered later than this share of the interval after it was sent says
# the link (or the peer) is slow: on a healthy network the round trip takes
# milliseconds, far below a quarter of any sane heartbeat interval.
LATE_FRACTION = 0.25


class HeartbeatTracker:
    """When each watched peer was last heard, and which ones have gone quiet.

    A peer is lost once it has not answered for ``interval * misses`` seconds; the
    clock starts when it is watched, so a new peer gets the full window to answer.
    ``check`` is the periodic look of a checker that runs every ``interval``: after a
    pause of its own (``PauseDetector``) it finds no one lost and starts every
    peer's window again.
    """

    def __init__(self, interval: float, misses: int) -> None:
        if not (math.isfinite(interval) and interval > 0) or misses < 1:
            raise ValueError("interval must be a finite number over 0 and misses >= 1")
        self.interval = interval
        self.window = interval * misses
        self.pauses = PauseDetector(interval)
        self._heard: dict[str, float] = {}
        self._late_at: dict[str, float] = {}  # the last slow answer of each peer

    def watch(self, peer: str, now: float) -> None:
        self._heard[peer] = now

    def heard(self, peer: str, now: float, round_trip: float | None = None) -> None:
        """``peer`` answered at ``now``; ``round_trip``: how long after the beat it
        answers was sent (None: not measured; ``inf`` for a beat too old to be
        remembered)."""
        if peer not in self._heard:
            return
        self._heard[peer] = max(self._heard[peer], now)
        if round_trip is not None and round_trip > self.interval * LATE_FRACTION:
            self._late_at[peer] = now

    def forget(self, peer: str) -> None:
        self._heard.pop(peer, None)
        self._late_at.pop(peer, None)

    def late(self, peer: str, now: float) -> bool:
        """Whether the link to ``peer`` is bad, though not (yet) lost: it answered a
        beat more than ``LATE_FRACTION`` of an interval after it was sent within the
        last window, or it has been silent for more than 1.5 intervals now. A slow
        link answers some beats in time: one slow answer counts for a whole window, so
        the verdict does not flicker with each beat while the link stays bad."""
        if peer not in self._heard:
            return False
        if now - self._heard[peer] > 1.5 * self.interval:
            return True
        slow = self._late_at.get(peer)
        return slow is not None and now - slow <= self.window

    def watched(self) -> list[str]:
        return sorted(self._heard)

    def silent_for(self, peer: str, now: float) -> float:
        return now - self._heard[peer]

    def lost(self, now: float) -> list[str]:
        """Peers silent for longer than the window (still watched: ``forget`` them).
        Knows nothing of pauses: a fence, which must stop when in doubt, asks this."""
        return sorted(p for p, at in self._heard.items() if now - at > self.window)

    def reset(self, now: float) -> None:
        """Every watched peer counts as heard at ``now``."""
        for peer in self._heard:
            self._heard[peer] = now

    def check(self, now: float) -> tuple[list[str], float | None]:
        """The periodic check: (the lost peers, the checker's own pause or None).
        After a pause nobody is lost and every window starts again at ``now``."""
        gap = self.pauses.paused(now)
        if gap is not None:
            self.reset(now)
            return [], gap
        return self.lost(now), None
