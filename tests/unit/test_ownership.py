"""Only processes proven the gateway's own are signalled (gateway/cli/ownership.py), and a
state file proves nothing by its ids (gateway/cli/run_state.py).

Real processes: children of this test, some holding a run's mark (as the gateway's
processes inherit it), some not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.ownership import (
    Mark,
    Stamp,
    make_mark,
    owned_processes,
    signal_owned,
    sweep_owned,
)
from gateway.cli.run_state import (
    STATE_FILE,
    ClaimError,
    Run,
    RunRecord,
    read_record,
    running_admin_port,
    running_gateway,
)

# Ignores SIGTERM (as a stuck process would), says when it is ready, then waits.
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)")
CALM = "import sys, time; print('ready', flush=True); time.sleep(600)"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    return data


@pytest.fixture
def mark(data_dir: Path) -> Iterator[tuple[int, Mark]]:
    fd, made = make_mark(data_dir)
    yield fd, made
    os.close(fd)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start children of this test (holding ``fds``); all are killed and reaped at the
    end (our own unreaped children: their pids are theirs)."""
    children: list[subprocess.Popen[str]] = []

    def start(script: str = CALM, fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
        child = subprocess.Popen([sys.executable, "-c", script], pass_fds=fds, text=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


def test_the_mark_file_is_gone_from_data_dir_and_only_its_holders_are_ours(
        data_dir: Path, mark: tuple[int, Mark],
        spawn: Callable[..., subprocess.Popen[str]]) -> None:
    fd, made = mark
    assert not list((data_dir / "run").iterdir()), "nothing can open the mark by its name"
    holder, stranger = spawn(fds=(fd,)), spawn()
    assert made.owns(holder.pid) and not made.owns(stranger.pid)
    assert set(owned_processes(made)) == {holder.pid}
    assert made.in_data_dir(data_dir) and not made.in_data_dir(data_dir.parent)


def test_a_signal_reaches_a_holder_of_the_mark_and_nobody_else(
        mark: tuple[int, Mark], spawn: Callable[..., subprocess.Popen[str]]) -> None:
    fd, made = mark
    holder, stranger = spawn(fds=(fd,)), spawn()
    assert not signal_owned(made, stranger.pid, signal.SIGTERM)
    assert signal_owned(made, holder.pid, signal.SIGTERM)
    assert holder.wait(10) == -signal.SIGTERM
    assert stranger.poll() is None
    assert not signal_owned(made, holder.pid, signal.SIGTERM)  # reaped: its pid proves nothing


@pytest.mark.parametrize("change", [
    {"boot": "another-boot"},  # after a reboot, nothing of the run survived
    {"since": 1 << 62},  # the process started before the launcher did
    {"inode": 1},  # another file
    {"path": "/tmp/run/owner-0"},  # another data_dir
])
def test_a_holder_that_does_not_match_the_record_is_not_ours(
        mark: tuple[int, Mark], spawn: Callable[..., subprocess.Popen[str]],
        change: dict[str, Any]) -> None:
    fd, made = mark
    holder = spawn(fds=(fd,))
    other = dataclasses.replace(made, **change)
    assert not other.owns(holder.pid)
    assert not signal_owned(other, holder.pid, signal.SIGKILL)
    assert owned_processes(other) == []
    assert holder.poll() is None


def test_the_sweep_stops_every_holder_even_a_stubborn_one_and_nothing_else(
        mark: tuple[int, Mark], spawn: Callable[..., subprocess.Popen[str]]) -> None:
    fd, made = mark
    calm, stubborn, stranger = spawn(fds=(fd,)), spawn(STUBBORN, (fd,)), spawn(STUBBORN)
    assert sweep_owned(made, settle=0.0, grace=1.0) == "sigkill"
    assert calm.wait(10) == -signal.SIGTERM
    assert stubborn.wait(10) == -signal.SIGKILL
    assert stranger.poll() is None
    assert sweep_owned(made, settle=0.0, grace=1.0) == "clean"


def record_json(data_dir: Path, made: Mark, **extra: Any) -> dict[str, Any]:
    record = RunRecord(Stamp(os.getpid(), made.since), made, 4711, "single")
    return {**record.to_json(), **extra}


@pytest.mark.parametrize("edit", [
    {"version": 1}, {"version": None}, {"launcher": -1}, {"launcher": True},
    {"mark_ino": "1"}, {"launcher_start": 1.5}, {"mark": None},
    {"mark": "/etc/owner-x"}, {"mark": "{run}/../owner-x"}, {"mark": "{run}/gateway.json"},
])
def test_a_state_file_that_is_not_a_whole_record_of_this_data_dir_names_nothing(
        data_dir: Path, mark: tuple[int, Mark], edit: dict[str, Any]) -> None:
    _, made = mark
    run = str(data_dir.resolve() / "run")
    edit = {k: v.format(run=run) if isinstance(v, str) else v for k, v in edit.items()}
    raw = record_json(data_dir, made, **edit)
    (data_dir / STATE_FILE).write_text(json.dumps(raw))
    assert read_record(data_dir) is None


def test_a_record_is_trusted_for_the_admin_port_only_while_its_launcher_runs(
        data_dir: Path, mark: tuple[int, Mark],
        spawn: Callable[..., subprocess.Popen[str]]) -> None:
    fd, made = mark
    (data_dir / STATE_FILE).write_text(json.dumps(record_json(data_dir, made)))
    assert running_admin_port(data_dir) == 4711  # this process plays the launcher
    assert running_gateway(data_dir) == f"a running wagate (pid {os.getpid()})"

    gone = RunRecord(Stamp(os.getpid(), made.since - 1), made, 4711, "single")  # pid reused
    (data_dir / STATE_FILE).write_text(json.dumps(gone.to_json()))
    assert running_admin_port(data_dir) is None
    assert running_gateway(data_dir) is None
    leftover = spawn(fds=(fd,))
    assert running_gateway(data_dir) == (
        f"processes a crashed wagate left behind (pids {leftover.pid})")


def test_an_older_state_file_naming_a_live_launcher_stops_the_start(
        data_dir: Path, spawn: Callable[..., subprocess.Popen[str]]) -> None:
    """An older wagate's state file proves nothing, so nothing it names is signalled;
    written in this boot and naming a live process, it may be a running older
    launcher: the start stops and says what to do."""
    other = spawn()
    (data_dir / STATE_FILE).write_text(json.dumps({"launcher": other.pid,
                                                   "actor_pgid": other.pid}))
    with pytest.raises(ClaimError, match="older wagate"):
        Run.claim(data_dir, 4711, "single")
    assert other.poll() is None

    other.kill()
    other.wait(10)
    with Run.claim(data_dir, 4711, "single") as run:  # nothing names a live process now
        assert read_record(data_dir) == run.record


def test_a_second_launcher_cannot_claim_a_claimed_data_dir(data_dir: Path) -> None:
    with Run.claim(data_dir, 4711, "single"):
        # The lock is per process: another process must try it.
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from gateway.cli.run_state import Run, ClaimError\n"
             "try:\n    Run.claim(Path(sys.argv[1]), 1, 'single')\n"
             "except ClaimError as exc:\n    print(exc); sys.exit(3)", str(data_dir)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 3, done.stderr
        assert f"another wagate (pid {os.getpid()}) is running" in done.stdout
    assert not (data_dir / STATE_FILE).exists()
    assert Run.claim(data_dir, 4711, "single").close() == "clean"  # free again


@pytest.mark.parametrize("shape", ["symlink", "fifo", "huge", "port"])
def test_a_state_file_of_a_hostile_shape_is_no_record_and_never_blocks(
        data_dir: Path, mark: tuple[int, Mark], tmp_path: Path, shape: str) -> None:
    """Someone who can write data_dir chooses the state file: a symlink to a record
    elsewhere, a FIFO (reading it would block the start forever), a huge file, a port
    out of range. None is a record; a claim goes ahead."""
    _, made = mark
    path = data_dir / STATE_FILE
    if shape == "symlink":
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps(record_json(data_dir, made)))
        path.symlink_to(elsewhere)
    elif shape == "fifo":
        os.mkfifo(path)
    elif shape == "huge":
        path.write_text(json.dumps(record_json(data_dir, made, pad="x" * 100_000)))
    else:
        path.write_text(json.dumps(record_json(data_dir, made, admin_port=70000)))
    assert read_record(data_dir) is None
    assert running_admin_port(data_dir) is None
    Run.claim(data_dir, 4711, "single").close()
    assert not path.exists()
