"""When to try an endpoint again, and what an answer means for it.

The Standard Webhooks schedule: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
20 h and 24 h after the previous failure; each wait is multiplied by
``webhooks.retry_scale`` (tests shrink it) and spread by ``webhooks.jitter_fraction``
so endpoints that failed together do not all come back in the same second. A
``Retry-After`` from the endpoint is honoured when it asks for longer (capped by
``webhooks.max_retry_after_seconds``). Pure functions only.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Waits after the 1st, 2nd, ... failed attempt; the first attempt is immediate.
SCHEDULE_SECONDS: tuple[float, ...] = (
    5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


class Outcome(enum.Enum):
    """What one attempt did to the endpoint."""

    DELIVERED = "delivered"  # 2xx: the cursor moves past the event
    RETRY = "retry"  # anything else (or no answer): try the same event later
    GONE = "gone"  # 410: the endpoint asked to be disabled
    EXHAUSTED = "exhausted"  # the schedule ran out: the endpoint is disabled


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    delay_seconds: float = 0.0  # for RETRY: how long to wait before the next attempt


def classify(status: int | None) -> Outcome:
    """Only 2xx is success; 410 disables; everything else (3xx included: redirects are
    not followed, and no answer at all) is a failure to retry."""
    if status is not None and 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.RETRY


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date); None when it
    is absent or unreadable (then the schedule alone decides). Delta-seconds is ASCII
    digits only (RFC 9110): ``str.isdigit`` alone also accepts '²' or '①', which
    ``float`` refuses, and an exception here would skip recording the failure."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def decide(status: int | None, failures: int, *, scale: float, jitter: float,
           retry_after: float | None = None, max_retry_after: float = 86400.0,
           rng: random.Random | None = None) -> Decision:
    """The decision after an attempt answered ``status`` (None: no answer), where
    ``failures`` counts the failed attempts of this event before this one."""
    outcome = classify(status)
    if outcome is not Outcome.RETRY:
        return Decision(outcome)
    if failures >= len(SCHEDULE_SECONDS):
        return Decision(Outcome.EXHAUSTED)
    delay = jittered(SCHEDULE_SECONDS[failures] * scale, jitter, rng or random.Random())
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, min(retry_after, max_retry_after))
    return Decision(Outcome.RETRY, delay)


def jittered(seconds: float, fraction: float, rng: random.Random) -> float:
    """``seconds`` spread uniformly over +- ``fraction`` of itself."""
    return seconds * (1.0 + rng.uniform(-fraction, fraction))
