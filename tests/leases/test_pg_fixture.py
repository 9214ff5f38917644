"""The PostgreSQL fixture itself (tests/pg.py): a real server on loopback, run by an
unprivileged user, that leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.leases.conftest import pg_bindir_or_skip
from tests.pg import PREFIX, PgCluster, sweep_leftovers


def test_the_server_runs_unprivileged_on_loopback_with_a_password(pg_cluster: PgCluster,
                                                                  pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT inet_server_addr()::text, current_setting('listen_addresses')"
                           ).fetchone()
    assert row == ("127.0.0.1/32", "127.0.0.1")
    assert pg_cluster.process is not None
    owner = os.stat(f"/proc/{pg_cluster.process.pid}").st_uid
    assert owner != 0
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pg_dsn.replace(pg_cluster.password, "wrong"))


def test_destroy_stops_the_server_and_removes_its_directory() -> None:
    cluster = PgCluster(pg_bindir_or_skip())
    try:
        cluster.start()
        assert cluster.process is not None
        pid = cluster.process.pid
    finally:
        cluster.destroy()
    assert not cluster.root.exists()
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory the server's user can enter (pytest's own is 0700 root)."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_killed_test_run_leaves_no_server_and_its_directory_is_swept(open_tmp: Path) -> None:
    """A child process that starts a cluster and is SIGKILLed: its server ends
    (PR_SET_PDEATHSIG) and the next sweep removes the directory it left."""
    bindir = pg_bindir_or_skip()
    tmp_path = open_tmp
    script = (
        "import os, sys, pathlib\n"
        "from tests.pg import PgCluster\n"
        f"c = PgCluster(pathlib.Path({str(bindir)!r}), root=pathlib.Path(sys.argv[1]))\n"
        "c.start()\n"
        "print(c.process.pid, flush=True)\n"
        "sys.stdin.read()\n")
    root = tmp_path / f"{PREFIX}killed"
    root.mkdir()
    child = subprocess.Popen([sys.executable, "-c", script, str(root)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        assert child.stdout is not None
        server = int(child.stdout.readline())
        child.kill()
        child.wait(10)
        _wait_gone(server)
        assert root.exists()
        assert sweep_leftovers(tmp_path) == [root]
        assert not root.exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def _wait_gone(pid: int, deadline_seconds: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"postgres {pid} still runs after its starter was killed")


def test_a_live_test_process_directory_is_kept_before_its_server_starts(tmp_path: Path) -> None:
    """Parallel workers: a directory whose maker still runs, with no server yet (initdb
    under way), is not another run's leftover; one whose maker is gone is."""
    mine = tmp_path / f"{PREFIX}{os.getpid()}-abc"
    mine.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    theirs = tmp_path / f"{PREFIX}{int(gone.stdout)}-abc"
    theirs.mkdir()
    assert sweep_leftovers(tmp_path) == [theirs]
    assert mine.exists() and not theirs.exists()
