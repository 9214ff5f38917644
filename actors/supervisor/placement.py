"""Where a session runs, and which hosts still answer: pure logic, no actors.

Thespian places an actor on the first convention member whose capabilities match
and does no balancing of its own (docs/architecture.md §4), so the supervisor chooses
the host itself and names it in the creation's requirements. It notices a dead host
through heartbeats of its own: Thespian's re-registration timer alone takes about 22
minutes with its defaults, and after a host's death no ``ChildActorExited`` arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


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


class HeartbeatTracker:
    """When each watched peer was last heard, and which ones have gone quiet.

    A peer is lost once it has not answered for ``interval * misses`` seconds; the
    clock starts when it is watched, so a new peer gets the full window to answer.
    """

    def __init__(self, interval: float, misses: int) -> None:
        if interval <= 0 or misses < 1:
            raise ValueError("interval must be > 0 and misses >= 1")
        self.window = interval * misses
        self._heard: dict[str, float] = {}

    def watch(self, peer: str, now: float) -> None:
        self._heard[peer] = now

    def heard(self, peer: str, now: float) -> None:
        if peer in self._heard:
            self._heard[peer] = max(self._heard[peer], now)

    def forget(self, peer: str) -> None:
        self._heard.pop(peer, None)

    def watched(self) -> list[str]:
        return sorted(self._heard)

    def silent_for(self, peer: str, now: float) -> float:
        return now - self._heard[peer]

    def lost(self, now: float) -> list[str]:
        """Peers silent for longer than the window (still watched: ``forget`` them)."""
        return sorted(p for p, at in self._heard.items() if now - at > self.window)
