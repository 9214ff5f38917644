"""The warm-up cap of newly linked devices, kept next to the rate limits.

When a session links a new device, the outbox notes the moment; for
``pacing.warmup_days`` after it, the session may send at most
``pacing.warmup_daily_cap`` messages in any 24 h. Both survive restarts and a
failover to a standby leader (written through to the limits' ``RateState``, as the
rate windows are), so neither ever lifts the cap early. A session whose linking this
outbox never saw (linked before this version, or while the outbox was down) is not in
warm-up. The times kept are on the state's clock (``RateState.clock_offset``).
"""

from __future__ import annotations

import math

import diskcache

from actors.outbox.pacing import PacingRules, in_warmup, newly_linked, warmup_window
from actors.outbox.rate_state import (
    RateState,
    RateStateConflict,
    RateStateUnavailable,
    as_rate_state,
)
from actors.outbox.windows import SlidingWindow

# With a shared state, how long a linking time read stays trusted: another leader's
# outbox may see a new link meanwhile (on one host this outbox is the only writer).
LINKED_RECHECK_SECONDS = 10.0
CONFLICT_TRIES = 5


class Warmup:
    """Linking times and warm-up windows per session. Any method may raise
    ``RateStateUnavailable``. A window is read at every use and written over the
    version read (another leader's outbox may write it too: ``RateState.shared``)."""

    def __init__(self, state: RateState | diskcache.Cache, rules: PacingRules) -> None:
        self.state = as_rate_state(state)
        self.rules = rules
        self.spec = warmup_window(rules)
        # Linking times as last read or written, with when (the state's clock): a send
        # of a session that is not warming up costs no read (on a shared state, one
        # every LINKED_RECHECK_SECONDS).
        self._linked: dict[str, tuple[float | None, float]] = {}
        # The window (and its version) ``allows`` read for a send it let pass, for that
        # send's ``record``: a warming session's send reads its window once.
        self._passed: dict[str, tuple[SlidingWindow, int]] = {}
        # Links seen (session -> the caller's time) whose write failed, written first.
        self._unwritten: dict[str, float] = {}

    def observe(self, session: str, old_state: str | None, old_paired: bool | None,
                paired: bool, now: float) -> bool:
        """Note a session's new status; returns whether it just linked a new device
        (its warm-up then starts now, with an empty window). When the state cannot be
        written, the link is kept (``RateStateUnavailable`` raised) and written, as
        seen at ``now``, before anything else this object does: no send passes the
        warm-up before it is written."""
        if not newly_linked(old_state, old_paired, paired):
            return False
        self._unwritten[session] = now
        self._write_links(now)
        return True

    def _write_links(self, now: float) -> None:
        """Write the links seen and not written yet (``now``: the caller's clock)."""
        for session, seen in list(self._unwritten.items()):
            at = seen + self.state.clock_offset(now)
            self.state.write([(_linked_key(session), at, None, None)],
                             deletes=[_window_key(session)])
            del self._unwritten[session]
            self._linked[session] = (at, at)

    def linked_at(self, session: str, now: float | None = None) -> float | None:
        """When the session linked its device, on the state's clock (``now`` too: a
        shared state's answer is read again once it is old)."""
        known = self._linked.get(session)
        if known is None or self._stale(known[1], now):
            value, _ = self.state.get(_linked_key(session))
            known = (float(value) if value is not None else None,
                     now if now is not None else -math.inf)
            self._linked[session] = known
        return known[0]

    def _stale(self, read_at: float, now: float | None) -> bool:
        """Whether a linking time read at ``read_at`` must be read again (never on one
        host)."""
        if not self.state.shared or now is None:
            return False
        return not read_at <= now < read_at + LINKED_RECHECK_SECONDS

    def warming_until(self, session: str, now: float) -> float | None:
        """When the session's warm-up ends, or None when it is not in warm-up (``now``
        and the answer on the state's clock)."""
        linked_at = self.linked_at(session, now)
        if not in_warmup(linked_at, now, self.rules):
            return None
        assert linked_at is not None
        return linked_at + self.rules.warmup_seconds

    def allows(self, session: str, now: float) -> tuple[bool, float]:
        """Whether one more send fits the session's warm-up cap (always, outside
        warm-up); when not, the seconds until it does, never past the end of the
        warm-up, when the cap stops applying. Counts nothing (see ``record``)."""
        if self._unwritten:
            self._write_links(now)
        now += self.state.clock_offset(now)
        until = self.warming_until(session, now)
        if until is None:
            return True, 0.0
        window, version = self._window(session)
        if window.allows(now):
            self._passed[session] = (window, version)
            return True, 0.0
        self._passed.pop(session, None)
        return False, min(window.retry_after(now), until - now)

    def record(self, session: str, now: float) -> None:
        """Count one accepted send (called once every other limit let it pass too)."""
        if self._unwritten:
            self._write_links(now)
        now += self.state.clock_offset(now)
        passed = self._passed.pop(session, None)
        if self.warming_until(session, now) is None:
            return
        for _ in range(CONFLICT_TRIES):
            window, version = passed or self._window(session)
            passed = None  # after a conflict: read again
            window.record(now)
            try:
                self.state.write([(_window_key(session), window.to_state(),
                                   self.rules.warmup_seconds + self.spec.period * 1.1,
                                   version)])
                return
            except RateStateConflict:
                continue  # another outbox counted a send meanwhile: count on top of it
        raise RateStateUnavailable(f"the warm-up window changed at each of {CONFLICT_TRIES} "
                                   "tries: another outbox writes it as fast")

    def _window(self, session: str) -> tuple[SlidingWindow, int]:
        state, version = self.state.get(_window_key(session))
        return (SlidingWindow.from_state(self.spec, state) if state is not None
                else SlidingWindow(self.spec)), version


def _linked_key(session: str) -> str:
    return f"linked:{session}"


def _window_key(session: str) -> str:
    return f"warmup:{session}"
