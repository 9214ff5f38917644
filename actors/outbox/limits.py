"""The per-recipient and global send windows, persisted before a send passes.

The windows (actors/outbox/windows.py) decide; ``Limits`` keeps them and writes every change
through to its ``RateState`` (actors/outbox/rate_state.py: diskcache on one host, PostgreSQL
shared by the leaders in multi-host mode) before a send passes, so limits survive a
restart, a crash or a failover to a standby leader. A rejected send consumes no quota.

They are checked inside the outbox's process, in the same handler that accepts the
message: a separate limiter actor cost two extra actor messages per send (measured:
about 2.5 ms of CPU, a fifth of a send), and the check must happen between the
idempotency lookup and the write anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import diskcache

from actors.messages import Failed
from actors.outbox.rate_state import (
    DiskRateState,
    RateState,
    RateStateConflict,
    RateStateUnavailable,
    as_rate_state,
)
from actors.outbox.windows import SlidingWindow, WindowSpec, admit
from gateway.core.config import LimitsConfig
from gateway.core.recipients import rate_limit_key

HOT_NUMBERS = 10_000  # recipients whose windows stay in memory (the rest are on disk)
GLOBAL_KEY = "global"
CONFLICT_TRIES = 5  # reads and decisions again when another outbox wrote in between


def window_specs(limits: LimitsConfig) -> tuple[tuple[WindowSpec, ...], WindowSpec]:
    per_number = (
        WindowSpec("recipient_minute", limits.per_number_per_minute, 60.0),
        WindowSpec("recipient_hour", limits.per_number_per_hour, 3600.0),
    )
    return per_number, WindowSpec("global_day", limits.global_per_day, 86400.0)


class Limits:
    """The windows of every recipient plus the global one, written through to the state.

    The windows are read from the state once and then kept in memory with the version
    read. On one host this outbox is their only writer. With a shared state (every
    leader of a cluster runs an outbox, the standbys too) a window in memory may be
    stale, but never fuller than the stored one: what it refuses, the stored one
    refuses too, and what it admits is written only over the version it was read at;
    if another outbox wrote in between, the windows are read again and the send is
    decided again. Any method may raise ``RateStateUnavailable``."""

    def __init__(self, state: RateState | str | Path, limits: LimitsConfig) -> None:
        self.state = as_rate_state(state)
        self.per_number_specs, self.global_spec = window_specs(limits)
        # Read at the first use, not here: a database down at the outbox's start
        # refuses sends until it answers rather than failing the start.
        self._global: SlidingWindow | None = None
        self.hot: OrderedDict[str, list[SlidingWindow]] = OrderedDict()
        self.seen: dict[str, float] = {}  # hot recipient -> its last check, for usage_ratios
        self.versions: dict[str, int] = {}  # state key -> the version of the window in memory

    @property
    def cache(self) -> diskcache.Cache:
        """The diskcache of a single host's state (its tests look inside)."""
        assert isinstance(self.state, DiskRateState), "the state is not a diskcache"
        return self.state.cache

    @property
    def global_window(self) -> SlidingWindow:
        if self._global is None:
            state, self.versions[GLOBAL_KEY] = self.state.get(GLOBAL_KEY)
            self._global = (SlidingWindow.from_state(self.global_spec, state)
                            if state is not None else SlidingWindow(self.global_spec))
        return self._global

    def check(self, phone: str, now: float) -> tuple[bool, float, str | None]:
        """Admit a send to ``phone`` (normalised digits) or say which window is full.

        The per-recipient windows are kept per WhatsApp account, not per spelling:
        ``+54 11 2345-6789`` and ``+54 9 11 2345-6789`` reach one person and share one
        limit (``gateway.core.recipients.rate_limit_key``). When the write fails the
        windows in memory are dropped, to be read again as the state has them: the
        refused send counts only if its write was committed after all."""
        phone = rate_limit_key(phone)
        seen = now
        now += self.state.clock_offset(now)
        for _ in range(CONFLICT_TRIES):
            windows = self._windows(phone)
            self.seen[phone] = seen
            allowed, retry_after, scope = admit([*windows, self.global_window], now)
            if not allowed:
                return allowed, retry_after, scope
            try:
                self._write(phone, windows)
                return allowed, retry_after, scope
            except RateStateConflict:
                self._forget(phone)  # another outbox wrote: read both again, decide again
            except BaseException:
                self._forget(phone)
                raise
        raise RateStateUnavailable(f"the rate windows changed at each of {CONFLICT_TRIES} "
                                   "tries: another outbox writes them as fast")

    def usage(self, now: float) -> dict[str, float]:
        """The global window's figures; none while the state cannot be read. A shared
        one is read afresh: another leader's outbox may have sent meanwhile."""
        try:
            now += self.state.clock_offset(now)
            if self.state.shared:
                self._global = None
            window = self.global_window
        except RateStateUnavailable:
            return {}
        return {
            "global_day_used": float(window.count(now)),
            "global_day_limit": float(self.global_spec.limit),
            "global_day_ratio": window.usage_ratio(now),
        }

    def usage_ratios(self, now: float) -> dict[str, float]:
        """Per scope, how full the busiest window is (1.0 = the next send is refused).

        For the per-recipient scopes that is the busiest recipient checked since this
        process started. ``hot`` is in order of last use, so the walk stops at the first
        recipient whose windows have all emptied: a scrape costs in proportion to the
        recipients of the last hour, not to every recipient ever seen.
        """
        ratios = {spec.scope: 0.0 for spec in self.per_number_specs}
        horizon = now - max(spec.period + spec.width for spec in self.per_number_specs)
        try:
            offset = self.state.clock_offset(now)
            if self.state.shared:
                self._global = None  # read afresh, as in ``usage``
            ratios[self.global_spec.scope] = self.global_window.usage_ratio(now + offset)
        except RateStateUnavailable:
            return {}
        for phone in reversed(self.hot):
            if self.seen.get(phone, 0.0) < horizon:
                break
            for window in self.hot[phone]:
                ratios[window.scope] = max(ratios[window.scope],
                                           window.usage_ratio(now + offset))
        return ratios

    def expire(self) -> int:
        """Remove the windows (per recipient, the warm-up's) that have expired; how many."""
        return self.state.expire()

    def close(self) -> None:
        self.state.close()

    def _windows(self, phone: str) -> list[SlidingWindow]:
        windows = self.hot.get(phone)
        if windows is not None:
            self.hot.move_to_end(phone)
            return windows
        key = _number_key(phone)
        states, self.versions[key] = self.state.get(key)
        if states is None:
            windows = [SlidingWindow(spec) for spec in self.per_number_specs]
        else:
            windows = [SlidingWindow.from_state(spec, st)
                       for spec, st in zip(self.per_number_specs, states, strict=True)]
        self.hot[phone] = windows
        if len(self.hot) > HOT_NUMBERS:
            evicted, _ = self.hot.popitem(last=False)
            self.seen.pop(evicted, None)
            self.versions.pop(_number_key(evicted), None)
        return windows

    def _write(self, phone: str, windows: list[SlidingWindow]) -> None:
        """Both windows of the send, each over the version it was read at."""
        key = _number_key(phone)
        self.versions.update(self.state.write([
            (key, [w.to_state() for w in windows],
             max(s.period for s in self.per_number_specs) * 1.1, self.versions.get(key, 0)),
            (GLOBAL_KEY, self.global_window.to_state(), None,
             self.versions.get(GLOBAL_KEY, 0))]))

    def _forget(self, phone: str) -> None:
        """Drop the send's windows from memory: the next use reads them as stored."""
        self.hot.pop(phone, None)
        self.seen.pop(phone, None)
        self.versions.pop(_number_key(phone), None)
        self._global = None


def _number_key(phone: str) -> str:
    return f"n:{phone}"


def rate_limited(retry_after: float, scope: str | None, request_id: str) -> Failed:
    seconds = max(1, int(retry_after + 0.999))
    what = "this recipient" if scope and scope.startswith("recipient") else "this gateway"
    return Failed("RATE_LIMITED", f"rate limit for {what} reached ({scope}); retry in "
                  f"{seconds} s", {"retryAfterSeconds": seconds, "scope": scope},
                  request_id=request_id)


RATE_STATE_UNAVAILABLE = "RATE_STATE_UNAVAILABLE"
RATE_STATE_RETRY_SECONDS = 5


def rate_state_unavailable(request_id: str) -> Failed:
    """The windows could not be read or written: nothing was stored or sent, and the
    caller may retry (in multi-host mode the leader's database did not answer)."""
    return Failed("UNAVAILABLE", "the rate limits' state cannot be read or written right "
                  f"now; nothing was sent; retry in {RATE_STATE_RETRY_SECONDS} s",
                  {"reason": RATE_STATE_UNAVAILABLE,
                   "retryAfterSeconds": RATE_STATE_RETRY_SECONDS}, request_id=request_id)
