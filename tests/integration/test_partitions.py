"""Real network faults between the hosts of a cluster (issue 16, part 1).

A leader and a member, each a real ``wagate serve`` in its own network namespace,
joined through a bridge namespace that also runs the leases' PostgreSQL
(tests/netns.py). The simulated WhatsApp service is shared through files, as every
host reaches WhatsApp's servers whatever happens between the hosts. Faults are made
with iproute2 from outside the gateways while a load of messages flows through the
leader's API, each message with its own idempotency key, retried on transient answers.

The witness is the simulator's connection log (every connection's up and down, per
host and pid): zero overlap (never two connected processes for one account), exactly
one connection per session after healing; and the simulated inbox against the
message records: nothing accepted is lost, nothing arrives twice unflagged.

Each scenario prints its figures (time to fence, time to re-place, messages delayed,
duplicates), which the README's "Tested faults" quotes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from actors.transport.connection_log import overlaps
from tests import netns
from tests.integration.harness import Gateway, wait_for
from tests.integration.netns_cluster import (  # noqa: F401 (fixtures: net, pg)
    LEADER,
    LEASE,
    MEMBER,
    MEMBER_START_DEADLINE,
    Figures,
    Load,
    assert_one_copy_each,
    check_messages,
    connection_log,
    make_cluster,
    member_alive,
    net,
    open_connections,
    pg,
    placement,
    run_with_load,
    settle,
    start_cluster,
)
from tests.pg import PgCluster

REREGISTER_SECONDS = 5.0


def test_the_topology_isolates_and_heals(net: netns.Topology, pg: PgCluster) -> None:  # noqa: F811
    """The fixture itself: hosts reach each other and the database through the bridge;
    a cut stops only the two hosts' traffic, an isolation all of the host's; healing
    restores both; a degraded host's packets to the other hosts are delayed or lost."""
    leader_addr = net.address(LEADER)
    # A listener inside the leader's namespace, which the member asks for.
    server = subprocess.Popen([*net.prefix(LEADER), sys.executable, "-m", "http.server",
                               "--bind", leader_addr, "8000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: net.reaches(MEMBER, leader_addr, 8000), 10, 0.1, "the listener")
        assert net.reaches(MEMBER, pg.listen, pg.port)
        net.cut(LEADER, MEMBER)
        assert not net.reaches(MEMBER, leader_addr, 8000)
        assert net.reaches(MEMBER, pg.listen, pg.port)
        assert net.reaches(LEADER, pg.listen, pg.port)
        net.heal(LEADER, MEMBER)
        assert net.reaches(MEMBER, leader_addr, 8000)
        net.isolate(MEMBER)
        assert not net.reaches(MEMBER, leader_addr, 8000)
        assert not net.reaches(MEMBER, pg.listen, pg.port)
        assert net.reaches(LEADER, pg.listen, pg.port)
        net.reconnect(MEMBER)
        wait_for(lambda: net.reaches(MEMBER, pg.listen, pg.port), 10, 0.2, "the heal")
        # Degraded: delay between the hosts only; total loss cuts them, not the database.
        net.degrade(MEMBER, 0, 400)
        started = time.monotonic()
        assert net.reaches(MEMBER, leader_addr, 8000)
        assert time.monotonic() - started >= 0.4  # the SYN was held
        net.restore(MEMBER)
        net.degrade(MEMBER, 100, 0)
        assert not net.reaches(MEMBER, leader_addr, 8000)
        assert net.reaches(MEMBER, pg.listen, pg.port)
        net.restore(MEMBER)
        assert net.reaches(MEMBER, leader_addr, 8000)
    finally:
        server.kill()
        server.wait(10)


# The default run keeps the realistic silent cut; the blackhole variant runs with -m long.
@pytest.mark.parametrize("how", [pytest.param("blackhole", marks=pytest.mark.long), "silent"])
def test_a_member_cut_off_from_the_leader_only_never_runs_a_session_twice(
        how: str, net: netns.Topology, pg: PgCluster, make_gateway: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    """Scenario A(a): the member still reaches the database, the leader does not reach
    it. The member's agent fences its sessions once the leader has gone quiet, and
    the leader starts them on itself once their leases are free. ``blackhole``: routes
    that answer the sender at once (an unreachable network, a failed send for
    Thespian); ``silent``: every packet between the two dropped without a word (TCP
    retries into the void, as in most real partitions). Never two copies of a
    session; after the heal one each; nothing lost or doubled."""
    shared = tmp_path / "shared"
    leader, _member = start_cluster(make_gateway, net, pg, shared)

    def cut() -> None:
        if how == "blackhole":
            net.cut(LEADER, MEMBER)
        else:
            for host in net.hosts:
                net.degrade(host, 100, 0)

    def heal() -> None:
        net.heal(LEADER, MEMBER)
        for host in net.hosts:
            net.restore(host)

    def fault() -> None:
        cut()
        try:
            wait_for(lambda: not member_alive(leader), 20, 0.2, "the leader to lose the member")
            # The member's agent, no longer hearing the leader, fences its sessions
            # (releasing their leases); the leader starts them on itself.
            wait_for(lambda: all(placement(leader, s) == {"state": "CONNECTED", "host": LEADER}
                                 for s in ("s2", "s3")),
                     LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 20, 0.1,
                     "the member's sessions to connect on the leader")
        finally:
            heal()

    try:
        load, fault_ns = run_with_load(leader, "cut", fault)
    finally:
        heal()
    settle(leader, shared)
    log = connection_log(shared)
    assert_one_copy_each(shared, ("s1", "s2", "s3"), time.time_ns())
    figures = Figures.of(log, fault_ns, ("s2", "s3"), MEMBER, LEADER)
    counts = check_messages(leader, load)
    assert counts["duplicates"] == 0, counts
    print(f"\nA(a) leader<->member cut ({how}): fence {figures.fence}, re-place "
          f"{figures.replace}, {counts}")


def test_a_member_cut_off_from_everything_fences_before_its_sessions_move(
        net: netns.Topology, pg: PgCluster, make_gateway: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    """Scenario A(b): the member reaches nobody, not even the database. Its sessions
    cannot renew their leases and disconnect by themselves before the leases expire;
    the leader starts them on itself only after expiry plus the margin."""
    shared = tmp_path / "shared"
    leader, _member = start_cluster(make_gateway, net, pg, shared)
    moved: dict[str, float] = {}

    def fault() -> None:
        net.isolate(MEMBER)
        try:
            wait_for(lambda: all(placement(leader, s) == {"state": "CONNECTED", "host": LEADER}
                                 for s in ("s2", "s3")),
                     LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 20, 0.1,
                     "the member's sessions to connect on the leader")
            moved["at"] = time.monotonic()
        finally:
            net.reconnect(MEMBER)

    try:
        load, fault_ns = run_with_load(leader, "isolated", fault)
    finally:
        net.reconnect(MEMBER)
    settle(leader, shared)
    log = connection_log(shared)
    assert_one_copy_each(shared, ("s1", "s2", "s3"), time.time_ns())
    figures = Figures.of(log, fault_ns, ("s2", "s3"), MEMBER, LEADER)
    for session in ("s2", "s3"):
        fenced, placed = figures.fence[session], figures.replace[session]
        assert fenced is not None and placed is not None, figures
        assert fenced <= LEASE["lease_seconds"] + 0.5, figures  # before its lease ran out
        assert placed >= fenced, figures
    counts = check_messages(leader, load)
    print(f"\nA(b) member isolated: fence {figures.fence}, re-place {figures.replace}, "
          f"{counts}")


def test_a_leader_restarted_with_members_running_doubles_nothing(
        net: netns.Topology, pg: PgCluster, make_gateway: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    """Scenario B: the leader loses power (SIGKILL of every process of its run) and
    starts again with the same config, the member running throughout. The member's
    agent stops the sessions it holds once the leader has gone quiet; the restarted
    leader starts each session only once its lease is free (its own s1's lease is held
    by a dead process until it expires), never two at once; nothing lost, nothing
    doubled. Where the sessions end up does not matter here (the member rejoining a
    restarted leader is ``test_a_member_rejoins_a_restarted_leader``)."""
    shared = tmp_path / "shared"
    leader, _member = start_cluster(make_gateway, net, pg, shared)
    died: dict[tuple[str, int], int] = {}
    back: dict[str, float] = {}

    def fault() -> None:
        killed = time.monotonic()
        pids = leader.actor_pids()
        leader.kill_everything()
        gone_ns = time.time_ns()
        died.update({(LEADER, pid): gone_ns for pid in pids})
        leader.start()
        back["web"] = round(time.monotonic() - killed, 2)
        wait_for(lambda: all(placement(leader, s)["state"] == "CONNECTED"
                             for s in ("s1", "s2", "s3")), 30, 0.1,
                 "every session connected again")
        back["sessions"] = round(time.monotonic() - killed, 2)

    load, fault_ns = run_with_load(leader, "restart", fault)
    log = wait_for(lambda: (found := connection_log(shared)) and all(
        open_connections(found)[s] - sum(1 for r in found if r.kind == "up" and r.session == s
                                         and (r.host, r.pid) in died) == 1
        for s in ("s1", "s2", "s3")) and found, 15, 0.2, "one live connection per session")
    found = overlaps(log, until_ns=time.time_ns(), died=died)
    assert found == [], found
    # A killed process writes no "down": the leader's s1 ended when its process died.
    kill_s = round((min(died.values()) - fault_ns) / 1e9, 2)
    figures = Figures.of(log, fault_ns, ("s1", "s2", "s3"), MEMBER, LEADER)
    counts = check_messages(leader, load)
    assert counts["duplicates"] == 0, counts
    print(f"\nB leader restart: killed at {kill_s} s, web back at {back['web']} s, all "
          f"sessions connected at {back['sessions']} s; member sessions down "
          f"{figures.fence}, up on the leader {figures.replace}, {counts}")


SLOW_LINK = {"loss_percent": 30.0, "delay_ms": 500}
SLOW_FOR_SECONDS = 60.0
# Production-like timing (heartbeat windows of 10 s, the default lease): a slow link
# between the hosts must not make anyone give up; the database is not degraded.
SLOW_HEARTBEAT = {"heartbeat_seconds": 2.0, "heartbeat_misses": 5}
SLOW_LEASE = {"lease_seconds": 10.0, "lease_renew_seconds": 3.0, "lease_margin_seconds": 2.0}


def health_status(gw: Gateway) -> tuple[str, list[str]]:
    """The health document's status and reasons (503 "unavailable": its reason)."""
    try:
        document = gw.health()
    except (requests.RequestException, ValueError):
        return "unanswered", []
    if document.get("status") == "unavailable":
        return "unavailable", [str(document.get("reason", ""))[:80]]
    return str(document.get("status")), [f"{r['code']}:{r.get('host', '')}"
                                          for r in document.get("reasons", [])]


@pytest.mark.long
def test_a_slow_lossy_link_between_the_hosts_degrades_health_without_flapping(
        net: netns.Topology, pg: PgCluster, make_gateway: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    """Scenario C: a minute of 30 % loss and 500 ms delay on every packet between the
    hosts (each direction). No session is re-placed more than once (connection-log
    ups per session), never two at once, nothing lost; health says ``degraded``
    (``HOST_LATE``) while it lasts and ``ok`` again after."""
    shared = tmp_path / "shared"
    leader, _member = make_cluster(make_gateway, net, pg, shared, SLOW_LEASE,
                                   **SLOW_HEARTBEAT)
    leader.start()
    _member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: member_alive(leader), 20, 0.1, "the member to join the leader")
    for session in ("s1", "s2", "s3"):
        leader.link(session)
    assert {s: placement(leader, s)["host"] for s in ("s1", "s2", "s3")} == {
        "s1": LEADER, "s2": MEMBER, "s3": MEMBER}
    wait_for(lambda: health_status(leader)[0] == "ok", 20, 0.2, "health ok before")
    samples: list[tuple[float, str, list[str]]] = []
    healed: dict[str, float] = {}

    def fault() -> None:
        started = time.monotonic()
        for host in net.hosts:
            net.degrade(host, **SLOW_LINK)
        try:
            while time.monotonic() - started < SLOW_FOR_SECONDS:
                status, reasons = health_status(leader)
                samples.append((time.monotonic() - started, status, reasons))
                time.sleep(0.5)
        finally:
            for host in net.hosts:
                net.restore(host)
        restored = time.monotonic()
        wait_for(lambda: health_status(leader)[0] == "ok", 30, 0.2, "health ok again")
        healed["ok_after"] = round(time.monotonic() - restored, 1)

    def heal() -> None:
        for host in net.hosts:
            net.restore(host)

    load, fault_ns = run_with_load(leader, "slow", fault, int(SLOW_FOR_SECONDS / 0.5) + 20,
                                   0.5, give_up_after=SLOW_FOR_SECONDS + 120, cleanup=heal)
    settle(leader, shared)
    log = connection_log(shared)
    assert_one_copy_each(shared, ("s1", "s2", "s3"), time.time_ns())
    ups = Counter(r.session for r in log if r.kind == "up" and r.at_ns >= fault_ns)
    assert all(n <= 1 for n in ups.values()), f"a session re-placed more than once: {ups}"
    first_degraded = next((at for at, status, _ in samples if status == "degraded"), None)
    assert first_degraded is not None, samples
    after = [(round(at, 1), status) for at, status, _ in samples if at >= first_degraded]
    # "unavailable" (503: the leader's supervisor did not answer within the ask timeout,
    # seen a few times a minute on this link) is no "ok" either; counted and printed.
    said_ok = [s for s in after if s[1] == "ok"]
    assert not said_ok, f"health ok while the link was bad: {said_ok}"
    statuses = Counter(status for _, status in after)
    reasons = Counter(r for _, _, rs in samples for r in rs)
    counts = check_messages(leader, load)
    print(f"\nC {SLOW_LINK} for {SLOW_FOR_SECONDS:g} s: degraded after {first_degraded:.1f} s "
          f"and never ok after ({dict(statuses)}; reasons {dict(reasons)}), ok "
          f"{healed['ok_after']} s after the heal; connection ups per session during the "
          f"fault {dict(ups)}, {counts}")


@pytest.mark.long
def test_a_member_rejoins_a_restarted_leader(
        net: netns.Topology, pg: PgCluster, make_gateway: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    """Thespian alone did not bring a member back to a restarted leader with a short
    re-registration period (below its hysteresis of up to 45 s); with leases the member
    reads the leader's new run in the database and registers with it again
    (gateway/cli/leader_follow.py). Passed 5 runs of 6 when this was written; the
    first timed out, its cause not examined."""
    shared = tmp_path / "shared"
    leader, _member = start_cluster(make_gateway, net, pg, shared,
                                    reregister_seconds=REREGISTER_SECONDS)
    leader.kill_everything()
    leader.start()
    wait_for(lambda: member_alive(leader), 6 * REREGISTER_SECONDS, 0.2,
             "the member to join the restarted leader")
