"""A leader that loses the leadership lock while it lives steps down (issue 22, item
2): real ``wagate serve`` processes on loopback with ``cluster.database_url`` on a real
PostgreSQL, the simulator's connection log as the witness.

Leader A holds the lock with a session connected on it; leader B, on the same database,
is a standby. A's lock connection is ended from the database's side (its backend
terminated, as a database restart or an idle-session timeout would) while every
process of A keeps running. B takes the lock; A notices its loss, stops the session
it placed as a fenced stop (``leader_lost``: its clean exit releases the lease at
once) and becomes a standby; so does its outbox, whose store in the database is B's to
write now; the session then connects under B. Before A stepped down
it kept the session, its lease stayed held, and B waited for it without end.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from actors.transport.connection_log import overlaps, parse_records
from actors.transport.simulator import CONNECTIONS_LOG
from actors.webhooks.store import APPLICATION_NAME as WEBHOOKS_APPLICATION
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster import MEMBER_START_DEADLINE
from tests.integration.test_cluster_leases import host_config
from tests.integration.test_leader_failover import (
    Traffic,
    _leader_row,
    _placement,
    connected_under,
    delivered_once,
)
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

A, B = "alpha", "gamma"
SESSION = "s1"
TAKEOVER_DEADLINE = 45.0
AUDIT_DEADLINE = 10.0  # a stepped-down leader's entries reach the chain through the active one


def _leaders(make_gateway: Callable[..., Gateway], shared: Path, url: str
             ) -> tuple[Gateway, Gateway]:
    limits = {"limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                         "global_per_day": 100_000}}
    first = make_gateway(host_config(shared, url, limits, role="leader", host_name=A,
                                     sessions=1), name="alpha")
    second = make_gateway(host_config(shared, url, limits, role="leader", host_name=B,
                                      sessions=1), name="gamma", key_file=first.key_file)
    return first, second


def _end_lock_connection(cluster: PgCluster, host: str) -> int:
    """Terminate the backend of ``host``'s lock connection (the one that published it in
    wagate_leader); its pid."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT backend_pid FROM wagate_leader WHERE host = %s",
                           (host,)).fetchone()
        assert row is not None, "no published leader"
        ended = conn.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone()
    assert ended is not None and ended[0] is True, row
    return int(row[0])


def _outbox_pid(cluster: PgCluster, pids: set[int], name: str = "") -> int:
    """Which of ``pids`` is the outbox (or another user of the store, by its
    connections' ``name``): the process holding the store's database connection (its
    client port in pg_stat_activity, the socket's inode in /proc)."""
    from actors.outbox.db import APPLICATION_NAME

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        ports = {int(r[0]) for r in conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE application_name = %s",
            (name or APPLICATION_NAME,))}
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) in ports:
            inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            fds = Path(f"/proc/{pid}/fd")
            if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
                owners.add(pid)
    assert len(owners) == 1, (ports, owners)
    return owners.pop()


def _events(gw: Gateway, name: str) -> list[dict[str, Any]]:
    from tests.integration.test_audit import events

    return events(gw, name)


def _connected_under(gw: Gateway, host: str) -> bool:
    return (_placement(gw, SESSION) or {}) == {"state": "CONNECTED", "host": host}


def test_a_leader_that_loses_the_lock_steps_down_and_the_standby_takes_over(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first, second = _leaders(make_gateway, shared, pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    first.link(SESSION)
    assert _connected_under(first, A), first.status(SESSION)
    assert not second.connect(SESSION).errors  # the standby knows it; it starts nothing
    assert second.status(SESSION)["lastError"]["code"] == "LEADER_STANDBY"
    session_pid = first.session_pid(SESSION)
    first_pids = set(first.actor_pids())
    outbox_pid = _outbox_pid(pg, first_pids)
    webhooks_pid = _outbox_pid(pg, first_pids, WEBHOOKS_APPLICATION)

    traffic = Traffic(sessions=(SESSION,))
    traffic.start(first)
    wait_for(lambda: len(traffic.accepted) >= 4, 30, 0.1, "sends through A")

    ended_at = time.monotonic()
    ended_ns = time.time_ns()
    _end_lock_connection(pg, A)
    traffic.target = second

    wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
             "B to take the leadership lock")
    took_lock = time.monotonic() - ended_at
    try:
        wait_for(lambda: _connected_under(second, B), TAKEOVER_DEADLINE, 0.05,
                 "the session to connect under B")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; A: {first.status(SESSION)}, "
                             f"B: {second.status(SESSION)}") from None
    took_session = time.monotonic() - ended_at

    # A lives on, as a standby: its session process was stopped, not killed with it;
    # so were its outbox and webhook worker (the shared store is B's now), each
    # replaced by one that waits for the lock.
    after = set(first.actor_pids())
    assert first_pids - {session_pid, outbox_pid, webhooks_pid} <= after
    assert outbox_pid not in after and webhooks_pid not in after, (first_pids, after)
    assert len(after - first_pids) == 2, (first_pids, after)
    standing = wait_for(lambda: (s := first.status(SESSION))["lastError"] and
                        s["lastError"]["code"] == "LEADER_STANDBY" and s, 20, 0.1,
                        "A to show its session waiting as a standby's")
    assert standing["state"] == "CONNECTING", standing
    # A's entries since it stepped down are queued in the database; B chains them
    # within a second (actors/audit/actor.py, DRAIN_SECONDS).
    wait_for(lambda: _events(first, "leader.standby"), AUDIT_DEADLINE, 0.1,
             "A's step-down in the audit chain")
    fenced = wait_for(lambda: [e for e in _events(first, "session.fenced")
                               if e.get("session") == SESSION], AUDIT_DEADLINE, 0.1,
                      "A's fenced stop in the audit chain")
    assert [(e.get("reason"), e.get("host")) for e in fenced] == [("leader_lost", A)], fenced
    assert [e.get("host") for e in _events(first, "leader.standby")] == [A]
    assert not [e for e in _events(first, "session.state")
                if e.get("session") == SESSION and e.get("new") == "FAILED"]

    accepted_before = len(traffic.accepted)
    wait_for(lambda: len(traffic.accepted) >= accepted_before + 6, 30, 0.1,
             "sends through B after the takeover")
    by_a, by_b, texts = delivered_once(traffic, first, second, second)

    records = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
    assert overlaps(records, until_ns=time.time_ns()) == []
    downs_on_a = [r for r in records if r.host == A and r.kind == "down"
                  and r.at_ns > ended_ns]
    assert {r.pid for r in downs_on_a} == {session_pid}, downs_on_a
    ups_on_b = [r for r in records if r.host == B and r.kind == "up" and r.at_ns > ended_ns]
    assert ups_on_b, records
    assert _leader_row(pg) == (B, True)  # A did not take it back
    left_on_a = [t for t in by_a if t not in texts]
    print(f"\nA's lock connection ended -> B holds the lock {took_lock:.1f} s, the session "
          f"connected under B {took_session:.1f} s; sends accepted by A {len(by_a)} "
          f"({len(left_on_a)} left in A's outbox), by B {len(by_b)}, all delivered once")


