"""Bursts of refusals: the first of a kind written at once, the rest counted, and
nothing a client can vary cheaply makes a new kind."""

from __future__ import annotations

from typing import Any

from actors.audit.bursts import (
    MAX_KINDS_PER_SOURCE,
    MAX_WINDOW_FACTOR,
    BurstCounter,
    source_network,
)

REFUSED = {"ip": "10.0.0.7", "code": "UNAUTHENTICATED", "route": "/graphql",
           "path": "/graphql", "actor": None}


def test_first_at_once_then_one_summary_per_window() -> None:
    bursts = BurstCounter(window=1.0)
    assert bursts.observe(REFUSED, 100.0) == {**REFUSED, "network": "10.0.0.0/24"}
    assert bursts.observe(REFUSED, 100.2) is None
    assert bursts.observe(REFUSED, 100.9) is None
    assert bursts.due(100.95) == []  # the window is still open
    [summary] = bursts.due(101.0)
    assert summary == {"ip": "10.0.0.7", "code": "UNAUTHENTICATED", "route": "/graphql",
                       "actor": None, "network": "10.0.0.0/24", "repeated": 2,
                       "first": 100.2, "last": 100.9, "addresses": 1}
    assert bursts.observe(REFUSED, 101.1) is None  # the kind goes on: counted


def test_a_lone_refusal_needs_no_summary_and_is_forgotten() -> None:
    bursts = BurstCounter(window=1.0)
    bursts.observe(REFUSED, 5.0)
    assert bursts.due(6.0) == [] and len(bursts) == 1
    assert bursts.due(5.0 + MAX_WINDOW_FACTOR) == [] and len(bursts) == 0
    assert bursts.observe(REFUSED, 100.0) is not None  # a new kind: written at once


def test_kinds_are_kept_apart() -> None:
    bursts = BurstCounter(window=1.0)
    other = {**REFUSED, "ip": "10.0.1.8"}
    assert bursts.observe(REFUSED, 1.0) is not None
    assert bursts.observe(other, 1.0) is not None
    bursts.observe(other, 1.5)
    assert [s["ip"] for s in bursts.due(2.0)] == ["10.0.1.8"]


def test_paths_a_client_chooses_do_not_make_new_kinds() -> None:
    """3000 refusals, each with its own path, of one route: one line now, one later."""
    bursts = BurstCounter(window=1.0)
    written = [first for n in range(3000)
               if (first := bursts.observe({**REFUSED, "route": "(no route)",
                                            "path": f"/admin/health/{n}/" + "x" * 200},
                                           1.0 + n / 10000))]
    assert len(written) == 1 and written[0]["path"].startswith("/admin/health/0/")
    [summary] = bursts.flush()
    assert summary["repeated"] == 2999 and "path" not in summary


def test_the_addresses_of_one_network_are_one_source() -> None:
    bursts = BurstCounter(window=1.0)
    v6 = [f"2001:db8:0:1:{n:x}::1" for n in range(500)]
    v4 = [f"192.0.2.{n}" for n in range(256)]
    written = [f for ip in v6 + v4 if (f := bursts.observe({**REFUSED, "ip": ip}, 1.0))]
    assert [w["network"] for w in written] == ["2001:db8:0:1::/64", "192.0.2.0/24"]
    assert source_network("::ffff:192.0.2.9") == "192.0.2.0/24"  # an IPv4-mapped peer
    assert source_network("not an address") == source_network(None) == "unknown"
    summaries = {s["network"]: s for s in bursts.flush()}
    assert summaries["2001:db8:0:1::/64"]["repeated"] == 499
    assert summaries["2001:db8:0:1::/64"]["addresses"] == 64  # counted up to 64


def test_one_source_holds_a_bounded_number_of_kinds() -> None:
    """A client cycling through codes, routes and token names fills only its own
    share of the table; its further kinds are counted under its own catch-all."""
    bursts = BurstCounter(window=1.0)
    written = [f for n in range(200)
               if (f := bursts.observe({**REFUSED, "route": f"/r{n}", "actor": f"t{n}"}, 1.0))]
    assert len(written) == MAX_KINDS_PER_SOURCE + 1
    assert written[-1]["overflow"] is True and written[-1]["network"] == "10.0.0.0/24"
    assert len(bursts) == MAX_KINDS_PER_SOURCE + 1
    # another source still gets kinds of its own
    assert bursts.observe({**REFUSED, "ip": "10.9.9.9"}, 1.0) is not None
    overflow = [s for s in bursts.flush() if s.get("overflow")]
    assert overflow[0]["repeated"] == 200 - MAX_KINDS_PER_SOURCE - 1


def test_kinds_are_bounded_and_the_rest_is_still_counted() -> None:
    bursts = BurstCounter(window=1.0, max_kinds=3)
    for n in range(10):
        bursts.observe({**REFUSED, "ip": f"10.0.{n}.1"}, 1.0)
    assert len(bursts) == 4  # three kinds and the catch-all
    summaries = bursts.flush()
    [overflow] = [s for s in summaries if s.get("overflow")]
    assert overflow["network"] == "*"
    assert overflow["repeated"] == 10 - 3 - 1  # the first overflow was written at once


def _lines_for_a_paced_flood(per_second: float, seconds: int) -> list[dict[str, Any]]:
    bursts = BurstCounter(window=1.0)
    lines: list[dict[str, Any]] = []
    steps = int(seconds * per_second)
    for step in range(steps):
        now = step / per_second
        lines += bursts.due(now)
        if (first := bursts.observe(REFUSED, now)) is not None:
            lines.append(first)
    lines += bursts.flush()
    assert sum(line.get("repeated", 1) for line in lines) == steps  # every one counted
    return lines


def test_a_flood_that_goes_on_is_summarised_at_growing_intervals() -> None:
    """Whether a client hammers or paces itself to one refusal per window, a kind costs
    about one line per MAX_WINDOW_FACTOR windows once it goes on."""
    hour = 3600
    bound = hour / MAX_WINDOW_FACTOR + 10  # the doubling's first windows, the first line
    assert len(_lines_for_a_paced_flood(20, hour)) <= bound
    assert len(_lines_for_a_paced_flood(1.01, hour)) <= bound
