"""The holder's side of a lease (actors/leases/timing.py): when to renew, when to stop."""

from __future__ import annotations

import time

import pytest

from actors.leases.timing import Due, Holding, LeaseTiming, LeaseTimingError, holder_clock
from gateway.core.config import Config

TIMING = LeaseTiming(10.0, 3.0, 2.0)


def test_the_defaults_make_a_valid_timing() -> None:
    assert LeaseTiming.of(Config().cluster) == TIMING


@pytest.mark.parametrize("values", [(5.0, 3.0, 2.0), (1.0, 3.0, 2.0), (10.0, 0.0, 2.0),
                                    (float("nan"), 3.0, 2.0), (float("inf"), 3.0, 2.0),
                                    (10.0, 3.0, -2.0)])
def test_an_unsafe_timing_is_refused(values: tuple[float, float, float]) -> None:
    with pytest.raises(LeaseTimingError):
        LeaseTiming(*values)


def test_a_holder_waits_renews_then_stops_counting_from_when_it_sent() -> None:
    holding = Holding(epoch=4, sent_at=100.0, timing=TIMING)
    assert holding.due(100.0) is Due.WAIT
    assert holding.due(102.999) is Due.WAIT
    assert holding.due(103.0) is Due.RENEW
    assert holding.due(109.999) is Due.RENEW  # keeps trying while the lease lasts
    assert holding.due(110.0) is Due.STOP     # sent + lease: the real expiry is no earlier


def test_the_holder_stops_a_margin_before_any_rival_may_start() -> None:
    """A rival may take the lease at the database's expiry + margin; the expiry is no
    earlier than sent + lease, so the holder's stop is at least a margin before."""
    holding = Holding(epoch=1, sent_at=0.0, timing=TIMING)
    earliest_db_expiry = holding.sent_at + TIMING.lease
    assert earliest_db_expiry + TIMING.margin - holding.stop_by == TIMING.margin


def test_a_renewal_moves_the_deadlines_on_and_a_late_old_answer_never_back() -> None:
    holding = Holding(epoch=2, sent_at=100.0, timing=TIMING).renewed(103.0)
    assert (holding.epoch, holding.renew_at, holding.stop_by) == (2, 106.0, 113.0)
    assert holding.renewed(101.0) == holding


def test_the_holder_clock_is_boottime_not_the_wall_clock() -> None:
    """CLOCK_BOOTTIME counts through a suspend and never follows the wall clock."""
    before = holder_clock()
    assert abs(before - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0
    assert holder_clock() >= before
