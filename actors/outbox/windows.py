"""Rate-limit windows whose state survives restarts.

Rate limits exist to keep a WhatsApp account from being banned for spamming, so
they must hold across gateway restarts: the caller persists each window as plain
data and restores it at start. That rules out a log of event timestamps (a limit
of a million per day would mean a million floats on disk) and calls for a
bucketed counter whose size depends only on the number of buckets.

Times are plain floats in seconds supplied by the caller. Use wall-clock time
(``time.time()``) when the state is persisted, because a monotonic clock restarts
with the process and would make old buckets look like future ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SlidingWindow", "WindowSpec", "admit"]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """At most ``limit`` events per ``period`` seconds, tracked in ``buckets`` buckets.

    ``scope`` names the limit (e.g. "number:minute") so a refusal can say which
    limit was hit. More buckets make the window tighter (the worst-case extra
    wait after a burst is one bucket width) at the cost of a larger state.
    """

    scope: str
    limit: int
    period: float
    buckets: int = 60

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"window {self.scope!r}: limit must be at least 1 (got {self.limit})")
        if not self.period > 0 or math.isinf(self.period):
            raise ValueError(f"window {self.scope!r}: period must be > 0 (got {self.period})")
        if self.buckets < 1:
            raise ValueError(
                f"window {self.scope!r}: buckets must be at least 1 (got {self.buckets})"
            )

    @property
    def width(self) -> float:
        """Seconds covered by one bucket."""
        return self.period / self.buckets


class SlidingWindow:
    """A bucketed sliding-window counter that never lets ``limit`` be exceeded.

    An event at time ``t`` is counted in bucket ``floor(t / width)``. The count at
    ``now`` sums the current bucket and the ``buckets`` buckets before it, i.e.
    every bucket whose index is ``>= floor(now / width) - buckets``. The current
    bucket is usually only partly elapsed, so counting ``buckets`` whole buckets
    behind it is what makes the counted span always cover the full ``period``
    before ``now``; hence no interval of length ``period`` ever holds more than
    ``limit`` admitted events. The price is that an event may keep counting for up
    to ``period + width`` seconds, and the state holds at most ``buckets + 1``
    entries, whatever the limit.

    Buckets with an index above the current one (the clock went backwards, e.g.
    after restoring state on a host whose clock was behind) still count: being
    refused for a while is better than a burst that gets the account banned.
    """

    __slots__ = ("_counts", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        # bucket index -> events recorded in that bucket; only non-zero entries.
        self._counts: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"SlidingWindow({self.spec!r}, counts={self._counts!r})"

    @property
    def scope(self) -> str:
        return self.spec.scope

    def _index(self, t: float) -> int:
        return math.floor(t / self.spec.width)

    def _prune(self, now: float) -> None:
        # Buckets older than the counted span can never count again while time
        # moves forward.
        oldest = self._index(now) - self.spec.buckets
        for i in [i for i in self._counts if i < oldest]:
            del self._counts[i]
        self._cap()

    def _cap(self) -> None:
        # Only matters after the clock went backwards (buckets "in the future"
        # are kept): the oldest buckets are folded into the next one, which keeps
        # every event but makes it count a little longer, the safe direction.
        excess = len(self._counts) - (self.spec.buckets + 1)
        if excess > 0:
            ordered = sorted(self._counts)
            folded = sum(self._counts.pop(i) for i in ordered[:excess])
            self._counts[ordered[excess]] += folded

    def count(self, now: float) -> int:
        """Events that still count against the limit at ``now``."""
        self._prune(now)
        return sum(self._counts.values())

    def usage_ratio(self, now: float) -> float:
        """``count / limit``: lets monitoring warn before requests are refused."""
        return self.count(now) / self.spec.limit

    def retry_after(self, now: float) -> float:
        """Seconds until one more event would be allowed; 0.0 if it is allowed now.

        Exact with respect to the bucket model: waiting exactly this long (and
        recording nothing meanwhile) makes the next event fit, waiting less does
        not. Callers can pass it straight to clients as a Retry-After hint.
        """
        excess = self.count(now) + 1 - self.spec.limit
        if excess <= 0:
            return 0.0
        buckets = self.spec.buckets
        width = self.spec.width
        dropped = 0
        for index in sorted(self._counts):
            dropped += self._counts[index]
            if dropped >= excess:
                # Bucket `index` stops counting once the current index reaches
                # index + buckets + 1. Nudge past float rounding so that
                # floor((now + wait) / width) really reaches that index.
                target = index + buckets + 1
                at = target * width
                while self._index(at) < target:
                    at = math.nextafter(at, math.inf)
                wait = at - now
                while now + wait < at:
                    wait = math.nextafter(wait, math.inf)
                return wait
        raise AssertionError("unreachable: dropping every bucket always makes room")

    def allows(self, now: float) -> bool:
        """Whether one more event fits at ``now``."""
        return self.count(now) < self.spec.limit

    def record(self, now: float, n: int = 1) -> None:
        """Count ``n`` events at ``now``, whether or not they fit.

        Recording is unconditional so that events that happened anyway (e.g. a
        message sent before a restart lost the decision) are never forgotten; use
        :func:`admit` to decide first.
        """
        if n < 0:
            raise ValueError(f"cannot record a negative number of events ({n})")
        self._prune(now)
        if n:
            index = self._index(now)
            self._counts[index] = self._counts.get(index, 0) + n
            self._cap()

    def to_state(self) -> dict[str, Any]:
        """Plain, picklable data for persistence: at most ``buckets + 1`` pairs.

        Buckets that had expired at the last :meth:`count`, :meth:`record` or
        :meth:`retry_after` are already gone. Nothing is pruned relative to the
        newest bucket, because after a backwards clock step older buckets may
        still count. The bucket width is stored with the counts so that state
        written under a different configuration can still be restored safely.
        """
        return {
            "width": self.spec.width,
            "buckets": [[i, c] for i, c in sorted(self._counts.items())],
        }

    @classmethod
    def from_state(cls, spec: WindowSpec, state: dict[str, Any]) -> SlidingWindow:
        """Rebuild a window from :meth:`to_state` output, under a possibly new ``spec``.

        When the bucket width changed (the operator edited the period or the
        bucket count), each old bucket is moved to the new bucket that contains
        the old bucket's end, so restored events count at least as long as they
        would have before: erring towards refusing rather than over-sending.
        """
        window = cls(spec)
        old_width = float(state.get("width", spec.width))
        same_width = old_width == spec.width
        for index, count in state.get("buckets", []):
            index, count = int(index), int(count)
            if count <= 0:
                continue
            if not same_width:
                index = window._index((index + 1) * old_width)
            window._counts[index] = window._counts.get(index, 0) + count
        window._cap()  # expired buckets go at the first query, which knows the time
        return window


def admit(windows: Sequence[SlidingWindow], now: float) -> tuple[bool, float, str | None]:
    """Admit one event against every window, all or nothing.

    Returns ``(True, 0.0, None)`` after recording the event in every window, or
    ``(False, retry_after, scope)`` without recording anything: a refused request
    must not consume quota, otherwise a client retrying too early would push its
    own retry time further out forever. ``retry_after`` is the longest wait among
    the refusing windows (waiting less would still be refused by that one) and
    ``scope`` names that window.
    """
    worst_wait = 0.0
    worst_scope: str | None = None
    for window in windows:
        wait = window.retry_after(now)
        if wait > worst_wait:
            worst_wait, worst_scope = wait, window.scope
    if worst_scope is not None:
        return False, worst_wait, worst_scope
    for window in windows:
        window.record(now)
    return True, 0.0, None