def _pid(gw: Gateway, session: str) -> int | None:
    """The pid of ``session``'s process in /admin/health; None between processes."""
    return next((int(e["pid"]) for e in gw.health()["sessions"]
                 if e["session"] == session and e["pid"]), None)


def test_a_leader_that_loses_the_lock_briefly_steps_down_and_back_up(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """A database restart ends every connection: the only leader loses its lock, steps
    down (its session stopped, fenced), and takes the lock back after its hold-off of
    one renew period; the session connects again under it, once, and is not left
    stopped, nor counted as a crash."""
    shared = tmp_path / "shared"
    first, _second = _leaders(make_gateway, shared, pg.url())
    first.start()
    first.link(SESSION)
    old_pid = first.session_pid(SESSION)
    restarted_at = time.monotonic()
    pg.restart()
    wait_for(lambda: _events(first, "leader.standby"), TAKEOVER_DEADLINE, 0.1,
             "A to step down")

    def back() -> bool:
        # The status can still say CONNECTED just after the step-down, while the old
        # process is gone from /admin/health and its successor not there yet.
        status = _placement(first, SESSION) or {}
        return status == {"state": "CONNECTED", "host": A} and \
            _pid(first, SESSION) not in (None, old_pid)

    try:
        wait_for(back, TAKEOVER_DEADLINE, 0.1, "the session to connect again under A")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; A: {first.status(SESSION)}") from None
    took = time.monotonic() - restarted_at
    assert _leader_row(pg) == (A, True)
    assert len(_events(first, "leader.active")) == 2
    assert len(_events(first, "leader.standby")) == 1
    fenced = [e for e in _events(first, "session.fenced") if e.get("session") == SESSION]
    assert [e.get("reason") for e in fenced] == ["leader_lost"], fenced
    assert not [e for e in _events(first, "session.state")
                if e.get("session") == SESSION and e.get("new") == "FAILED"]
    records = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
    assert overlaps(records, until_ns=time.time_ns()) == []
    ups = [r for r in records if r.session == SESSION and r.kind == "up"]
    assert {r.pid for r in ups} == {old_pid, first.session_pid(SESSION)}, ups
    print(f"\ndatabase restarted -> the session connected again under A {took:.1f} s")


def test_a_leader_that_steps_down_stops_its_sessions_on_members_too(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """A holds the lock with a session on itself and one on a member that joined it;
    its lock connection ends. A stops both (fenced, ``leader_lost``), the member follows
    B, and both sessions connect under B with zero overlap."""
    from tests.integration.test_leader_failover import (
        M,
        _gateways,
        _joined,
        _link_one_on_a_and_one_on_the_member,
    )

    shared = tmp_path / "shared"
    first, second, member = _gateways(make_gateway, shared, pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    member.start(MEMBER_START_DEADLINE)
    _link_one_on_a_and_one_on_the_member(first)
    for session in ("f1", "f2"):
        assert not second.connect(session).errors
    ended_at = time.monotonic()
    _end_lock_connection(pg, A)
    wait_for(lambda: _joined(second), TAKEOVER_DEADLINE, 0.1, "the member to join B")
    where = connected_under(second, deadline=TAKEOVER_DEADLINE)
    took = time.monotonic() - ended_at
    # A stepped down: its entries are queued in the database, and B chains them within
    # a second (actors/audit/actor.py, DRAIN_SECONDS).
    expected = [("f1", A, "leader_lost"), ("f2", M, "leader_lost")]
    fenced: list[tuple[Any, ...]] = []

    def all_fenced() -> bool:
        fenced[:] = sorted((e.get("session"), e.get("host"), e.get("reason"))
                           for e in _events(first, "session.fenced"))
        return fenced == expected

    try:
        wait_for(all_fenced, AUDIT_DEADLINE, 0.1, "A's fenced stops in the audit chain")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; fenced: {fenced}") from None
    records = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
    assert overlaps(records, until_ns=time.time_ns()) == []
    print(f"\nA's lock connection ended -> both sessions (A's and the member's) connected "
          f"under B {took:.1f} s (on {where})")
