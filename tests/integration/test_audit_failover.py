"""The audit chain across a leader failover (issue 22, item 3): real ``wagate serve``
leaders on loopback with ``cluster.database_url`` on a real PostgreSQL.

Leader A holds the leadership lock and writes the audit chain in the database; leader
B is a standby and writes no entry of the chain: its own entries (its start, a
mutation asked of its API) are queued in the database, and A chains them, marked
``queued_by`` B. A loses power (SIGKILL of every process of its run); B takes the
lock, reads the head A left and appends after it. The whole chain verifies (``wagate
audit verify`` on B's config), with A's entries before B's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from actors.audit.pg import verify_pg
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster_leases import host_config
from tests.integration.test_leader_failover import TAKEOVER_DEADLINE, A, B, _leader_row
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster


def _chain(cluster: PgCluster) -> list[dict[str, Any]]:
    """Every entry in the database, in chain order ([] before the table exists)."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('wagate_audit') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return []
        return [json.loads(r[0]) for r in
                conn.execute("SELECT entry FROM wagate_audit ORDER BY seq")]


def _opened_by(cluster: PgCluster, host: str) -> list[dict[str, Any]]:
    return [e for e in _chain(cluster) if e["event"] == "audit.opened" and e.get("host") == host]


def _cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", *args, "--config",
                           str(gw.config_path)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_the_new_leader_continues_the_old_leaders_audit_chain(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first = make_gateway(host_config(shared, pg.url(), role="leader", host_name=A,
                                     sessions=1), name="alpha")
    second = make_gateway(host_config(shared, pg.url(), role="leader", host_name=B,
                                      sessions=1), name="gamma", key_file=first.key_file)
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    wait_for(lambda: _opened_by(pg, A), 20, 0.1, "A to open the audit chain")
    assert not first.connect("f1").errors  # a mutation: audited by A
    wait_for(lambda: any(e["event"] == "mutation" for e in _chain(pg)), 20, 0.1,
             "A's mutation entry")

    second.start()
    assert not second.connect("f1").errors  # audited by B, a standby: queued, A chains it

    def chained_for_b() -> set[str]:
        return {e["event"] for e in _chain(pg) if e.get("queued_by") == B}

    wait_for(lambda: {"gateway.started", "mutation"} <= chained_for_b(), 20, 0.1,
             "A to chain the entries B queued as a standby")
    assert _opened_by(pg, B) == []  # B wrote no entry of the chain itself
    before = _chain(pg)

    first.kill_everything()
    wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
             "B to take the leadership lock")
    wait_for(lambda: _opened_by(pg, B), TAKEOVER_DEADLINE, 0.1, "B to open the audit chain")
    # Told by B's supervisor as it took the lock, perhaps before its audit actor saw it
    # could write: queued then, and chained by B itself.
    wait_for(lambda: any(e["event"] == "leader.active" and e.get("host") == B
                         for e in _chain(pg)), 20, 0.1, "B's leader.active entry")

    chain = _chain(pg)
    assert chain[:len(before)] == before  # A's entries as A left them
    took_over = chain.index(_opened_by(pg, B)[0])
    assert took_over >= len(before)
    # B went on from A's last entry: the chain links them (verified below too).
    assert chain[took_over]["prev"] == chain[took_over - 1]["hash"]
    assert not [e for e in chain if e["event"] == "audit.lost"]
    result = verify_pg(pg.dsn())
    assert result.ok, result.problem
    assert result.entries == len(chain)

    verified = _cli(second, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"audit chain OK: {len(chain)} entries" in verified.stdout
    tail = _cli(second, "tail", "-n", "3")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 3, tail.stdout
