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

import diskcache

from actors.outbox.pacing import PacingRules, in_warmup, newly_linked, warmup_window
from actors.outbox.rate_state import RateState, as_rate_state
from actors.outbox.windows import SlidingWindow


class Warmup:
    """Linking times and warm-up windows per session (one writer: the outbox). Any
    method may raise ``RateStateUnavailable``."""

    def __init__(self, state: RateState | diskcache.Cache, rules: PacingRules) -> None:
        self.state = as_rate_state(state)
        self.rules = rules
        self.spec = warmup_window(rules)
        # Linking times as last read or written (this is the only writer): a send of a
        # session that is not warming up costs no disk read.
        self._linked: dict[str, float | None] = {}

    def observe(self, session: str, old_state: str | None, old_paired: bool | None,
                paired: bool, now: float) -> bool:
        """Note a session's new status; returns whether it just linked a new device
        (its warm-up then starts now, with an empty window)."""
        if not newly_linked(old_state, old_paired, paired):
            return False
        now += self.state.clock_offset(now)
        # In memory first: when the write fails, this process still applies the cap.
        self._linked[session] = now
        self.state.write([(_linked_key(session), now, None)], deletes=[_window_key(session)])
        return True

    def linked_at(self, session: str) -> float | None:
        """When the session linked its device, on the state's clock."""
        if session not in self._linked:
            value = self.state.get(_linked_key(session))
            self._linked[session] = float(value) if value is not None else None
        return self._linked[session]

    def warming_until(self, session: str, now: float) -> float | None:
        """When the session's warm-up ends, or None when it is not in warm-up (``now``
        and the answer on the state's clock)."""
        linked_at = self.linked_at(session)
        if not in_warmup(linked_at, now, self.rules):
            return None
        assert linked_at is not None
        return linked_at + self.rules.warmup_seconds

    def allows(self, session: str, now: float) -> tuple[bool, float]:
        """Whether one more send fits the session's warm-up cap (always, outside
        warm-up); when not, the seconds until it does, never past the end of the
        warm-up, when the cap stops applying. Counts nothing (see ``record``)."""
        now += self.state.clock_offset(now)
        until = self.warming_until(session, now)
        if until is None:
            return True, 0.0
        window = self._window(session)
        if window.allows(now):
            return True, 0.0
        return False, min(window.retry_after(now), until - now)

    def record(self, session: str, now: float) -> None:
        """Count one accepted send (called once every other limit let it pass too)."""
        now += self.state.clock_offset(now)
        if self.warming_until(session, now) is None:
            return
        window = self._window(session)
        window.record(now)
        self.state.write([(_window_key(session), window.to_state(),
                           self.rules.warmup_seconds + self.spec.period * 1.1)])

    def _window(self, session: str) -> SlidingWindow:
        state = self.state.get(_window_key(session))
        return (SlidingWindow.from_state(self.spec, state) if state is not None
                else SlidingWindow(self.spec))


def _linked_key(session: str) -> str:
    return f"linked:{session}"


def _window_key(session: str) -> str:
    return f"warmup:{session}"
