"""Issue 22's scenarios C1 and C3 with leases, in network namespaces.

The same cluster as ``test_partitions`` (``netns_cluster``: a leader with one slot, a
member with two, each a real ``wagate serve`` in a network namespace of its own, the
leases' PostgreSQL on the bridge, sends flowing through the leader's API), two other
faults:

- C1: a member's session process is SIGKILLed, its supervisor starts a new one on
  the member, and the member is cut from the leader right after (it still reaches
  the database). The old agent stopped only the sessions named in the leader's last
  heartbeat, so a process started after that beat kept its account connected while
  the leader started the session elsewhere.
- C3: every process of the member (its ``wagate serve``, the actor system with its
  agent and session processes, the web workers) frozen at once with the cgroup v2
  freezer, as a suspended host is: nothing on the member can fence anything. The
  leader re-places the member's sessions only once their leases expired plus the
  margin; thawed, the old processes must neither connect nor send again.

The witness is the simulator's connection log and inbox, as in ``test_partitions``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.transport.connection_log import ConnectionRecord, overlaps
from gateway.cli.ownership import owned_processes
from tests import freezer, netns
from tests.integration.harness import Gateway, wait_for
from tests.integration.netns_cluster import (  # noqa: F401 (fixtures: net, pg)
    LEADER,
    LEASE,
    MEMBER,
    Figures,
    check_messages,
    connection_log,
    member_alive,
    net,
    pg,
    placement,
    run_with_load,
    start_cluster,
)
from tests.integration.test_cluster_leases import lease_free_at_ns
from tests.pg import PgCluster

SESSIONS = ("s1", "s2", "s3")
MOVED = LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 20


def _on_leader(leader: Gateway, sessions: tuple[str, ...]) -> bool:
    return all(placement(leader, s) == {"state": "CONNECTED", "host": LEADER}
               for s in sessions)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _live_connections(log: list[ConnectionRecord]) -> dict[str, int]:
    """Per session, the connections up now whose process still runs (a process killed
    after its lease was lost writes no "down")."""
    downs = {r.conn for r in log if r.kind == "down"}
    counts: dict[str, int] = {}
    for r in log:
        if r.kind == "up" and r.conn not in downs and _alive(r.pid):
            counts[r.session] = counts.get(r.session, 0) + 1
    return counts


def _settle(leader: Gateway, shared: Path) -> list[ConnectionRecord]:
    """The member back, every session connected, one live connection each."""
    wait_for(lambda: member_alive(leader), 30, 0.2, "the member to be back")
    wait_for(lambda: all(placement(leader, s)["state"] == "CONNECTED" for s in SESSIONS),
             30, 0.2, "every session connected")
    return wait_for(lambda: (log := connection_log(shared))
                    and _live_connections(log) == dict.fromkeys(SESSIONS, 1) and log,
                    15, 0.2, "one live connection per session")


def _died(log: list[ConnectionRecord], gone_by: int) -> dict[tuple[str, int], int]:
    """Processes of the log that no longer run: their open connections ended by
    ``gone_by`` (they ended no later than the check that found them gone)."""
    return {(r.host, r.pid): gone_by for r in log if not _alive(r.pid)}


def test_c1_a_session_restarted_after_the_last_beat_is_fenced_too(
        net: netns.Topology, pg: PgCluster,  # noqa: F811
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """C1: s2's process on the member is SIGKILLed; as soon as its new process runs
    there, the member is cut from the leader (both alive, the member still reaching
    the database). The leader's heartbeats never named the new process, and it can
    renew its lease: only the member's agent can stop it. The leader must get s2 and
    s3 once their leases are free, never two copies at once; after the heal one copy
    each; nothing lost or doubled.

    With the database reachable, leases alone keep the account from connecting twice
    but not the session from being stuck: before the agent stopped every local
    session process on a silent leader (``LocalLeases.fence``), it stopped only s3,
    s2's new process kept renewing, and the leader waited for s2's lease (LEASE_HELD)
    until the heal."""
    shared = tmp_path / "shared"
    leader, member = start_cluster(make_gateway, net, pg, shared)
    restarted: dict[str, int] = {}
    moved: dict[str, float] = {}

    def fault() -> None:
        old = leader.session_pid("s2")
        before = set(member.actor_pids())
        assert old in before
        member.signal_process(old, signal.SIGKILL)
        wait_for(lambda: not _alive(old), 10, 0.01, "the killed process to be gone")
        restarted.update(old=old, gone_ns=time.time_ns())
        # The supervisor starts a new s2 on the member (its restart backoff, 0.2 s).
        up = wait_for(lambda: next((r for r in connection_log(shared) if r.kind == "up"
                                    and r.session == "s2" and r.host == MEMBER
                                    and r.pid not in before), None),
                      LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 10, 0.01,
                      "s2 connected again on the member from a new process")
        net.cut(LEADER, MEMBER)
        restarted.update(pid=up.pid, cut_ns=time.time_ns(),
                         up_after_kill_ms=(up.at_ns - restarted["gone_ns"]) // 1_000_000)
        cut = time.monotonic()
        try:
            wait_for(lambda: not member_alive(leader), 20, 0.2, "the leader to lose the member")
            wait_for(lambda: _on_leader(leader, ("s2", "s3")), MOVED, 0.1,
                     "the member's sessions to connect on the leader")
            moved["s"] = round(time.monotonic() - cut, 2)
        finally:
            net.heal(LEADER, MEMBER)

    try:
        load, _ = run_with_load(leader, "c1", fault)
    finally:
        net.heal(LEADER, MEMBER)
    log = _settle(leader, shared)
    now = time.time_ns()
    died = {**_died(log, now), (MEMBER, restarted["old"]): restarted["gone_ns"]}
    found = overlaps(log, until_ns=now, died=died)
    assert found == [], (found, [r for r in log if r.session == "s2"])
    figures = Figures.of(log, restarted["cut_ns"], ("s2", "s3"), MEMBER, LEADER)
    counts = check_messages(leader, load)
    assert counts["duplicates"] == 0, counts
    print(f"\nC1 s2 restarted (connected {restarted['up_after_kill_ms']} ms after the kill), "
          f"then cut: member's sessions down "
          f"{figures.fence}, up on the leader {figures.replace} s after the cut; all on "
          f"the leader {moved['s']} s after it; {counts}")


@pytest.fixture
def frozen_cgroup(make_gateway: Callable[..., Gateway]) -> Iterator[freezer.Freezer]:
    """A throwaway cgroup; thawed and removed before the gateways are stopped (it
    depends on ``make_gateway`` so that its teardown runs first)."""
    why_not = freezer.available()
    if why_not is not None:
        pytest.skip(why_not)
    group = freezer.Freezer()
    try:
        yield group
    finally:
        group.close()


def _member_processes(member: Gateway) -> list[int]:
    """Every process of the member's run: its launcher and all it started."""
    assert member.process is not None
    mark = member.mark()
    assert mark is not None
    return sorted({member.process.pid, *member.actor_pids(), *owned_processes(mark)})


