"""Which processes of this host hold a session's lease: marks on the local disk.

A host's agent must stop every local session process that has no current lease
(issue 22), including one stuck in a call or stopped, which cannot stop itself, and
one started after the last heartbeat told the agent what runs here. The leader's
list cannot tell it that, so each session process says it itself: when its lease is
granted (before it connects) it writes a mark named by its pid in
``data_dir/run/leases`` with its session, epoch and start time, and removes it after
its client is closed. A mark whose pid is gone, or now names another process (its
start time differs), is stale and removed. A process that ends itself because it
lost its lease (the keeper's hard exit, its actor thread stuck) first rewrites its
mark with why (``lost``): the agent that finds it stale reports that end as a fenced
stop, not a crash. Plain files, no actors, no database.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.core.files import write_atomic


@dataclass(frozen=True, slots=True)
class Mark:
    """A session process of this host that was granted a lease."""

    pid: int
    session: str
    epoch: int
    started: int  # the process's start time (clock ticks after boot, /proc/pid/stat)
    lost: str = ""  # why the process ended itself after losing its lease; "" otherwise


def marks_dir(data_path: Path) -> Path:
    return data_path / "run" / "leases"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (field 22 of /proc/pid/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def ticks_now() -> int:
    """Now on the clock of ``process_start`` (clock ticks since boot, suspend included),
    so that "did this process start before that moment" can be asked."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def mark(directory: Path, session: str, epoch: int, pid: int | None = None,
         lost: str = "") -> None:
    """This process (``pid``) holds ``session``'s lease under ``epoch``; with ``lost``,
    it is about to end itself because it lost that lease (and says why)."""
    pid = os.getpid() if pid is None else pid
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = process_start(pid)
    # Not durable: a mark means nothing after a reboot (its process is gone).
    write_atomic(directory / f"{pid}.json", json.dumps(
        {"pid": pid, "session": session, "epoch": epoch, "started": started, "lost": lost}),
        durable=False)


def unmark(directory: Path, pid: int | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{os.getpid() if pid is None else pid}.json").unlink()


def marks(directory: Path, ended: list[Mark] | None = None) -> list[Mark]:
    """The live marks; stale ones (process gone or replaced) are removed, and those that
    say their process ended itself (``lost``) are added to ``ended``."""
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = Mark(int(data["pid"]), str(data["session"]), int(data["epoch"]),
                         int(data["started"]), str(data.get("lost") or ""))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half written by a process that is being killed: next look
        if process_start(entry.pid) != entry.started:
            unmark(directory, entry.pid)
            if entry.lost and ended is not None:
                ended.append(entry)
            continue
        found.append(entry)
    return found
