"""A lost member's session moves only once its lease is free (issue 22): a leader and a
member on loopback with ``cluster.database_url`` on a real PostgreSQL, the simulator's
connection log as the witness.

The member loses power (SIGKILL of every process of its run): its session's lease is
no longer renewed. The leader notices the silence after its heartbeat window, shows
the session as waiting for its lease (lastError LEASE_HELD, naming the holder), and
starts it on itself only once the lease expired plus the margin by the database's
clock. The lease here is longer than the heartbeat window, so the wait is visible.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from actors.transport.connection_log import ConnectionRecord, overlaps, parse_records
from actors.transport.simulator import CONNECTIONS_LOG
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster import (
    HEARTBEAT,
    LEADER,
    MEMBER,
    MEMBER_START_DEADLINE,
    _member_alive,
    _placement,
)
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

LEASE = {"lease_seconds": 6.0, "lease_renew_seconds": 1.0, "lease_margin_seconds": 2.0}


def host_config(shared: Path, url: str, extra: dict[str, Any] | None = None,
                lease: dict[str, float] = LEASE, **cluster: Any) -> dict[str, Any]:
    """One host of a loopback cluster with leases: the shared session store and
    simulated service under ``shared``, ``extra`` sections, and ``cluster`` keys."""
    return {"storage": {"sessions_dir": str(shared / "sessions")},
            "simulator": {"server_dir": str(shared / "simulator")}, **(extra or {}),
            "cluster": {"advertise_address": "127.0.0.1", "allow_networks": ["127.0.0.1/32"],
                        "database_url": url, **HEARTBEAT, **lease, **cluster}}


def _cluster(make_gateway: Callable[..., Gateway], shared: Path, url: str,
             lease: dict[str, float] = LEASE,
             extra: Callable[[str], dict[str, Any]] = lambda _name: {}
             ) -> tuple[Gateway, Gateway]:
    """A leader and a member, one slot each; ``extra(name)``: sections per host."""
    leader = make_gateway(host_config(shared, url, extra("leader"), lease, role="leader",
                                      host_name=LEADER, sessions=1), name="leader")
    member = make_gateway(host_config(
        shared, url, extra("member"), lease, role="member", host_name=MEMBER, sessions=1,
        leaders=[f"127.0.0.1:{leader.admin_port}"]), name="member", key_file=leader.key_file)
    return leader, member


def lease_free_at_ns(cluster: PgCluster, session: str,
                     margin: float = LEASE["lease_margin_seconds"]) -> tuple[str, int]:
    """(owner host, when the lease is free: expiry plus the margin, in wall-clock ns)."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT owner_host, expires_at FROM wagate_leases "
                           "WHERE session = %s", (session,)).fetchone()
    assert row is not None
    return str(row[0]), int(row[1].timestamp() * 1e9) + int(margin * 1e9)


