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


def retry_span_seconds(scale: float) -> float:
    """How long an endpoint is retried on one event before it is disabled: the
    schedule's waits added up (about 75.6 h), times ``webhooks.retry_scale``."""
    return math.fsum(SCHEDULE_SECONDS) * scale


def retention_warning(retention_days: float, retry_scale: float) -> dict[str, object] | None:
    """A warning when ``events.retention_days`` is shorter than the retry schedule's
    span: an endpoint that fails for that long is held on an event the log may prune
    meanwhile, so it never gets the events of its first days down. None when the log
    keeps events at least as long as an endpoint is retried."""
    span = retry_span_seconds(retry_scale)
    kept = retention_days * 86400.0
    if kept >= span:
        return None
    return {"code": "EVENT_RETENTION_SHORT", "retentionDays": retention_days,
            "retrySpanHours": round(span / 3600.0, 1),
            "message": f"events.retention_days ({retention_days:g}) is shorter than the "
                       f"webhook retry schedule ({span / 3600.0:.1f} h with "
                       f"webhooks.retry_scale {retry_scale:g}): an endpoint that fails "
                       "that long misses the events pruned meanwhile; raise "
                       f"events.retention_days to at least {math.ceil(span / 86400.0):d}"}


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
