"""A leader's standing under the leadership lock: pure, no database, no actors.

A leader that loses the lock while it lives (its lock connection was ended: a
terminated backend, a database restart, a cut that healed, an idle timeout) must step
down: another leader may take the lock and become the active one, and it can place
the sessions only once their leases are free. So the loser stops what it placed and
becomes a standby (issue 22, item 2).

It must then leave the lock alone for a while: a loser that tried again at once would
mostly take it back before any standby had its turn (a standby tries once per renew
period), and the sessions it just stopped would come back where they were. After
``hold_off`` seconds (``RETAKE_AFTER_PERIODS`` renew periods: every standby gets a
try, even one whose try comes a period late on a loaded host) it contends again like
any standby, so a lock lost only briefly is taken back by whichever leader asks first.
"""

from __future__ import annotations

from enum import Enum

RETAKE_AFTER_PERIODS = 2


class Change(Enum):
    """What a new answer about the lock means for a leader that believed ``was``."""

    TOOK = "took"  # it holds the lock now: it becomes the active leader
    LOST = "lost"  # it held the lock and no longer does: it steps down


def change(was_holding: bool, holds: bool | None) -> Change | None:
    """The change from ``was_holding`` to the answer ``holds``; None when nothing
    changed or there was no answer (a question left unanswered decides nothing: a
    server that does not answer cannot grant the lock to anyone else either)."""
    if holds is None or holds == was_holding:
        return None
    return Change.TOOK if holds else Change.LOST


def may_retake(lost_at: float | None, now: float, hold_off: float) -> bool:
    """Whether a contender that lost the lock at ``lost_at`` (None: never lost it) may
    try to take it again at ``now`` (same clock, monotonic)."""
    return lost_at is None or now - lost_at >= hold_off