def test_a_lost_members_session_starts_elsewhere_only_after_its_lease_is_free(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    leader, member = _cluster(make_gateway, shared, pg.url())
    leader.start()
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join the leader")
    leader.link("m1")  # the leader's one slot
    leader.link("m2")  # the member's
    assert _placement(leader, "m2")["host"] == MEMBER

    killed_at = time.time_ns()
    member_pids = member.actor_pids()
    member.kill_everything()
    dead_by = time.time_ns()  # every process of the member is gone by now
    wait_for(lambda: not _member_alive(leader), 15, 0.1, "the leader to give the member up")
    waiting = leader.status("m2")
    owner, free_at_ns = lease_free_at_ns(pg, "m2")
    assert owner == MEMBER
    assert time.time_ns() < free_at_ns, "the lease ran out before the check: lengthen it"
    assert waiting["state"] == "CONNECTING", waiting
    assert waiting["lastError"]["code"] == "LEASE_HELD", waiting
    assert MEMBER in waiting["lastError"]["message"], waiting

    wait_for(lambda: _placement(leader, "m2") == {"state": "CONNECTED", "host": LEADER},
             LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 15, 0.1,
             "m2 to connect on the leader")
    took = (time.time_ns() - killed_at) / 1e9
    records = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
    ups = [r for r in records if r.kind == "up" and r.session == "m2" and r.host == LEADER]
    assert ups and ups[0].at_ns >= free_at_ns, (ups[0].at_ns - free_at_ns) / 1e9
    # A killed process writes no "down": its connections last until it was gone.
    died = {(MEMBER, pid): dead_by for pid in member_pids}
    assert {r.pid for r in records if r.host == MEMBER} <= set(member_pids)
    assert overlaps(records, until_ns=time.time_ns(), died=died) == []
    print(f"\nmember lost -> m2 connected on the leader in {took:.1f} s "
          f"(lease {LEASE['lease_seconds']:g} s + margin {LEASE['lease_margin_seconds']:g} s)")


def _gone(pid: int) -> bool:
    """Dead (a zombie counts: it holds no socket any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _stuck_process_is_killed_and_replaced(
        shared: Path, session: str, pid: int, host: str, whose: str,
        died: dict[tuple[str, int], int] | None = None) -> tuple[float, float]:
    """SIGSTOP ``session``'s process ``pid`` on ``host``; wait for ``whose`` agent to kill
    it once its lease is lost, then for the session to connect from a new process, with
    zero overlap. ``died``: processes killed before (a killed process writes no "down"),
    to which this one is added. Returns (seconds to the kill, seconds to the new
    connection)."""
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _gone(pid), LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 5,
                 0.05, f"the {whose} agent to kill the stuck session process")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    gone_ns = time.time_ns()
    died = {} if died is None else died
    died[(host, pid)] = gone_ns
    took = time.monotonic() - stopped_at
    # Its last renewal came before the stop: expiry within a lease, then one agent look
    # (a heartbeat) and half the margin.
    assert took <= (LEASE["lease_seconds"] + HEARTBEAT["heartbeat_seconds"]
                    + LEASE["lease_margin_seconds"] / 2 + 1.0), took

    def reconnected() -> list[ConnectionRecord]:
        found = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
        fresh = any(r.kind == "up" and r.session == session and r.pid != pid for r in found)
        return found if fresh else []

    records = wait_for(reconnected, 30, 0.1, f"{session} to connect again from a new process")
    back = time.monotonic() - stopped_at
    assert overlaps(records, until_ns=time.time_ns(), died=died) == []
    return took, back


def test_a_members_agent_kills_a_stuck_session_process_that_lost_its_lease(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """C3 in small: the member's session process is stopped (SIGSTOP: stuck, its own
    fence cannot run either). Its lease expires; the member's agent, checking its
    local processes by pid against the leases, stops it and kills it after half the
    margin; the session connects again, with zero overlap."""
    shared = tmp_path / "shared"
    leader, member = _cluster(make_gateway, shared, pg.url())
    leader.start()
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join the leader")
    leader.link("m1")
    leader.link("m2")
    assert _placement(leader, "m2")["host"] == MEMBER
    pid = leader.session_pid("m2")
    assert pid in member.actor_pids()
    took, _back = _stuck_process_is_killed_and_replaced(shared, "m2", pid, MEMBER, "member's")
    print(f"\nstuck member session process killed {took:.1f} s after SIGSTOP "
          f"(lease {LEASE['lease_seconds']:g} s)")


def test_the_leaders_own_agent_kills_a_stuck_session_process_that_lost_its_lease(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """The same on the leader's own host (issue 22: each host's agent reconciles by
    pid). Without the leader's agent (``actors.supervisor.lease_agent``) nobody kills
    the stopped process: the leader never learns that its lease is gone, the session
    never reconnects, and the wait for the kill times out."""
    shared = tmp_path / "shared"
    leader = make_gateway(host_config(shared, pg.url(), role="leader", host_name=LEADER,
                                      sessions=1), name="leader")
    leader.start()
    leader.link("m1")
    pid = leader.session_pid("m1")
    assert pid in leader.actor_pids()
    took, back = _stuck_process_is_killed_and_replaced(shared, "m1", pid, LEADER, "leader's")
    print(f"\nstuck leader session process killed {took:.1f} s after SIGSTOP, connected "
          f"again from a new process {back:.1f} s after it (lease "
          f"{LEASE['lease_seconds']:g} s, margin {LEASE['lease_margin_seconds']:g} s)")


# Budget 2 in an hour: the third crash in the window makes a session FAILED for good.
SMALL_BUDGET = {"supervisor": {"restart_budget": 2, "restart_window_seconds": 3600.0,
                               "restart_backoff_seconds": [0.2]}}


def _fenced_events(gateway: Gateway, session: str) -> list[dict[str, Any]]:
    from tests.integration.test_audit import events

    return [e for e in events(gateway, "session.fenced") if e.get("session") == session]


def test_processes_stopped_for_holding_no_lease_never_spend_the_restart_budget(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """Issue 22 item 5, in lease mode: a session process the host's agent stops because
    it holds no current lease is fenced, not crashed. With a restart budget of 2 in an
    hour, three such stops in a row used to make the session FAILED ("crashed
    repeatedly"); the agent now tells the supervisor before it signals, each stop is
    recorded as ``session.fenced`` and the session connects again every time."""
    shared = tmp_path / "shared"
    leader = make_gateway(host_config(shared, pg.url(), SMALL_BUDGET, role="leader",
                                      host_name=LEADER, sessions=1), name="leader")
    leader.start()
    leader.link("m1")
    budget = SMALL_BUDGET["supervisor"]["restart_budget"]
    assert isinstance(budget, int)
    died: dict[tuple[str, int], int] = {}
    for round_ in range(budget + 1):
        pid = leader.session_pid("m1")
        _stuck_process_is_killed_and_replaced(shared, "m1", pid, LEADER, "leader's", died)
        state = wait_for(lambda old=pid: _settled(leader, "m1", old), 30, 0.1,
                         f"m1 to connect again or fail after fence {round_ + 1}")
        assert state == "CONNECTED", (round_ + 1, leader.status("m1"))
    fenced = wait_for(lambda: len(_fenced_events(leader, "m1")) >= budget + 1 and
                      _fenced_events(leader, "m1"), 10, 0.1, "every fence in the audit log")
    assert {e.get("reason") for e in fenced} == {"no_lease"}, fenced
    assert {e.get("host") for e in fenced} == {LEADER}, fenced


def test_a_members_lease_check_fences_without_spending_the_leaders_budget(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """The same on a member: its HostAgent tells the leader's supervisor (LeaseFenced,
    accepted from that host's current agent only) before it stops the process."""
    shared = tmp_path / "shared"
    leader, member = _cluster(make_gateway, shared, pg.url(),
                              extra=lambda name: SMALL_BUDGET if name == "leader" else {})
    leader.start()
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join the leader")
    leader.link("m1")
    leader.link("m2")
    budget = SMALL_BUDGET["supervisor"]["restart_budget"]
    assert isinstance(budget, int)
    died: dict[tuple[str, int], int] = {}
    for round_ in range(budget + 1):
        assert _placement(leader, "m2")["host"] == MEMBER
        pid = leader.session_pid("m2")
        _stuck_process_is_killed_and_replaced(shared, "m2", pid, MEMBER, "member's", died)
        state = wait_for(lambda old=pid: _settled(leader, "m2", old), 30, 0.1,
                         f"m2 to connect again or fail after fence {round_ + 1}")
        assert state == "CONNECTED", (round_ + 1, leader.status("m2"))
    fenced = wait_for(lambda: len(_fenced_events(leader, "m2")) >= budget + 1 and
                      _fenced_events(leader, "m2"), 10, 0.1, "every fence in the audit log")
    assert {(e.get("reason"), e.get("host")) for e in fenced} == {("no_lease", MEMBER)}


def test_a_real_crash_in_lease_mode_still_spends_the_restart_budget(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """The other side of item 5: a session process that dies without being fenced
    (SIGKILL from outside, its lease still held) is a crash. Its mark says nothing, so
    the lease check only sweeps it; three crashes with a budget of two make the session
    FAILED, and none is recorded as fenced."""
    shared = tmp_path / "shared"
    leader = make_gateway(host_config(shared, pg.url(), SMALL_BUDGET, role="leader",
                                      host_name=LEADER, sessions=1), name="leader")
    leader.start()
    leader.link("m1")
    budget = SMALL_BUDGET["supervisor"]["restart_budget"]
    assert isinstance(budget, int)
    for round_ in range(budget + 1):
        pid = leader.session_pid("m1")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda old=pid: _gone(old), 10, 0.05, "the killed process to be gone")
        state = wait_for(lambda old=pid: _settled(leader, "m1", old),
                         LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 30, 0.1,
                         f"m1 to connect again or fail after crash {round_ + 1}")
        assert state == ("FAILED" if round_ == budget else "CONNECTED"), (
            round_ + 1, leader.status("m1"))
    assert leader.status("m1")["lastError"]["code"] == "SESSION_CRASHED"
    assert _fenced_events(leader, "m1") == []


def _settled(gateway: Gateway, session: str, old_pid: int) -> str | None:
    """CONNECTED from a process other than ``old_pid``, or FAILED; None meanwhile."""
    status = gateway.status(session)
    if status["state"] == "FAILED":
        return "FAILED"
    if status["state"] == "CONNECTED":
        try:
            return "CONNECTED" if gateway.session_pid(session) != old_pid else None
        except AssertionError:  # no pid reported yet
            return None
    return None
