"""Bursts of identical refusals: the first written at once, repeats counted."""

from __future__ import annotations

from actors.audit_bursts import BurstCounter

REFUSED = {"ip": "10.0.0.7", "code": "UNAUTHENTICATED", "path": "/graphql", "actor": None}


def test_first_at_once_then_one_summary_per_window() -> None:
    bursts = BurstCounter(window=1.0)
    assert bursts.observe(REFUSED, 100.0) == REFUSED
    assert bursts.observe(REFUSED, 100.2) is None
    assert bursts.observe(REFUSED, 100.9) is None
    assert bursts.due(100.95) == []  # the window is still open
    [summary] = bursts.due(101.0)
    assert summary == {**REFUSED, "repeated": 2, "first": 100.0, "last": 100.9}
    assert len(bursts) == 0
    assert bursts.observe(REFUSED, 101.1) == REFUSED  # a new burst starts


def test_a_lone_refusal_needs_no_summary() -> None:
    bursts = BurstCounter(window=1.0)
    bursts.observe(REFUSED, 5.0)
    assert bursts.due(10.0) == [] and len(bursts) == 0


def test_kinds_are_kept_apart() -> None:
    bursts = BurstCounter(window=1.0)
    other = {**REFUSED, "ip": "10.0.0.8"}
    assert bursts.observe(REFUSED, 1.0) is not None
    assert bursts.observe(other, 1.0) is not None
    bursts.observe(other, 1.5)
    assert [s["ip"] for s in bursts.due(2.0)] == ["10.0.0.8"]


def test_kinds_are_bounded_and_the_rest_is_still_counted() -> None:
    bursts = BurstCounter(window=1.0, max_kinds=3)
    for n in range(10):
        bursts.observe({**REFUSED, "ip": f"10.0.0.{n}"}, 1.0)
    assert len(bursts) == 4  # three kinds and the catch-all
    summaries = bursts.flush()
    [overflow] = [s for s in summaries if s.get("overflow")]
    assert overflow["repeated"] == 10 - 3 - 1  # the first overflow was written at once
