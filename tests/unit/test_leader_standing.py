"""A leader's standing under the leadership lock (actors/leases/standing.py): pure."""

from __future__ import annotations

import pytest

from actors.leases.standing import Change, change, may_retake


@pytest.mark.parametrize(("was", "answer", "expected"), [
    (False, True, Change.TOOK),
    (True, False, Change.LOST),
    (True, True, None),
    (False, False, None),  # a standby that stays one: no step-down at start
    (True, None, None),  # no answer decides nothing
    (False, None, None),
])
def test_only_an_answer_that_differs_is_a_change(was: bool, answer: bool | None,
                                                 expected: Change | None) -> None:
    assert change(was, answer) is expected


def test_a_contender_that_never_lost_the_lock_may_always_try() -> None:
    assert may_retake(None, 0.0, 3.0)


def test_a_loser_waits_the_hold_off_before_trying_again() -> None:
    assert not may_retake(100.0, 100.0, 3.0)
    assert not may_retake(100.0, 102.9, 3.0)
    assert may_retake(100.0, 103.0, 3.0)
    assert may_retake(100.0, 100.0, 0.0)  # no hold-off: at once