def test_c3_a_frozen_member_never_connects_again_after_the_thaw(
        net: netns.Topology, pg: PgCluster,  # noqa: F811
        frozen_cgroup: freezer.Freezer, make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """C3: every process of the member frozen at once (cgroup v2 freezer). Its agent
    cannot fence and its sessions cannot renew: the leader starts s2 and s3 on itself
    only once their leases expired plus the margin. Thawed, the old processes find
    their leases gone: they disconnect without connecting or sending again, and one
    copy of each session runs.

    The log's witness for a frozen process: its connection was up when it froze and
    its "down" can only be written once it runs again; a frozen process sends and
    receives nothing (the service replaces a silent connection when the account logs
    in elsewhere), so its connection counts until the freeze, and after the thaw it
    may write nothing but that "down"."""
    shared = tmp_path / "shared"
    leader, member = start_cluster(make_gateway, net, pg, shared)
    froze: dict[str, object] = {}

    def fault() -> None:
        sessions = {leader.session_pid(s) for s in ("s2", "s3")}
        frozen_cgroup.add(_member_processes(member))
        frozen_cgroup.add(_member_processes(member))  # born meanwhile
        froze["ns"] = time.time_ns()
        started = time.monotonic()
        frozen_cgroup.freeze()
        pids = set(frozen_cgroup.members())
        froze["pids"] = pids
        assert sessions <= pids, (sessions, pids)
        # No renewal comes from a frozen process: these are the leases' last words.
        free = {s: lease_free_at_ns(pg, s, LEASE["lease_margin_seconds"])
                for s in ("s2", "s3")}
        assert {owner for owner, _ in free.values()} == {MEMBER}, free
        froze["free_at"] = {s: at for s, (_, at) in free.items()}
        try:
            wait_for(lambda: _on_leader(leader, ("s2", "s3")), MOVED, 0.1,
                     "the member's sessions to connect on the leader")
            froze["moved_s"] = round(time.monotonic() - started, 2)
        finally:
            froze["thaw_ns"] = time.time_ns()
            frozen_cgroup.thaw()

    try:
        load, _ = run_with_load(leader, "c3", fault)
    finally:
        frozen_cgroup.thaw()
    log = _settle(leader, shared)
    now = time.time_ns()
    frozen = froze["pids"]
    assert isinstance(frozen, set)
    freeze_ns, thaw_ns = int(str(froze["ns"])), int(str(froze["thaw_ns"]))
    # The leader started each only once its lease was free by the database's clock.
    free_at = froze["free_at"]
    assert isinstance(free_at, dict)
    for session, at in free_at.items():
        ups = [r.at_ns for r in log if r.kind == "up" and r.session == session
               and r.host == LEADER and r.at_ns >= freeze_ns]
        assert ups and min(ups) >= at, (session, (min(ups) - at) / 1e9 if ups else None)
    # After the thaw a frozen process may only say "down".
    again = [r for r in log if r.pid in frozen and r.at_ns >= freeze_ns and r.kind == "up"]
    assert again == [], again
    # Its connections open at the freeze end there (their "down" comes after the thaw).
    open_at_freeze = {r.conn for r in log if r.pid in frozen and r.kind == "up"
                      and r.at_ns < freeze_ns}
    late_downs = [r for r in log if r.kind == "down" and r.conn in open_at_freeze
                  and r.at_ns >= freeze_ns]
    witness = [r for r in log if r not in late_downs]
    died = {**_died(log, now), **{(MEMBER, pid): freeze_ns for pid in frozen}}
    assert overlaps(witness, until_ns=now, died=died) == []
    down_after_thaw = [round((r.at_ns - thaw_ns) / 1e9, 2) for r in late_downs]
    figures = Figures.of(log, freeze_ns, ("s2", "s3"), MEMBER, LEADER)
    counts = check_messages(leader, load)
    assert counts["duplicates"] == 0, counts
    print(f"\nC3 member frozen: its sessions up on the leader {figures.replace} s after "
          f"the freeze (all {froze['moved_s']} s); thawed processes wrote their downs "
          f"{down_after_thaw} s after the thaw, no up; {counts}")
