"""A session process holds its account's lease in PostgreSQL and lets go by itself
(issue 22): a real ``wagate serve`` leader with ``cluster.database_url`` on a real
PostgreSQL, the simulator's connection log as the witness.

The database is frozen (SIGSTOP to every server process: connections hang, nothing
answers), which is what a partition from the database looks like to the session. The
session must be disconnected within ``lease_seconds`` of its last renewal, must not
connect again while it cannot hold the lease, and must come back by itself once the
database answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from actors.transport.connection_log import overlaps, parse_records
from actors.transport.simulator import CONNECTIONS_LOG
from tests.integration.harness import Gateway, wait_for
from tests.pg import PgCluster, find_bindir

LEASE = {"lease_seconds": 2.0, "lease_renew_seconds": 0.4, "lease_margin_seconds": 1.0}


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb and postgres are not installed; run "
                    "scripts/system-deps as root")
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def leader(make_gateway: Callable[..., Gateway], pg: PgCluster) -> Gateway:
    return make_gateway({"cluster": {
        "role": "leader", "host_name": "alpha", "advertise_address": "127.0.0.1",
        "allow_networks": ["127.0.0.1/32"], "database_url": pg.url(), **LEASE}})


def lease_row(pg: PgCluster, session: str = "default") -> tuple[int, int, bool] | None:
    """(owner pid, epoch, held now) of the session's lease."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT owner_pid, epoch, NOT released AND expires_at > now() "
                           "FROM wagate_leases WHERE session = %s", (session,)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]), bool(row[2]))


def records(gw: Gateway) -> list:  # type: ignore[type-arg]
    path = gw.data_dir / "simulator" / CONNECTIONS_LOG
    return parse_records(path.read_text(encoding="utf-8")) if path.exists() else []


def test_a_session_connects_under_its_lease_and_lets_go_when_it_cannot_renew(
        make_gateway: Callable[..., Gateway], pg: PgCluster) -> None:
    gw = leader(make_gateway, pg).start()
    gw.link()
    pid = gw.session_pid()
    row = lease_row(pg)
    assert row is not None and row[0] == pid and row[2], row
    first_epoch = row[1]

    frozen_at = time.time_ns()
    pg.freeze()
    try:
        down = wait_for(lambda: [r for r in records(gw) if r.kind == "down" and r.pid == pid],
                        timeout=LEASE["lease_seconds"] + 5, message="the session's own disconnect")
        # Its last renewal was sent before the freeze: its deadline is at most a lease
        # later, and the disconnect comes at it (the margin keeps rivals out meanwhile).
        late = (down[0].at_ns - frozen_at) / 1e9
        assert late <= LEASE["lease_seconds"] + 0.5, late
        # No lease, no process: the leader cannot learn that the lease is free, so it
        # starts none and shows why.
        waiting = wait_for(lambda: (s := gw.status())["lastError"] is not None
                           and s["lastError"]["code"] == "LEASE_HELD" and s, timeout=15,
                           message="the session shown as waiting for its lease")
        assert "does not answer" in waiting["lastError"]["message"], waiting
        assert not [e for e in gw.health()["sessions"] if e["session"] == "default"
                    and e["pid"] and e["pid"] != pid]
        assert [r for r in records(gw) if r.kind == "up"][-1].pid == pid
    finally:
        pg.freeze(False)

    gw.wait_state("CONNECTED", timeout=30)
    again = lease_row(pg)
    assert again is not None and again[0] == gw.session_pid() != pid
    assert again[1] > first_epoch and again[2]
    ups = [r for r in records(gw) if r.kind == "up"]
    assert ups[-1].pid == gw.session_pid() and ups[-1].at_ns > down[0].at_ns
    assert overlaps(records(gw), until_ns=time.time_ns()) == []
    # Recorded as a fenced stop with its reason, not as a crash (issue 22, item 5).
    from tests.integration.test_audit import events

    fenced = wait_for(lambda: [e for e in events(gw, "session.fenced")
                               if e.get("session") == "default"], 10, 0.1,
                      "the fenced stop in the audit log")
    assert [e.get("reason") for e in fenced] == ["lease_lost"], fenced
    print(f"\nlease lost -> disconnected {late:.2f} s after the database froze "
          f"(lease {LEASE['lease_seconds']} s)")


