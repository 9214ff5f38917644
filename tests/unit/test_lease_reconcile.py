"""A host's agent against its local session processes (actors.leases.reconcile, pure;
actors.leases.local, marks on a real disk with real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from actors.leases.local import Mark, mark, marks, process_start, unmark
from actors.leases.reconcile import reconcile


def entry(pid: int, epoch: int = 1) -> Mark:
    return Mark(pid, f"s{pid}", epoch, 0)


def test_a_process_holding_its_lease_is_left_alone() -> None:
    done = reconcile([entry(10, 3)], {(10, 3)}, {}, now=100.0, grace=1.0)
    assert done.term == () and done.kill == () and done.pending == {}


def test_one_without_its_lease_is_stopped_then_killed_after_the_grace() -> None:
    # Another epoch of the same pid is not its lease (it lost it and someone, maybe
    # this host again, was granted a new one).
    first = reconcile([entry(10, 3)], {(10, 4)}, {}, now=100.0, grace=1.0)
    assert first.term == (10,) and first.kill == () and first.pending == {10: 100.0}
    early = reconcile([entry(10, 3)], set(), first.pending, now=100.5, grace=1.0)
    assert early.term == () and early.kill == () and early.pending == {10: 100.0}
    late = reconcile([entry(10, 3)], set(), early.pending, now=101.0, grace=1.0)
    assert late.kill == (10,) and late.pending == {10: 100.0}


def test_a_gone_process_is_forgotten() -> None:
    assert reconcile([], set(), {10: 100.0}, now=200.0, grace=1.0).pending == {}


def test_marks_name_live_processes_and_drop_stale_ones(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mark(tmp_path, "a", 7, pid=child.pid)
        mark(tmp_path, "me", 2)
        found = {m.pid: m for m in marks(tmp_path)}
        assert found[child.pid].session == "a" and found[child.pid].epoch == 7
        assert found[child.pid].started == process_start(child.pid)
        assert os.getpid() in found
    finally:
        child.kill()
        child.wait()
    assert [m.pid for m in marks(tmp_path)] == [os.getpid()]  # the dead one swept
    assert not (tmp_path / f"{child.pid}.json").exists()
    unmark(tmp_path)
    assert marks(tmp_path) == []
    assert marks(tmp_path / "missing") == []


def test_a_process_that_ended_itself_after_losing_its_lease_is_reported_once(
        tmp_path: Path) -> None:
    """Issue 22 item 5: a session process whose actor thread was stuck ends itself
    (the keeper's hard exit) after writing why in its mark; the next look finds the
    stale mark and hands it on as ended, so the agent reports a fenced stop, not a
    crash. A process that simply died says nothing and is only swept."""
    lost = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    died = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mark(tmp_path, "a", 7, pid=lost.pid)
        mark(tmp_path, "b", 8, pid=died.pid)
        mark(tmp_path, "a", 7, pid=lost.pid, lost="lease_lost")  # just before its exit
        ended: list[Mark] = []
        live = marks(tmp_path, ended)
        assert {m.pid for m in live} == {lost.pid, died.pid} and ended == []
    finally:
        for child in (lost, died):
            child.kill()
            child.wait()
    ended = []
    assert marks(tmp_path, ended) == []
    assert [(m.session, m.pid, m.epoch, m.lost) for m in ended] == [
        ("a", lost.pid, 7, "lease_lost")]
    again: list[Mark] = []
    assert marks(tmp_path, again) == [] and again == []  # swept: reported once
