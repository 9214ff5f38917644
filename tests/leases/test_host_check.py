"""A host's check of its session processes (actors/leases/host_check.py), which a
member's agent and the leader's own lease agent both run: real processes with real
marks on disk, against a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.leases.host_check import LocalLeases
from actors.leases.local import mark, marks_dir, ticks_now
from actors.leases.store import LeaseStore
from actors.leases.timing import LeaseTiming
from gateway.core.config import ClusterConfig

TIMING = LeaseTiming(lease=30.0, renew=5.0, margin=0.4)  # nothing expires by itself here
HOST = "alpha"


def cluster(dsn: str) -> ClusterConfig:
    return ClusterConfig(role="leader", database_url=dsn, lease_seconds=TIMING.lease,
                         lease_renew_seconds=TIMING.renew,
                         lease_margin_seconds=TIMING.margin)


@pytest.fixture
def stubborn() -> Iterator[subprocess.Popen[bytes]]:
    """A process that ignores SIGTERM, as one stuck in a native call does in effect."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, sys, time\n"
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
                              "time.sleep(120)"], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def _wait_exit(child: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return child.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


def test_a_process_holding_its_lease_is_left_alone_and_one_that_lost_it_is_killed(
        pg_dsn: str, tmp_path: Path, stubborn: subprocess.Popen[bytes]) -> None:
    holder = LeaseStore(pg_dsn, TIMING, host=HOST, pid=stubborn.pid)
    holder.ensure_schema()
    grant = holder.acquire("s1")
    assert grant is not None
    mark(marks_dir(tmp_path), "s1", grant.epoch, pid=stubborn.pid)
    check = LocalLeases(cluster(pg_dsn), tmp_path, HOST)
    try:
        check.reconcile()
        assert check.pending == {} and _wait_exit(stubborn, 0.2) is None

        assert holder.release("s1", grant.epoch)
        asked = time.monotonic()
        check.reconcile()  # SIGTERM, which this process ignores
        assert set(check.pending) == {stubborn.pid} and _wait_exit(stubborn, 0.1) is None
        deadline = asked + 5.0
        while _wait_exit(stubborn, 0.05) is None:
            assert time.monotonic() < deadline, "never killed"
            check.reconcile()
        killed = time.monotonic() - asked
        assert stubborn.returncode == -9
        assert killed >= check.grace, killed  # never before the grace
    finally:
        check.close()
        holder.close()


def test_a_database_that_does_not_answer_decides_nothing(
        tmp_path: Path, stubborn: subprocess.Popen[bytes]) -> None:
    # A port nothing listens on (connection refused at once): the lease is unknown.
    mark(marks_dir(tmp_path), "s1", 1, pid=stubborn.pid)
    dsn = "postgresql://nobody:x@127.0.0.1:9/none"
    check = LocalLeases(cluster(dsn), tmp_path, HOST)
    try:
        for _ in range(3):
            check.reconcile()
        assert check.pending == {} and _wait_exit(stubborn, 0.1) is None
    finally:
        check.close()


def test_the_processes_to_stop_are_named_before_any_signal_and_only_once(
        pg_dsn: str, tmp_path: Path, stubborn: subprocess.Popen[bytes]) -> None:
    """Issue 22 item 5: the agent tells the supervisor which (session, pid) it stops
    before it signals, so the exit is recorded as fenced, not as a crash. Once per
    stop: the SIGKILL that follows is the same stop."""
    import os

    holder = LeaseStore(pg_dsn, TIMING, host=HOST, pid=stubborn.pid)
    holder.ensure_schema()
    grant = holder.acquire("s1")
    assert grant is not None
    mark(marks_dir(tmp_path), "s1", grant.epoch, pid=stubborn.pid)
    happened: list[tuple[str, object]] = []

    def kill(pid: int, signum: int) -> None:
        happened.append(("signal", (pid, signum)))
        os.kill(pid, signum)

    check = LocalLeases(cluster(pg_dsn), tmp_path, HOST, kill=kill)
    try:
        check.reconcile(lambda stopping, lost: happened.append(("told", (stopping, lost))))
        assert happened == []  # it holds its lease: nobody is told anything
        assert holder.release("s1", grant.epoch)
        deadline = time.monotonic() + 5.0
        while _wait_exit(stubborn, 0.05) is None:
            assert time.monotonic() < deadline, "never killed"
            check.reconcile(lambda stopping, lost: happened.append(("told", (stopping, lost))))
        assert happened == [("told", ((("s1", stubborn.pid),), "")),
                            ("signal", (stubborn.pid, 15)), ("signal", (stubborn.pid, 9))]
    finally:
        check.close()
        holder.close()


def test_a_process_that_ended_itself_after_losing_its_lease_is_told_as_lost(
        tmp_path: Path) -> None:
    """Its mark says why it ended itself: the check hands that on, without asking the
    database (nothing live is left to decide on) and without signalling anything."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    mark(marks_dir(tmp_path), "s1", 4, pid=child.pid, lost="lease_lost")
    child.kill()
    child.wait()
    told: list[tuple[tuple[tuple[str, int], ...], str]] = []
    signalled: list[tuple[int, int]] = []
    dsn = "postgresql://nobody:x@127.0.0.1:9/none"  # never asked
    check = LocalLeases(cluster(dsn), tmp_path, HOST,
                        kill=lambda pid, signum: signalled.append((pid, signum)))
    try:
        check.reconcile(lambda processes, lost: told.append((processes, lost)))
        check.reconcile(lambda processes, lost: told.append((processes, lost)))
    finally:
        check.close()
    assert told == [((("s1", child.pid),), "lease_lost")] and signalled == []


def test_a_silent_leader_fences_a_process_that_still_holds_its_lease(
        pg_dsn: str, tmp_path: Path, stubborn: subprocess.Popen[bytes]) -> None:
    """Issue 22, C1: a session process the leader started after its last heartbeat
    holds a current lease; while the leader is silent the agent stops it all the same
    (SIGTERM, then SIGKILL after the grace), and without asking the database."""
    holder = LeaseStore(pg_dsn, TIMING, host=HOST, pid=stubborn.pid)
    holder.ensure_schema()
    grant = holder.acquire("s1")
    assert grant is not None
    mark(marks_dir(tmp_path), "s1", grant.epoch, pid=stubborn.pid)
    check = LocalLeases(cluster(pg_dsn), tmp_path, HOST)
    try:
        check.reconcile()
        assert check.pending == {} and _wait_exit(stubborn, 0.2) is None  # it holds it
        silent_since = ticks_now()
        asked = time.monotonic()
        told: list[tuple[tuple[tuple[str, int], ...], str]] = []
        check.fence(silent_since, lambda processes, lost: told.append((processes, lost)))
        # The leader is told before the signal, once: a fenced stop, not a crash.
        assert told == [((("s1", stubborn.pid),), "")]
        assert set(check.pending) == {stubborn.pid} and _wait_exit(stubborn, 0.1) is None
        deadline = asked + 5.0
        while _wait_exit(stubborn, 0.05) is None:
            assert time.monotonic() < deadline, "never killed"
            check.fence(silent_since, lambda processes, lost: told.append((processes, lost)))
        assert stubborn.returncode == -9 and len(told) == 1
        assert time.monotonic() - asked >= check.grace
        assert holder.current("s1") is not None  # the lease itself was not touched
    finally:
        check.close()
        holder.close()


def test_a_silent_leader_leaves_a_process_started_after_the_silence_alone(
        pg_dsn: str, tmp_path: Path, stubborn: subprocess.Popen[bytes]) -> None:
    """After a failover the old leader's agent stays silent for good, and the new
    leader places sessions on this host: a process started after the silence was
    found is not the silent leader's, and its fence leaves it alone."""
    mark(marks_dir(tmp_path), "s1", 1, pid=stubborn.pid)
    check = LocalLeases(cluster(pg_dsn), tmp_path, HOST)
    try:
        for _ in range(3):
            check.fence(0)  # the silence was found at boot, before this process began
        assert check.pending == {} and _wait_exit(stubborn, 0.1) is None
    finally:
        check.close()