def test_a_session_stopped_cleanly_releases_its_lease(make_gateway: Callable[..., Gateway],
                                                      pg: PgCluster) -> None:
    gw = leader(make_gateway, pg).start()
    gw.link("s2")
    pid = gw.session_pid("s2")
    row = lease_row(pg, "s2")
    assert row is not None and row[0] == pid and row[2]
    gw.stop()
    after = lease_row(pg, "s2")
    assert after is not None and after[1] == row[1] and after[2] is False  # released


def hold_lease(pg: PgCluster, session: str, seconds: float,
               new_epoch: bool) -> tuple[int, Any]:
    """Make host 'beta' (pid 999) hold ``session``'s lease for ``seconds`` from now by
    the database's clock; returns (epoch, expires_at)."""
    bump = "epoch + 1" if new_epoch else "epoch"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            f"UPDATE wagate_leases SET owner_host = 'beta', owner_pid = 999, epoch = {bump}, "
            "released = false, expires_at = statement_timestamp() + make_interval(secs => %s) "
            "WHERE session = %s RETURNING epoch, expires_at", (seconds, session)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_restarted_leader_never_starts_a_session_whose_lease_is_held_elsewhere(
        make_gateway: Callable[..., Gateway], pg: PgCluster) -> None:
    """C2 in small: while the leader was down, another host's process took the lease
    (here: the row says so). The restarted leader shows the session as waiting for its
    lease and starts it only once the lease expired plus the margin by the database's
    clock; no connection comes up before."""
    gw = leader(make_gateway, pg).start()
    gw.link("s3")
    gw.stop()
    # Held for a minute while the leader starts (however slow the machine), then for
    # only `held_for` more once the leader was seen waiting.
    held_for = 2.0
    row = hold_lease(pg, "s3", 60.0, new_epoch=True)
    ups_before = len([r for r in records(gw) if r.kind == "up"])

    gw.start()
    waiting = gw.status("s3")
    assert waiting["state"] == "CONNECTING", waiting
    assert waiting["lastError"]["code"] == "LEASE_HELD", waiting
    assert "beta" in waiting["lastError"]["message"], waiting
    shortened = hold_lease(pg, "s3", held_for, new_epoch=False)
    free_at_ns = int(shortened[1].timestamp() * 1e9) + int(LEASE["lease_margin_seconds"] * 1e9)

    gw.wait_state("CONNECTED", "s3", timeout=held_for + 20)
    ups = [r for r in records(gw) if r.kind == "up"][ups_before:]
    assert ups and ups[0].at_ns >= free_at_ns, (ups[0].at_ns - free_at_ns) / 1e9
    after = lease_row(pg, "s3")
    assert after is not None and after[0] == gw.session_pid("s3") and after[1] > row[0]
    print(f"\nstarted {(ups[0].at_ns - free_at_ns) / 1e9:.2f} s after the lease was free")


def test_only_the_leader_holding_the_lock_starts_sessions(
        make_gateway: Callable[..., Gateway], pg: PgCluster) -> None:
    """C4 in small: two leaders on one lease database. The first holds the leadership
    lock (it started a session); the second starts none (LEADER_STANDBY, no process)
    until the first one's database connection ends, then takes over."""
    first = leader(make_gateway, pg).start()
    first.link("l1")
    second = make_gateway({"cluster": {
        "role": "leader", "host_name": "gamma", "advertise_address": "127.0.0.1",
        "allow_networks": ["127.0.0.1/32"], "database_url": pg.url(), **LEASE}},
        name="second").start()
    assert not second.connect("l2").errors
    waiting = second.status("l2")
    assert waiting["lastError"] is not None, waiting
    assert waiting["lastError"]["code"] == "LEADER_STANDBY", waiting
    assert not [e for e in second.health()["sessions"] if e["pid"]]
    assert lease_row(pg, "l2") is None  # no process of it ever asked for its lease

    first.stop()  # its supervisor's connection ends: the lock is free
    second.wait_state("QR_PENDING", "l2", timeout=20)
    assert second.session_pid("l2")
