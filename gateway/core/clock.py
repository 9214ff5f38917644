"""A clock for durations that still reads as a date: wall time that never jumps.

The outbox measures durations in its records: a message's validity
(``validForSeconds``), when its retry is due, the rate-limit windows, pacing. Those
are written to disk as unix times, so they survive a restart, which rules out the
monotonic clock alone (it starts again at every boot). But the wall clock jumps: an
NTP step or a VM resumed from a snapshot moves it by minutes or hours at once. On the
wall clock a step forward of an hour expires every message valid for less than an
hour and empties every rate window at once (a burst the limits exist to prevent); a
step back of an hour holds every retry due in that hour back by an hour.

``SteadyClock`` reads the wall clock once, when it is made, and from then on adds the
time elapsed on ``CLOCK_BOOTTIME`` (the monotonic clock that also counts time
suspended, so a VM resumed after an hour really sees an hour pass). Its readings are
unix times near the wall clock, so what it writes still reads as a date and still
means the same after a restart, and a wall-clock step in between changes nothing
it measures. The price: after a step, the dates this clock writes (a record's
``acceptedAt``) stay off by the step until the process starts again; ``skew`` says
by how much, for a log line. Where the meaning is a date (a token's expiry, an
audit entry's time) the wall clock is still the right one.

Pure: imports nothing of ours. ``wall`` and ``elapsed`` are injectable, so tests make
the wall clock jump without touching the machine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Reading = Callable[[], float]
SKEW_WORTH_A_LOG_SECONDS = 60.0  # NTP slews below this; a step above it is an event


def boot_clock() -> float:
    """Seconds since boot, counting suspended time (Linux); the monotonic clock
    where ``CLOCK_BOOTTIME`` does not exist."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic()
    return time.clock_gettime(boottime)


class SteadyClock:
    """Unix time that moves only as much as time really passed since it was made."""

    def __init__(self, wall: Reading = time.time, elapsed: Reading = boot_clock) -> None:
        self.wall = wall
        self.elapsed = elapsed
        self.anchor_wall = wall()
        self.anchor_elapsed = elapsed()

    def __call__(self) -> float:
        return self.anchor_wall + (self.elapsed() - self.anchor_elapsed)

    def skew(self) -> float:
        """How far the wall clock has stepped since this clock was made (positive:
        forward); 0 while nothing jumped, apart from slow drift."""
        return self.wall() - self()
