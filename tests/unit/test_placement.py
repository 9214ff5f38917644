"""Placement and heartbeat tracking of a cluster (actors.supervisor.placement): pure logic."""

from __future__ import annotations

import pytest

from actors.supervisor.placement import HeartbeatTracker, HostLoad, choose_host, loads
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
