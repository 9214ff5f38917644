"""The warm-up cap of newly linked devices, kept on disk next to the rate limits.

When a session links a new device, the outbox notes the moment; for
``pacing.warmup_days`` after it, the session may send at most
``pacing.warmup_daily_cap`` messages in any 24 h. Both survive restarts (written
through to the limits' diskcache, as the rate windows are), so restarting the
gateway never lifts the cap early. A session whose linking this outbox never saw
(linked before this version, or while the outbox was down) is not in warm-up.
"""

from __future__ import annotations

import diskcache

from actors.outbox.pacing import PacingRules, in_warmup, newly_linked, warmup_window
from actors.outbox.windows import SlidingWindow


class Warmup:
    """Linking times and warm-up windows per session (one writer: the outbox)."""

    def __init__(self, cache: diskcache.Cache, rules: PacingRules) -> None:
        self.cache = cache
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
        with self.cache.transact():
            self.cache.set(_linked_key(session), now)
            self.cache.delete(_window_key(session))
        self._linked[session] = now
        return True

    def linked_at(self, session: str) -> float | None:
        if session not in self._linked:
            value = self.cache.get(_linked_key(session))
            self._linked[session] = float(value) if value is not None else None
        return self._linked[session]

    def warming_until(self, session: str, now: float) -> float | None:
        """When the session's warm-up ends, or None when it is not in warm-up."""
        linked_at = self.linked_at(session)
        if not in_warmup(linked_at, now, self.rules):
            return None
        assert linked_at is not None
        return linked_at + self.rules.warmup_seconds

    def allows(self, session: str, now: float) -> tuple[bool, float]:
        """Whether one more send fits the session's warm-up cap (always, outside
        warm-up); when not, the seconds until it does, never past the end of the
        warm-up, when the cap stops applying. Counts nothing (see ``record``)."""
        until = self.warming_until(session, now)
        if until is None:
            return True, 0.0
        window = self._window(session)
        if window.allows(now):
            return True, 0.0
        return False, min(window.retry_after(now), until - now)

    def record(self, session: str, now: float) -> None:
        """Count one accepted send (called once every other limit let it pass too)."""
        if self.warming_until(session, now) is None:
            return
        window = self._window(session)
        window.record(now)
        self.cache.set(_window_key(session), window.to_state(),
                       expire=self.rules.warmup_seconds + self.spec.period * 1.1)

    def _window(self, session: str) -> SlidingWindow:
        state = self.cache.get(_window_key(session))
        return (SlidingWindow.from_state(self.spec, state) if state is not None
                else SlidingWindow(self.spec))


def _linked_key(session: str) -> str:
    return f"linked:{session}"


def _window_key(session: str) -> str:
    return f"warmup:{session}"
