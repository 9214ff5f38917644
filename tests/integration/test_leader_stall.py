"""Issue 22's scenario H3 with leases: the leader itself stalls.

The cluster of ``test_partitions`` (``netns_cluster``: a leader with one slot, a member
with two, each a real ``wagate serve`` in a network namespace of its own, the leases'
PostgreSQL on the bridge, sends flowing through the leader's API). Every process of the
leader's run (launcher, actor system, session processes, web workers; not the database)
is stopped with SIGSTOP and continued with SIGCONT, as a stalled host is.

A leader that took its own 6 s stall for its member's silence moved every session onto
its one slot, and a 2.6 s stall counted fenced sessions as crashes (more than 5 in
300 s make a session FAILED for good). Now the leader's checker sees the gap in its own
runs (``PauseDetector``) and gives every member a new window instead.

Witnesses: the connection log (no session connects on the leader that was the
member's; zero overlap; one live connection each after), the leader's audit log (no
``cluster.member_lost``) and actors log (no crash, no restart budget spent), the
sessions' statuses (none FAILED), and the inbox (nothing lost, no unflagged duplicate).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.transport.connection_log import overlaps
from tests import netns
from tests.integration.harness import Gateway
from tests.integration.netns_cluster import (  # noqa: F401 (fixtures: net, pg)
    LEADER,
    MEMBER,
    check_messages,
    died_processes,
    net,
    pg,
    pid_alive,
    placement,
    run_processes,
    run_with_load,
    settle_live,
    start_cluster,
)
from tests.integration.test_partitions import SLOW_HEARTBEAT, SLOW_LEASE
from tests.pg import PgCluster

SESSIONS = ("s1", "s2", "s3")
PLACED = {"s1": LEADER, "s2": MEMBER, "s3": MEMBER}
CRASHED = "child exited unexpectedly; restarting"
FENCED = "a session process was fenced; starting it again (not a crash)"
EXHAUSTED = "restart budget exhausted"


def audit_events(gw: Gateway) -> list[dict[str, object]]:
    """Every entry of ``gw``'s audit chain (in the database in lease mode)."""
    from tests.integration.test_audit import entries

    found = entries(gw)
    assert found, "no audit entries: the chain was not found"
    return list(found)


def log_entries(gw: Gateway) -> list[dict[str, object]]:
    """Every JSON line of ``gw``'s actors log (anything else is skipped)."""
    entries = []
    path = gw.data_dir / "logs" / "actors.log"
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def crashes_counted(gw: Gateway) -> dict[str, int]:
    """Per session, the crashes the leader's supervisor still counts: each exit it
    logged as a crash, less those it took back once it learnt that the exit was a
    fenced stop (the notice and the exit race: ``outcome: pardon``)."""
    counted: Counter[str] = Counter()
    for entry in log_entries(gw):
        if entry.get("event") == CRASHED and str(entry.get("child", "")).startswith("session:"):
            counted[str(entry["child"]).removeprefix("session:")] += 1
        elif entry.get("event") == FENCED and entry.get("outcome") == "pardon":
            counted[str(entry["session"])] -= 1
    return {s: n for s, n in counted.items() if n}


class Stopped:
    """Every process of a gateway's run held with SIGSTOP until ``resume``; the
    processes started while stopping are caught by looking again until none is new."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.pids: set[int] = set()

    def stop(self) -> None:
        while new := set(run_processes(self.gw)) - self.pids:
            for pid in new:
                if pid_alive(pid):
                    self.gw.signal_process(pid, signal.SIGSTOP)
            self.pids |= new

    def resume(self) -> None:
        for pid in sorted(self.pids):
            if pid_alive(pid):
                self.gw.signal_process(pid, signal.SIGCONT)


@pytest.fixture
def stopped() -> Iterator[list[Stopped]]:
    """Whatever a test stopped is continued however it ends (before the gateways are
    stopped: the fixture is torn down first, as it is set up after them)."""
    held: list[Stopped] = []
    try:
        yield held
    finally:
        for group in held:
            group.resume()


@pytest.mark.parametrize(("stall", "timing"), [(6.0, "test"), (2.6, "test"), (2.6, "default")])
def test_h3_a_stalled_leader_moves_no_session_and_counts_no_crash(
        stall: float, timing: str, net: netns.Topology, pg: PgCluster,  # noqa: F811
        make_gateway: Callable[..., Gateway], stopped: list[Stopped],
        tmp_path: Path) -> None:
    """``test`` timing (heartbeat 1 s x 3, lease 3 s, renew 0.5 s): a 6 s stall outlasts
    the leases and the member's window, and so may a 2.6 s one as the member sees it
    (its last beat came up to 1 s before the stop): the member's agent fences its
    sessions, the leader's s1 loses its lease; all of them start again where they were,
    as fenced stops. ``default`` timing (heartbeat 2 s x 5, lease 10/3/2 s, as
    production's defaults are in scale): a 2.6 s stall changes nothing at all. None may
    move a session, spend restart budget or lose a message."""
    shared = tmp_path / "shared"
    if timing == "test":
        leader, _member = start_cluster(make_gateway, net, pg, shared)
    else:
        leader, _member = start_cluster(make_gateway, net, pg, shared, SLOW_LEASE, None,
                                        **SLOW_HEARTBEAT)
    held = Stopped(leader)
    stopped.append(held)
    times: dict[str, int] = {}

    def fault() -> None:
        times["stop_ns"] = time.time_ns()
        held.stop()
        try:
            time.sleep(stall)  # the fault itself: how long the leader is held
        finally:
            held.resume()
            times["cont_ns"] = time.time_ns()

    load, fault_ns = run_with_load(leader, f"stall{stall:g}", fault, cleanup=held.resume)
    log = settle_live(leader, shared)
    now = time.time_ns()
    assert overlaps(log, until_ns=now, died=died_processes(log, now)) == [], log
    where = {s: placement(leader, s) for s in SESSIONS}
    assert {s: p["host"] for s, p in where.items()} == PLACED, where
    assert {p["state"] for p in where.values()} == {"CONNECTED"}, where
    # No session of the member connected on the leader: nothing was re-placed.
    ups = Counter((r.session, r.host) for r in log if r.kind == "up" and r.at_ns >= fault_ns)
    moved = {k: n for k, n in ups.items() if k[1] != PLACED[k[0]]}
    assert not moved, f"sessions re-placed by the leader's own pause: {ups}"
    audit = Counter(str(e["event"]) for e in audit_events(leader))
    assert audit["cluster.member_lost"] == 0, audit
    assert crashes_counted(leader) == {}, [e for e in log_entries(leader)
                                           if e.get("event") in (CRASHED, FENCED)]
    assert not [e for e in log_entries(leader) if e.get("event") == EXHAUSTED]
    fences = Counter(f"{e['session']}:{e['reason']}" for e in log_entries(leader)
                     if e.get("event") == FENCED)
    if timing == "default":  # far below the lease and the heartbeat window
        assert not ups and not fences, (ups, fences)
    counts = check_messages(leader, load)
    print(f"\nH3 leader stopped {stall:g} s, {timing} timing ({len(held.pids)} processes): "
          f"connection ups since the stop {dict(ups) or 0}, fenced {dict(fences)}, "
          f"crashes counted 0, member lost 0, {counts}")
