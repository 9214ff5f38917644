"""The status snapshot file: written atomically, trusted only while fresh."""

from __future__ import annotations

import os
import time
from pathlib import Path

from actors.messages import ErrorInfo, SessionState, SessionStatus
from actors.supervisor.snapshot import FILE_NAME, SnapshotReader, remove_snapshot, write_snapshot


def _data(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path


def test_a_fresh_snapshot_round_trips_every_field(tmp_path: Path) -> None:
    data = _data(tmp_path)
    status = SessionStatus(session="a", state=SessionState.RECONNECTING, paired=True,
                           phone="15551234567", reconnect_attempt=2,
                           last_error=ErrorInfo("DISCONNECTED", "lost"), connected_since=None,
                           updated_at=5.0, pid=42, banned_until=None)
    write_snapshot(data, {"a": status}, time.time())
    reader = SnapshotReader(data)
    assert reader.status("a") == status
    assert reader.status("unknown") == SessionStatus(session="unknown")  # known to be NEW
    assert (data / FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_missing_or_stale_snapshots_are_not_trusted(tmp_path: Path) -> None:
    data = _data(tmp_path)
    reader = SnapshotReader(data, max_age=3.0)
    assert reader.status("a") is None  # no file
    write_snapshot(data, {}, time.time() - 10)  # the supervisor stopped writing
    assert reader.status("a") is None
    write_snapshot(data, {}, time.time())
    assert reader.status("a") == SessionStatus(session="a")
    remove_snapshot(data)
    assert reader.status("a") is None


def test_changes_are_seen_and_damage_is_not_fatal(tmp_path: Path) -> None:
    data = _data(tmp_path)
    reader = SnapshotReader(data)
    write_snapshot(data, {"a": SessionStatus("a")}, time.time())
    assert reader.status("a").state is SessionState.NEW
    write_snapshot(data, {"a": SessionStatus("a", state=SessionState.CONNECTED)}, time.time())
    assert reader.status("a").state is SessionState.CONNECTED
    (data / FILE_NAME).write_text("{not json")
    os.utime(data / FILE_NAME, ns=(1, 1))
    assert reader.status("a") is None


def test_every_session_is_listed_while_the_snapshot_is_fresh(tmp_path: Path) -> None:
    data = _data(tmp_path)
    reader = SnapshotReader(data, max_age=3.0)
    assert reader.sessions() is None  # no file: ask the actors
    a, b = SessionStatus("a", state=SessionState.CONNECTED), SessionStatus("b")
    write_snapshot(data, {"b": b, "a": a}, time.time())
    listed = reader.sessions()
    assert listed == {"a": a, "b": b}
    listed.clear()  # a copy: the reader's own view is untouched
    assert reader.sessions() == {"a": a, "b": b}
    write_snapshot(data, {"a": a}, time.time() - 10)
    assert reader.sessions() is None  # stale


def test_removing_the_snapshot_also_removes_a_temp_file_a_killed_writer_left(
        tmp_path: Path) -> None:
    """The writer's temp files have random names (gateway/core/files.py): one a killed
    supervisor left is never overwritten by a later write, so the stop removes it."""
    data = _data(tmp_path)
    write_snapshot(data, {}, time.time())
    orphan = data / "run" / ".status.json.k1ll3d.tmp"
    orphan.write_text("{")
    other = data / "run" / "gateway.json"
    other.write_text("{}")
    remove_snapshot(data)
    assert sorted(p.name for p in (data / "run").iterdir()) == ["gateway.json"]
