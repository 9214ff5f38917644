"""A stale session process never overwrites the shared credential store (issue 22, H1):
a leader and a member on loopback sharing ``storage.sessions_dir``, with
``cluster.database_url`` on a real PostgreSQL.

Process A (session m2, on the member) holds the lease and is stopped with SIGSTOP,
and so is every other process of the member: its host agent too, which would
otherwise SIGKILL A (SIGKILL works on a stopped process) before A could try a write,
and the test would prove nothing. The leader hears no heartbeat, gives the member
up, waits until A's lease expired plus the margin by the database's clock and starts
process B on itself, under a higher epoch. B connects and checkpoints a store whose
content the test changed in B's working copy (standing in for what whatsmeow does to
its store with every message). Meanwhile the test changes A's working copy too, so A
has an unsaved change, as a process stuck between two checkpoints has.

Then only A is continued. Its periodic checkpoint is long overdue and runs at once,
beside its fence noticing the lost lease: on the code before this test, that write
replaced B's store with A's older content (last writer wins). Now the write is
refused (A no longer holds its lease, and the store carries a higher epoch), logged
once with both epochs, and A stops as a fenced process does. The store on disk is
still B's: its content, generation and epoch, and it opens with the key.

How it fails on the code before the fence: A's overdue checkpoint replaced the store,
and the content on disk was A's (``test_marker`` "A"); checked by turning the refusal
off in ``working_copy.fenced_epoch``.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from actors.session.sealed_store import (
    StoreId,
    parse_key,
    sealed_epoch,
    sealed_generation,
    unseal,
)
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster import (
    LEADER,
    MEMBER,
    MEMBER_START_DEADLINE,
    _member_alive,
    _placement,
)
from tests.integration.test_cluster_leases import _cluster as leases_cluster
from tests.integration.test_cluster_leases import _gone
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

SESSION = "m2"
STORE = "simulator.json"
LEASE = {"lease_seconds": 3.0, "lease_renew_seconds": 0.5, "lease_margin_seconds": 1.0}
CHECKPOINT = 0.5  # encryption.checkpoint_seconds: A's tick is overdue when it wakes


def _cluster(make_gateway: Callable[..., Gateway], shared: Path, url: str
             ) -> tuple[Gateway, Gateway]:
    """test_cluster_leases' pair, with this test's lease and a fast checkpoint; each
    host's working copies apart, so the test can reach the one it changes."""
    def encryption(name: str) -> dict[str, Any]:
        return {"encryption": {"checkpoint_seconds": CHECKPOINT,
                               "work_dir": str(shared / f"work-{name}")}}

    return leases_cluster(make_gateway, shared, url, LEASE, encryption)


def _working_store(shared: Path, host: str) -> Path:
    """The simulator store in the working copy of ``SESSION`` on ``host`` (one at a time)."""
    found = sorted((shared / f"work-{host}").glob(f"wagate-*.{SESSION}.*/store/{STORE}"))
    assert len(found) == 1, found
    return found[0]


def _engine_writes(path: Path, marker: str) -> None:
    """Change the store the way an engine does: a new file renamed over the old."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["test_marker"] = marker
    tmp = path.with_name(path.name + ".test")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def _sealed(shared: Path, key_file: Path) -> tuple[dict[str, object], int, int]:
    """(content, generation, epoch) of the sealed store on disk; raises if it does not open."""
    blob = (shared / "sessions" / SESSION / STORE).read_bytes()
    key = parse_key(key_file.read_text(encoding="utf-8"), "the test's key file")
    plain = unseal(key, blob, "the shared store", StoreId(SESSION, STORE))
    return json.loads(plain), sealed_generation(blob), sealed_epoch(blob)


def _epoch(cluster: PgCluster) -> tuple[int, int]:
    """(owner pid, epoch) of the session's lease."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT owner_pid, epoch FROM wagate_leases WHERE session = %s",
                           (SESSION,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _refusals(gw: Gateway, pid: int) -> list[dict[str, object]]:
    """Process ``pid``'s log records of a refused store write."""
    log = gw.data_dir / "logs" / "actors.log"
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if (isinstance(record, dict) and record.get("pid") == pid
                    and "store write refused" in str(record.get("event", ""))):
                found.append(record)
    return found


def test_a_stale_session_process_never_overwrites_the_new_owners_store(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    leader, member = _cluster(make_gateway, shared, pg.url())
    leader.start()
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join the leader")
    leader.link("m1")  # the leader's one slot
    leader.link(SESSION)  # the member's
    assert _placement(leader, SESSION)["host"] == MEMBER
    a_pid = leader.session_pid(SESSION)
    owner, a_epoch = _epoch(pg)
    assert owner == a_pid
    wait_for(lambda: _sealed(shared, leader.key_file)[2] == a_epoch, 10, 0.1,
             "A's checkpoint under its epoch")

    stopped = [pid for pid in member.actor_pids() if pid != a_pid]
    member.signal_process(a_pid, signal.SIGSTOP)
    for pid in stopped:
        member.signal_process(pid, signal.SIGSTOP)
    try:
        _engine_writes(_working_store(shared, "member"), "A")  # unsaved in A

        wait_for(lambda: _placement(leader, SESSION) == {"state": "CONNECTED", "host": LEADER},
                 LEASE["lease_seconds"] + LEASE["lease_margin_seconds"] + 30, 0.1,
                 "B to connect on the leader")
        b_pid, b_epoch = _epoch(pg)
        assert b_pid == leader.session_pid(SESSION) != a_pid and b_epoch > a_epoch
        _engine_writes(_working_store(shared, "leader"), "B")
        _, b_generation, epoch = wait_for(
            lambda: (s := _sealed(shared, leader.key_file))[0].get("test_marker") == "B" and s,
            10, 0.1, "B's checkpoint")
        assert epoch == b_epoch

        member.signal_process(a_pid, signal.SIGCONT)
        wait_for(lambda: _gone(a_pid), 15, 0.05, "A to stop by itself")
    finally:
        for pid in [a_pid, *stopped]:
            with contextlib.suppress(AssertionError):
                member.signal_process(pid, signal.SIGCONT)

    after, generation, epoch = _sealed(shared, leader.key_file)  # opens with the key
    assert after.get("test_marker") == "B", after
    assert (generation, epoch) == (b_generation, b_epoch)
    refused = _refusals(member, a_pid)
    assert refused, "A never tried to write its store: the test proves nothing"
    # Once: a refused process writes its stores no more (not even at its exit).
    assert len(refused) == 1, refused
    assert (refused[0]["writer_epoch"], refused[0]["holds_lease"]) == (a_epoch, False), refused
    assert _placement(leader, SESSION) == {"state": "CONNECTED", "host": LEADER}
    # Not asserted: wagate_store_writes_fenced_total. The refused process sends the count
    # itself and is ended half a margin after its lease was lost, often before its actor
    # thread gets the message out (README; tests/unit/test_metrics.py checks the counter).
    member.kill_everything()  # given up by the leader: a lost host's end

