"""Ban-risk pacing of a session's sends, as plain decisions (no actors, no I/O).

WhatsApp bans linked accounts that send like machines: bursts at machine speed,
evenly spaced sends, a newly linked device sending its full volume at once. Beyond
the rate limits (actors/outbox/limits.py), every session therefore

* leaves at least ``min_interval`` plus a random ``0..jitter`` between two sends
  (``Pacer``: the next allowed send time per session);
* may show "typing..." to the recipient for ``typing`` seconds before a send (the
  session does that, on a timer);
* sends at most ``warmup_daily_cap`` messages per 24 h while its device was linked
  less than ``warmup_days`` ago (``in_warmup``, ``warmup_window``).

The outbox applies these before it hands messages to a session, never by sleeping: a
session that must wait gets a timer for the moment it may send. The numbers and the
evidence behind the defaults are in docs/engine-defaults.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.outbox.windows import WindowSpec

if TYPE_CHECKING:
    from gateway.core.config import PacingConfig

WARMUP_SCOPE = "warmup_day"  # the RATE_LIMITED scope of the warm-up cap
DAY_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class PacingRules:
    """The pacing numbers of ``[pacing]``, in seconds."""

    min_interval: float = 0.0
    jitter: float = 0.0
    typing: float = 0.0
    warmup_seconds: float = 0.0
    warmup_daily_cap: int = 1

    @classmethod
    def from_config(cls, pacing: PacingConfig) -> PacingRules:
        return cls(min_interval=pacing.min_interval_seconds, jitter=pacing.jitter_seconds,
                   typing=pacing.typing_seconds,
                   warmup_seconds=pacing.warmup_days * DAY_SECONDS,
                   warmup_daily_cap=pacing.warmup_daily_cap)

    @property
    def paced(self) -> bool:
        """Whether sends are spaced at all (off: a session gets as many as fit)."""
        return self.min_interval > 0 or self.jitter > 0

    @property
    def longest_gap(self) -> float:
        return self.min_interval + self.jitter


def next_send_at(sent_at: float, rules: PacingRules, rand: float) -> float:
    """When a session may send again after a send at ``sent_at``: the minimum interval
    plus ``rand`` (uniform in [0, 1), passed in so tests are exact) of the jitter, so
    the gaps are never evenly spaced."""
    return sent_at + rules.min_interval + rules.jitter * rand


class Pacer:
    """The next allowed send time of every session, in memory.

    After a restart the first send of a session may go at once: the interval protects
    against machine-speed bursts, and a restart takes longer than any interval.
    """

    def __init__(self, rules: PacingRules) -> None:
        self.rules = rules
        self._next: dict[str, float] = {}

    def wait(self, session: str, now: float) -> float:
        """Seconds until ``session`` may send (0: now). Never more than one full gap,
        so a wall clock set back cannot stall a session."""
        if not self.rules.paced:
            return 0.0
        left = self._next.get(session, 0.0) - now
        return max(0.0, min(left, self.rules.longest_gap))

    def batch(self, room: int) -> int:
        """How many messages a session may be handed at once: one when paced."""
        return min(room, 1) if self.rules.paced else room

    def sent(self, session: str, now: float, rand: float) -> float:
        """Note a send at ``now``; returns when the session may send next."""
        at = next_send_at(now, self.rules, rand) if self.rules.paced else now
        self._next[session] = at
        return at


def newly_linked(old_state: str | None, old_paired: bool | None, paired: bool) -> bool:
    """A session just linked a new device: it was pairing (showing a QR code or
    waiting for a pairing code, with nothing linked) and now has credentials."""
    return old_state == "QR_PENDING" and old_paired is False and paired


def in_warmup(linked_at: float | None, now: float, rules: PacingRules) -> bool:
    """Whether a device linked at ``linked_at`` is still in its warm-up at ``now``."""
    if linked_at is None or rules.warmup_seconds <= 0:
        return False
    return now < linked_at + rules.warmup_seconds


def warmup_window(rules: PacingRules) -> WindowSpec:
    """The warm-up cap as a sliding 24 h window (the same windows as the rate limits)."""
    return WindowSpec(WARMUP_SCOPE, rules.warmup_daily_cap, DAY_SECONDS)
