"""Pure supervision and reconnect decisions, kept apart from the actors that act on them.

The supervisor and session actors only have to ask "how long do I wait?" and
"may I try again?"; the answers live here as plain functions of counters and
caller-supplied timestamps so they can be tested exhaustively without starting
processes or sleeping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ReconnectPolicy", "RestartBudget", "backoff_delay"]


def backoff_delay(failures: int, delays: Sequence[float]) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based).

    The schedule is an explicit list from the configuration rather than a formula
    so operators can read exactly what will happen; once it is exhausted the last
    delay repeats, because a crashing process should keep being retried at a
    steady, bounded pace until the restart budget gives up on it.
    """
    if failures < 1:
        raise ValueError(f"failures must be at least 1 (got {failures})")
    if not delays:
        raise ValueError("delays must not be empty")
    return delays[min(failures - 1, len(delays) - 1)]


class RestartBudget:
    """Allows at most ``limit`` crashes within any ``window`` seconds.

    Backoff alone would restart a session that crashes on every start forever,
    burning CPU and possibly hammering WhatsApp's servers; the budget turns
    "crashes again and again" into a definite FAILED state that an operator sees.
    A crash counts for ``window`` seconds after it happened (a crash exactly
    ``window`` seconds old no longer counts), so a session that crashes rarely is
    never given up on.
    """

    __slots__ = ("_crashes", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        if not window > 0:
            raise ValueError(f"window must be greater than 0 (got {window})")
        self.limit = limit
        self.window = window
        self._crashes: deque[float] = deque()

    def __repr__(self) -> str:
        return (
            f"RestartBudget(limit={self.limit}, window={self.window}, "
            f"crashes={len(self._crashes)})"
        )

    def _prune(self, now: float) -> None:
        while self._crashes and now - self._crashes[0] >= self.window:
            self._crashes.popleft()

    def record(self, now: float) -> bool:
        """Record a crash at ``now``; True if a restart is still allowed.

        Allowed while the crashes within the window, this one included, number
        at most ``limit``.
        """
        self._prune(now)
        self._crashes.append(now)
        return len(self._crashes) <= self.limit

    def crashes(self, now: float) -> int:
        """Crashes that still count against the budget at ``now``."""
        self._prune(now)
        return len(self._crashes)

    def pardon(self, at: float) -> bool:
        """Take back the crash recorded at ``at``: it turned out to be a fenced stop
        (a member's agent stopped the session because the leader was silent), which
        must not count. Whether there was such a crash."""
        try:
            self._crashes.remove(at)
        except ValueError:
            return False
        return True

    def reset(self) -> None:
        """Forget every crash, e.g. after an operator restarts a FAILED session by hand."""
        self._crashes.clear()


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a dropped WhatsApp connection is retried before the session is FAILED.

    The first attempt is immediate because most drops are momentary network
    blips. The second follows ``first_delay`` later and each later wait doubles, up
    to ``delay``: an outage of a few seconds ends within seconds (a one-time code in
    the queue ages meanwhile), while a real outage, or a server refusing the account,
    is soon tried only every ``delay``, not hammered, which could get the account
    flagged. ``first_delay`` None (or at least ``delay``) is a steady ``delay``.
    After ``attempts`` attempts the session gives up and waits for a person, since a
    logged-out or banned account will not come back alone.
    """

    attempts: int
    delay: float
    first_delay: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1 (got {self.attempts})")
        if self.delay < 0:
            raise ValueError(f"delay must not be negative (got {self.delay})")
        if self.first_delay is not None and not self.first_delay > 0:
            raise ValueError(f"first_delay must be over 0 (got {self.first_delay})")

    def next_delay(self, attempt: int) -> float | None:
        """Seconds to wait before attempt number ``attempt`` (1-based), or None to give up."""
        if attempt < 1:
            raise ValueError(f"attempt must be at least 1 (got {attempt})")
        if attempt > self.attempts:
            return None
        if attempt == 1:
            return 0.0
        if self.first_delay is None:
            return self.delay
        doublings = min(attempt - 2, 64)  # 2**64 times anything over 0 passes any delay
        factor: int = 2 ** doublings  # an int: typeshed types int ** int as Any
        return min(self.delay, self.first_delay * factor)


def retry_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """Delay before retrying a message whose ``attempt``-th send failed transiently.

    Capped exponential backoff with "equal jitter": half the delay is fixed, half is
    random (``rand`` in [0, 1), passed in so tests are deterministic), so many
    messages that failed together do not retry in lock-step.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    factor: int = 2 ** (attempt - 1)  # an int: typeshed types int ** int as Any
    delay = min(cap, base * factor)
    return delay / 2 + delay / 2 * rand


def rate_overlimit_pause(strikes: int, base: float, cap: float) -> float:
    """How long a session sends nothing after WhatsApp's ``strikes``-th 429 in a row
    (rate-overlimit on a recipient lookup): ``base``, doubled per strike, up to ``cap``
    (a cap below ``base`` means ``base``). No jitter: one session pauses as a whole."""
    if strikes < 1:
        raise ValueError("strikes count from 1")
    return min(max(base, cap), base * 2.0 ** min(strikes - 1, 32))
