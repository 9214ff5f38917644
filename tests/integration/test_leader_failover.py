"""Leader failover to a standby, members following (issue 22, item 2): real ``wagate
serve`` processes on loopback with ``cluster.database_url`` on a real PostgreSQL, the
simulator's connection log as the witness.

Leader A holds the leadership lock; leader B, on the same database, is a standby
(LEADER_STANDBY: it starts nothing); member M lists both leaders and joined A. A
session runs on A, another on M, with sends flowing. A loses power (SIGKILL of every
process of its run): B takes the lock once A's database connection ends, M reads the
new holder from the database and re-joins B, and both sessions connect again under
B, each only once its lease is free: zero overlap in the connection log, every send
B accepted delivered once. M's own API, which answered through A before the kill,
answers through B without a restart: a status query, then a send.

The sessions are registered on both leaders (the standby knows only the sessions it
was told about: the leaders' registries are not shared yet, issue 22 item 3; their
outbox store is, in the database: test_outbox_failover.py), and both leaders share
the session store, as hosts of a cluster do.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.leases.leader import LeaderDirectory
from actors.leases.store import LeaseStoreUnavailable
from actors.transport.connection_log import overlaps, parse_records
from actors.transport.simulator import CONNECTIONS_LOG
from tests.integration.harness import Gateway, GraphQLResult, wait_for
from tests.integration.test_cluster import MEMBER_START_DEADLINE
from tests.integration.test_cluster_leases import LEASE, host_config
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

A, B, M = "alpha", "gamma", "beta"
TAKEOVER_DEADLINE = 60.0
PHONE = "+14155552671"


def _gateways(make_gateway: Callable[..., Gateway], shared: Path, url: str
              ) -> tuple[Gateway, Gateway, Gateway]:
    limits = {"limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                         "global_per_day": 100_000}}
    first = make_gateway(host_config(shared, url, limits, role="leader", host_name=A,
                                     sessions=1), name="alpha")
    second = make_gateway(host_config(shared, url, limits, role="leader", host_name=B,
                                      sessions=2), name="gamma", key_file=first.key_file)
    member = make_gateway(host_config(
        shared, url, limits, role="member", host_name=M, sessions=1,
        leaders=[f"127.0.0.1:{first.admin_port}", f"127.0.0.1:{second.admin_port}"]),
        name="beta", key_file=first.key_file)
    return first, second, member


def _link_one_on_a_and_one_on_the_member(first: Gateway) -> None:
    wait_for(lambda: _joined(first), 20, 0.1, "the member to join A")
    first.link("f1")  # A's one slot
    first.link("f2")  # the member's
    assert _placement(first, "f2") == {"state": "CONNECTED", "host": M}


def _hosts(gw: Gateway) -> dict[str, dict[str, Any]]:
    try:
        return {h["name"]: h for h in gw.health().get("hosts", [])}
    except Exception:  # the web tier between answers: not joined yet
        return {}


def _joined(leader: Gateway) -> bool:
    host = _hosts(leader).get(M)
    return bool(host and host["alive"])


def _placement(gw: Gateway, session: str) -> dict[str, Any] | None:
    result = gw.gql("query($s: String) { whatsAppStatus(session: $s) { state host } }",
                    {"s": session})
    return None if result.errors else result.data["whatsAppStatus"]


def _leader_row(cluster: PgCluster) -> tuple[str, bool] | None:
    """(host, holds the lock now) of the published leader."""
    directory = LeaderDirectory(cluster.dsn())
    try:
        found = directory.current()
    except LeaseStoreUnavailable:
        return None
    finally:
        directory.close()
    return None if found is None else (found.host, found.held)


class Traffic:
    """Sends through the active leader's API, one every ``gap`` seconds, until stopped;
    remembers which gateway accepted which text."""

    def __init__(self, gap: float = 0.25, sessions: tuple[str, ...] = ("f1", "f2")) -> None:
        self.gap = gap
        self.sessions = sessions
        self.target: Gateway | None = None
        self.accepted: dict[str, str] = {}  # text -> name of the gateway that took it
        self.refused: dict[str, str] = {}  # text -> error code (not accepted)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")

    def start(self, target: Gateway) -> None:
        self.target = target
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            target = self.target
            assert target is not None
            for session in self.sessions:
                n += 1
                text = f"failover {n} for {session}"
                try:
                    result: GraphQLResult = target.send(PHONE, text, session=session)
                except Exception as exc:  # the dead leader's API: refused
                    self.refused[text] = type(exc).__name__
                    continue
                if result.errors:
                    self.refused[text] = str(result.error_code)
                else:
                    self.accepted[text] = target.data_dir.name
            self._stop.wait(self.gap)


def connected_under(leader: Gateway, sessions: tuple[str, ...] = ("f1", "f2"),
                    deadline: float = TAKEOVER_DEADLINE) -> dict[str, Any]:
    """Wait until every one of ``sessions`` is connected by ``leader``'s word, on B or
    the member; returns the host of each."""

    def connected() -> bool:
        return all((_placement(leader, s) or {}).get("state") == "CONNECTED"
                   for s in sessions)

    wait_for(connected, deadline, 0.1, "both sessions to connect under B")
    where = {s: (_placement(leader, s) or {}).get("host") for s in sessions}
    assert set(where.values()) <= {B, M}, where
    return where


def delivered_once(traffic: Traffic, first: Gateway, second: Gateway,
                   inbox: Gateway) -> tuple[list[str], list[str], list[str]]:
    """Stop ``traffic``; every send the new active leader ``second`` accepted reaches
    the simulated recipient (read through ``inbox``) exactly once, and no failover
    text twice. Returns the texts ``first`` accepted, those ``second`` accepted, and
    those delivered."""
    traffic.stop()
    by_a = [t for t, gw in traffic.accepted.items() if gw == first.data_dir.name]
    by_b = [t for t, gw in traffic.accepted.items() if gw == second.data_dir.name]
    assert by_b, traffic.refused

    def delivered() -> bool:
        texts = [m["text"] for m in inbox.inbox()]
        return all(texts.count(t) == 1 for t in by_b)

    wait_for(delivered, 30, 0.2, "every send B accepted to be delivered")
    texts = [m["text"] for m in inbox.inbox()]
    doubled = sorted({t for t in texts if texts.count(t) > 1 and t.startswith("failover")})
    assert doubled == [], doubled
    return by_a, by_b, texts


def test_a_standby_leader_takes_over_and_the_member_follows_it(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first, second, member = _gateways(make_gateway, shared, pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    member.start(MEMBER_START_DEADLINE)
    _link_one_on_a_and_one_on_the_member(first)
    for session in ("f1", "f2"):  # the standby is told about them; it starts nothing
        assert not second.connect(session).errors
        status = second.status(session)
        assert status["lastError"]["code"] == "LEADER_STANDBY", status
    assert not [e for e in second.health()["sessions"] if e["pid"]]
    assert not _joined(second)
    assert _leader_row(pg) == (A, True)

    # The member's own API answers through A: its web tier now knows A's supervisor.
    assert (_placement(member, "f2") or {}).get("host") == M

    traffic = Traffic()
    traffic.start(first)
    wait_for(lambda: len(traffic.accepted) >= 8, 30, 0.1, "sends through A")

    first_pids = first.actor_pids()
    killed_at = time.monotonic()
    killed_ns = time.time_ns()
    first.kill_everything()
    dead_ns = time.time_ns()  # every process of A is gone by now
    traffic.target = second

    wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
             "B to take the leadership lock")
    took_lock = time.monotonic() - killed_at
    # A is dead: whatever the member's own API answers, it answers through B.
    wait_for(lambda: _placement(member, "f2") is not None, TAKEOVER_DEADLINE, 0.1,
             "the member's own API to answer through B")
    took_member_api = time.monotonic() - killed_at
    wait_for(lambda: _joined(second), TAKEOVER_DEADLINE, 0.1, "the member to join B")
    took_join = time.monotonic() - killed_at

    where = connected_under(second)
    took_sessions = time.monotonic() - killed_at

    accepted_before = len(traffic.accepted)
    try:
        wait_for(lambda: len(traffic.accepted) >= accepted_before + 8, 30, 0.1,
                 "sends through B after the takeover")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; refused: {list(traffic.refused.items())[-6:]}, "
                             f"traffic alive: {traffic.alive}") from None
    by_a, by_b, texts = delivered_once(traffic, first, second, member)
    stuck_on_a = [t for t in by_a if t not in texts]

    records = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
    died = {(A, pid): dead_ns for pid in first_pids}
    assert {r.pid for r in records if r.host == A} <= set(first_pids)
    assert overlaps(records, until_ns=time.time_ns(), died=died) == []
    ups_after = [r for r in records if r.kind == "up" and r.at_ns > killed_ns]
    assert {r.session for r in ups_after} >= {"f1", "f2"}

    # A send through the member's own API goes to B's outbox and is delivered once.
    sent = member.send(PHONE, "failover through the member", session="f2")
    assert not sent.errors, sent.errors
    wait_for(lambda: [m["text"] for m in member.inbox()].count(
        "failover through the member") == 1, 30, 0.2, "the member's send to be delivered")
    # `wagate status` on the member answers through B too, every time: a member's Admin
    # answers a lookup by global name only once, so a second one used to wait 50 s.
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--config",
                               str(member.config_path)], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-2000:]
    print(f"\nleader A SIGKILLed -> B holds the lock {took_lock:.1f} s, member joined B "
          f"{took_join:.1f} s, both sessions connected {took_sessions:.1f} s "
          f"(on {where}); the member's own API through B {took_member_api:.1f} s; "
          f"sends accepted by A {len(by_a)} ({len(stuck_on_a)} left in A's outbox), "
          f"by B {len(by_b)}, all delivered once; lease {LEASE['lease_seconds']:g} s + "
          f"margin {LEASE['lease_margin_seconds']:g} s")


@pytest.mark.long  # failed 2 of 13 runs on a loaded machine: the sessions did not connect in 60 s
def test_a_member_registers_again_with_a_leader_restarted_at_the_same_address(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """The restarted leader publishes itself again (another pid): the member, which
    Thespian alone did not bring back in the tests (test_partitions.py), registers with
    it again within a period, and the restarted leader places the member's session
    there once its lease is free, with zero overlap."""
    shared = tmp_path / "shared"
    first, _second, member = _gateways(make_gateway, shared, pg.url())
    first.start()
    member.start(MEMBER_START_DEADLINE)
    _link_one_on_a_and_one_on_the_member(first)

    first_pids = first.actor_pids()
    first.kill_everything()
    dead_ns = time.time_ns()
    restarted_at = time.monotonic()
    first.start()
    wait_for(lambda: _joined(first), TAKEOVER_DEADLINE, 0.1,
             "the member to join the restarted leader")
    took_join = time.monotonic() - restarted_at

    seen: dict[str, dict[str, Any] | None] = {}

    def connected() -> bool:
        seen.update({s: _placement(first, s) for s in ("f1", "f2")})
        return all((seen[s] or {}).get("state") == "CONNECTED" for s in ("f1", "f2"))

    try:
        wait_for(connected, TAKEOVER_DEADLINE, 0.1, "both sessions to connect again")
    except AssertionError as exc:  # say where each session was left
        raise AssertionError(f"{exc}; placements: {seen}") from None
    took_sessions = time.monotonic() - restarted_at
    records = parse_records((shared / "simulator" / CONNECTIONS_LOG).read_text("utf-8"))
    died = {(A, pid): dead_ns for pid in first_pids}
    assert overlaps(records, until_ns=time.time_ns(), died=died) == []
    print(f"\nleader A restarted -> the member joined it {took_join:.1f} s after the start "
          f"began, both sessions connected {took_sessions:.1f} s after it")
