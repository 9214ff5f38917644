"""gateway.core.disk: telling a full disk from other failures, and the start-up check
of data_dir on real files (the refusals themselves need a read-only mount or a
process without root's file capabilities: tests/integration/test_disk_full.py)."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from gateway.core.disk import MIB, access_problem, is_disk_full, space


@pytest.mark.parametrize("error, full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (sqlite3.OperationalError("database or disk is full"), True),
    (sqlite3.OperationalError("database is locked"), False),
    (ValueError("no"), False),
])
def test_a_full_disk_is_told_from_other_failures(error: BaseException, full: bool) -> None:
    assert is_disk_full(error) is full
    wrapped = RuntimeError("while writing")
    wrapped.__cause__ = error
    assert is_disk_full(wrapped) is full


def test_space_reports_the_file_system_of_the_path(tmp_path: Path) -> None:
    found = space(tmp_path, 1)
    assert 0 <= found.free_bytes <= found.total_bytes and found.min_free_bytes == MIB
    assert found.to_json()["low"] is found.low


def test_sockets_fifos_symlinks_and_run_do_not_stop_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    (data / "outbox").mkdir()
    (data / "outbox" / "messages.sqlite3").write_bytes(b"x")
    os.mkfifo(data / "fifo")
    (data / "dangling").symlink_to(tmp_path / "nowhere")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(data / "outbox" / "sock"))
        assert access_problem(data) is None
    assert not [p for p in data.rglob(".wagate-write-check-*")]  # the probes are gone
