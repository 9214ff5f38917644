"""Placement and heartbeat tracking of a cluster (actors.supervisor.placement): pure logic."""

from __future__ import annotations

import math

import pytest

from actors.supervisor.placement import (
    PAUSE_FACTOR,
    HeartbeatTracker,
    HostLoad,
    PauseDetector,
    choose_host,
    loads,
)
from gateway.cli.cluster_mode import cluster_problem
from gateway.core.config import ConfigError, load_config


def test_the_host_with_a_free_slot_and_fewest_sessions_wins() -> None:
    hosts = [HostLoad("a", 1, 1), HostLoad("b", 3, 2), HostLoad("c", 3, 1)]
    assert choose_host(hosts) == "c"


def test_ties_go_to_the_preferred_host_then_by_name() -> None:
    hosts = [HostLoad("b", 2, 0), HostLoad("a", 2, 0), HostLoad("leader", 1, 0)]
    assert choose_host(hosts, prefer="leader") == "leader"
    assert choose_host(hosts) == "a"


def test_full_hosts_refuse_a_new_session_but_take_a_moving_one() -> None:
    hosts = [HostLoad("a", 1, 1), HostLoad("b", 0, 0)]
    assert choose_host(hosts) is None
    assert choose_host(hosts, overflow=True) == "b"  # fewest sessions, over its slots
    assert choose_host([], overflow=True) is None


def test_loads_count_placed_sessions_per_known_host() -> None:
    assert loads({"a": 1, "b": 2}, ["a", "b", "b", "gone"]) == [
        HostLoad("a", 1, 1), HostLoad("b", 2, 2)]


def test_a_peer_is_lost_only_after_the_whole_window() -> None:
    tracker = HeartbeatTracker(interval=2.0, misses=3)
    tracker.watch("m", now=100.0)
    assert tracker.lost(105.9) == []
    tracker.heard("m", now=105.0)
    assert tracker.lost(110.9) == []
    assert tracker.lost(111.1) == ["m"]
    tracker.heard("unknown", now=111.0)  # never watched: ignored
    assert tracker.watched() == ["m"]
    tracker.forget("m")
    assert tracker.lost(1000.0) == []
    with pytest.raises(ValueError):
        HeartbeatTracker(0, 3)


def _leader_beats(tracker: HeartbeatTracker, until: float) -> float:
    """A leader checking every second with a member that answers every check."""
    now = 0.0
    while now < until:
        now += 1.0
        tracker.heard("m", now - 0.1)
        assert tracker.check(now) == ([], None)
    return now


def test_a_six_second_stall_of_the_leader_itself_loses_no_member() -> None:
    """Defect H3: the leader, stalled 6 s, took its own pause for the member's silence
    and moved every session. The pause-blind look (``lost``, what the check used)
    shows the defect; ``check`` forgives the pause, once, and starts a new window."""
    tracker = HeartbeatTracker(interval=1.0, misses=3)
    tracker.watch("m", now=0.0)
    now = _leader_beats(tracker, 5.0) + 6.0  # the leader stalls: no check, no ack read
    assert tracker.lost(now) == ["m"]  # before the fix: the member was declared dead
    assert tracker.check(now) == ([], 6.0)
    assert tracker.silent_for("m", now) == 0.0  # just heard from
    assert tracker.check(now + 1.0) == ([], None)  # warned once, then checks as before
    assert tracker.check(now + 2.0) == ([], None)
    assert tracker.check(now + 3.1) == (["m"], None)  # a member really silent is lost


@pytest.mark.parametrize(("gap", "paused"), [(1.5 - 1e-9, False), (1.5, False),
                                             (1.5 + 1e-9, True), (6.0, True)])
def test_a_gap_over_one_and_a_half_intervals_is_a_pause(gap: float, paused: bool) -> None:
    detector = PauseDetector(2.0)
    assert detector.paused(10.0) is None  # the first run has nothing to compare with
    found = detector.paused(10.0 + gap * 2.0)
    assert (found is not None) is paused
    assert PAUSE_FACTOR == 1.5


def test_a_clock_that_jumps_backwards_is_a_pause() -> None:
    detector = PauseDetector(1.0)
    detector.paused(100.0)
    assert detector.paused(97.0) == -3.0
    assert detector.paused(98.0) is None  # measured from the new reading on
    tracker = HeartbeatTracker(1.0, 2)
    tracker.watch("m", 100.0)
    tracker.check(100.0)
    assert tracker.check(50.0) == ([], -50.0)
    assert tracker.check(51.0) == ([], None)  # the window restarted at the new reading


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan"), float("inf"),
                                      float("-inf")])
def test_a_pause_needs_a_finite_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError):
        PauseDetector(interval)
    with pytest.raises(ValueError):
        HeartbeatTracker(interval, 3)


def test_the_config_ranges_keep_nan_and_inf_from_the_heartbeat() -> None:
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ConfigError):
            load_config(None, {"cluster.heartbeat_seconds": bad})


def test_cluster_keys_are_checked_and_cluster_mode_needs_allow_networks() -> None:
    with pytest.raises(ConfigError, match="allow_networks"):
        load_config(None, {"cluster.allow_networks": ["not-a-net"]})
    with pytest.raises(ConfigError, match="leaders"):
        load_config(None, {"cluster.leaders": ["10.0.0.1"]})
    with pytest.raises(ConfigError, match="advertise_address"):
        load_config(None, {"cluster.advertise_address": "leader.example"})
    assert cluster_problem(load_config(None)) is None
    leader = {"cluster.role": "leader", "cluster.advertise_address": "10.0.0.1"}
    problem = cluster_problem(load_config(None, leader))
    assert problem is not None and "cluster.allow_networks" in problem
    ok = {**leader, "cluster.allow_networks": ["10.0.0.0/24"]}
    assert cluster_problem(load_config(None, ok)) is None
    member = {**ok, "cluster.role": "member"}
    assert "cluster.leaders" in (cluster_problem(load_config(None, member)) or "")


def test_a_slow_link_makes_a_peer_late_for_a_window_without_losing_it() -> None:
    """Scenario C of the partition tests: 500 ms each way and 30 % loss. Answers come,
    but a round trip over a quarter interval marks the peer late (health: HOST_LATE)
    for a whole window, so the verdict does not flicker; it is never lost for it."""
    tracker = HeartbeatTracker(interval=2.0, misses=3)
    tracker.watch("m", now=0.0)
    tracker.heard("m", now=2.01, round_trip=0.01)
    assert not tracker.late("m", 2.5)
    tracker.heard("m", now=5.0, round_trip=1.0)  # over 0.5 s: slow
    assert tracker.late("m", 5.0)
    tracker.heard("m", now=6.02, round_trip=0.02)  # one quick answer changes nothing
    assert tracker.late("m", 10.9) and tracker.lost(10.9) == []
    tracker.heard("m", now=10.0, round_trip=0.02)
    tracker.heard("m", now=12.0, round_trip=0.02)
    assert not tracker.late("m", 12.0)  # a window (6 s) after the last slow answer
    assert tracker.late("m", 15.1)  # silent for over 1.5 intervals: late before lost
    assert tracker.lost(15.1) == []
    tracker.heard("m", now=16.0, round_trip=math.inf)  # a beat too old to remember
    assert tracker.late("m", 16.0)
    tracker.heard("m", now=17.0)  # not measured: no verdict either way
    assert tracker.late("m", 17.0)
    tracker.forget("m")
    assert not tracker.late("m", 17.0)
    assert not tracker.late("never-watched", 17.0)
