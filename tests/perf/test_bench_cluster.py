"""The cluster benchmark's pure helpers: ``pytest tests/perf/test_bench_cluster.py``.

The benchmark itself (``python -m tests.perf.bench_cluster``, about two minutes of
load on both cores, PostgreSQL and three gateways) is not collected here: these
checks are what its figures rest on (which CPU counts as the gateway's, how the
ratios and the sends' sessions are made) and take milliseconds.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.perf.bench_api import Phase, build_payloads
from tests.perf.bench_cluster import (
    cpu_per_send,
    merge_phases,
    merge_sections,
    name_sessions,
    ratio,
    relabel,
    session_names,
    top_processes,
)


def test_session_names_are_numbered_and_at_least_one() -> None:
    assert session_names(2) == ("b1", "b2")
    with pytest.raises(ValueError, match="at least one"):
        session_names(0)


def test_merge_sections_keeps_the_keys_of_earlier_configs_in_a_section() -> None:
    merged = merge_sections({"simulator": {"poll_interval_seconds": 0.05}, "http": {"workers": 2}},
                            {"simulator": {"server_dir": "shared"}},
                            {"http": {"workers": 3}})
    assert merged == {"simulator": {"poll_interval_seconds": 0.05, "server_dir": "shared"},
                      "http": {"workers": 3}}


def test_cpu_per_send_leaves_the_clients_out_and_the_database_apart() -> None:
    cpu = {"leader outbox actor": 0.5, "member session b1": 0.3,
           "client closed-loop generator 1": 9.0, "postgres 123": 0.1, "postgres 124": 0.1}
    gateway_ms, database_ms = cpu_per_send(cpu, served=100)
    assert gateway_ms == pytest.approx(8.0)
    assert database_ms == pytest.approx(2.0)
    assert all(math.isnan(x) for x in cpu_per_send(cpu, served=0))


def test_top_processes_are_the_busiest_gateway_processes_first() -> None:
    cpu = {"a small": 0.1, "client x": 5.0, "postgres 1": 4.0, "b big": 0.3}
    assert top_processes(cpu, 100, count=2) == "b big 3.00, a small 1.00"
    assert top_processes(cpu, 0) == "n/a"


def test_ratio_is_nan_when_a_side_is_missing() -> None:
    assert ratio(50.0, 100.0) == 0.5
    assert math.isnan(ratio(50.0, 0.0))
    assert math.isnan(ratio(float("nan"), 100.0))
    assert math.isnan(ratio(50.0, float("nan")))


def test_labels_name_the_host_and_the_sessions() -> None:
    labels = relabel({1: "gw outbox actor", 2: "gw thespian logger", 3: "gw launcher"}, "member")
    assert labels == {1: "member outbox actor", 2: "member thespian logger",
                      3: "member launcher"}
    assert name_sessions(labels, {"b1": 2, "b2": 99})[2] == "member session b1"


def test_sends_name_the_sessions_in_turn() -> None:
    payloads = build_payloads("send", 8080, ["+14155550100", "+14155550101", "+14155550102"],
                              "wgt_x", ("b1", "b2"))
    bodies = [json.loads(p.split(b"\r\n\r\n", 1)[1]) for p in payloads]
    assert [b["variables"]["session"] for b in bodies] == ["b1", "b2", "b1"]
    assert all("$session" in b["query"] for b in bodies)
    unnamed = json.loads(build_payloads("send", 8080, ["+14155550100"], "wgt_x")[0]
                         .split(b"\r\n\r\n", 1)[1])
    assert "session" not in unnamed["variables"]


def _phase(window: float, latencies: list[float], cpu: dict[str, float], busy: float,
           errors: int = 0) -> Phase:
    return Phase(name="send", kind="send", mode="closed", window=window,
                 latencies=latencies, errors=errors, total_ok=len(latencies) + 1,
                 total_errors=errors, samples=[], max_lag=0.0, cpu=cpu, busy=busy,
                 connections={}, tcp_opens=0)


def test_merged_windows_pool_latencies_and_add_time_and_cpu() -> None:
    merged = merge_phases([_phase(10.0, [0.3, 0.1], {"a": 1.0, "b": 2.0}, 1.0),
                           _phase(30.0, [0.2], {"a": 3.0}, 2.0, errors=1)])
    assert merged.window == 40.0
    assert merged.latencies == [0.1, 0.2, 0.3]
    assert merged.throughput == pytest.approx(3 / 40)
    assert merged.cpu == {"a": 4.0, "b": 2.0}
    assert merged.busy == pytest.approx(1.75)  # weighted by each window's length
    assert (merged.errors, merged.total_ok, merged.total_errors) == (1, 5, 1)
