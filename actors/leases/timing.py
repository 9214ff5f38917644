"""When a lease holder renews and when it must let go: pure, no database, no actors.

The database decides who holds a lease, by its own clock (``actors.leases.store``).
A holder cannot read that clock without asking, and the question may never come back
(a partition, a dead database), so it keeps its own deadlines, counted from the moment
it *sent* the request that granted or renewed the lease: the database stamped the
new expiry no earlier than that moment, so ``sent + lease`` is never later than the
real expiry, and a rival can take the lease no earlier than ``expiry + margin``. A
holder that stops by ``sent + lease`` has therefore stopped ``margin`` before any
rival may start; the margin covers the time a disconnect takes and the two clocks'
different rates.

The holder's clock is ``CLOCK_BOOTTIME``: like the monotonic clock it never jumps
with the wall clock, and unlike it, it keeps counting while the machine is suspended,
so a host that wakes from a suspend finds its lease over instead of believing that no
time passed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from gateway.core.config import ClusterConfig, lease_timing_problem
from gateway.core.errors import WagateError


class LeaseTimingError(WagateError, ValueError):
    """Durations that would let two holders overlap; the message says which rule."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """A lease's three durations, in seconds, checked: lease > renew + margin > 0."""

    lease: float
    renew: float
    margin: float

    def __post_init__(self) -> None:
        problem = lease_timing_problem(self.lease, self.renew, self.margin)
        if problem is not None:
            raise LeaseTimingError(problem)

    @classmethod
    def of(cls, cluster: ClusterConfig) -> LeaseTiming:
        return cls(cluster.lease_seconds, cluster.lease_renew_seconds,
                   cluster.lease_margin_seconds)


def holder_clock() -> float:
    """Seconds on the holder's clock: never jumps, counts through a suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Due(enum.Enum):
    """What a holder must do now."""

    WAIT = "wait"    # the lease is fresh
    RENEW = "renew"  # time to renew (and keep trying while the lease lasts)
    STOP = "stop"    # the lease may be over by now: disconnect and let go


@dataclass(frozen=True, slots=True)
class Holding:
    """A holder's own view of one grant: the epoch it got and when it sent the
    request that last granted or renewed it (on ``holder_clock``)."""

    epoch: int
    sent_at: float
    timing: LeaseTiming

    @property
    def renew_at(self) -> float:
        return self.sent_at + self.timing.renew

    @property
    def stop_by(self) -> float:
        """The latest moment the holder may still be connected."""
        return self.sent_at + self.timing.lease

    def due(self, now: float) -> Due:
        """What to do at ``now`` (``holder_clock``)."""
        if now >= self.stop_by:
            return Due.STOP
        if now >= self.renew_at:
            return Due.RENEW
        return Due.WAIT

    def renewed(self, sent_at: float) -> Holding:
        """The holding after a renewal sent at ``sent_at`` succeeded. A late answer to
        an older request never moves the deadlines back."""
        return Holding(self.epoch, max(self.sent_at, sent_at), self.timing)
