"""Freeze a set of processes with the cgroup v2 freezer (issue 22, C3).

A host that is suspended (a frozen VM, a paused container, a laptop lid) stops every
one of its processes at once: none of them can fence the others, and none notices
until it runs again. A test makes that with a throwaway cgroup: ``Freezer`` creates a
child of the cgroup v2 hierarchy, moves the processes in, writes ``1`` to its
``cgroup.freeze`` and waits until the kernel says the whole group is frozen
(``cgroup.events``: ``frozen 1``). ``close`` always thaws, moves whatever is left
back to the cgroup it came from and removes the directory, however the test ended.

Needs root and a kernel with the cgroup v2 freezer (5.2 or later, the unified
hierarchy mounted): ``available`` says why not, for a visible skip.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

PREFIX = "wgt-freeze-"
FREEZE_DEADLINE_SECONDS = 10.0


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (pure or hybrid layout), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def available() -> str | None:
    """None when a test can freeze processes here; else why not."""
    if os.geteuid() != 0:
        return "the cgroup freezer tests need root (cgroup v2 cgroup.freeze)"
    root = cgroup2_root()
    if root is None:
        return "no cgroup v2 hierarchy is mounted here (cgroup.freeze needs it)"
    probe = root / f"{PREFIX}{os.getpid()}-probe"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a cgroup under {root.name}: {exc}"
    try:
        if not (probe / "cgroup.freeze").exists():
            return "this kernel's cgroup v2 has no freezer (cgroup.freeze, Linux 5.2+)"
    finally:
        probe.rmdir()
    return None


def _cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` (``0::/path``), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


class Freezer:
    """A cgroup of its own for some processes, to freeze and thaw them together."""

    def __init__(self) -> None:
        root = cgroup2_root()
        if root is None:
            raise RuntimeError("no cgroup v2 hierarchy is mounted")
        self.root = root
        self.path = root / f"{PREFIX}{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.path.mkdir()
        self.origin: dict[int, str] = {}  # pid -> the cgroup it came from

    def add(self, pids: Iterable[int]) -> list[int]:
        """Move ``pids`` in (their future children are born inside); returns those moved
        (a process that exited meanwhile is skipped)."""
        moved = []
        for pid in pids:
            origin = _cgroup_of(pid)
            if origin is None:
                continue
            try:
                (self.path / "cgroup.procs").write_text(str(pid), encoding="ascii")
            except ProcessLookupError:
                continue
            self.origin.setdefault(pid, origin)
            moved.append(pid)
        return moved

    def members(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text(encoding="ascii")
        return [int(p) for p in text.split()]

    def frozen(self) -> bool:
        events = (self.path / "cgroup.events").read_text(encoding="ascii")
        return "frozen 1" in events.splitlines()

    def freeze(self) -> None:
        """Freeze every process inside; returns once the kernel reports them frozen."""
        self._set(1)
        deadline = time.monotonic() + FREEZE_DEADLINE_SECONDS
        while not self.frozen():
            if time.monotonic() > deadline:
                raise RuntimeError("the cgroup did not freeze within "
                                   f"{FREEZE_DEADLINE_SECONDS} s")
            time.sleep(0.01)

    def thaw(self) -> None:
        self._set(0)

    def close(self) -> None:
        """Thaw, move every process back where it came from, remove the cgroup;
        idempotent."""
        if not self.path.exists():
            return
        with contextlib.suppress(OSError):
            self.thaw()
        for _ in range(3):  # children born inside since ``add`` go to the root
            try:
                pids = self.members()
            except OSError:
                break
            for pid in pids:
                target = self.root / self.origin.get(pid, "/").lstrip("/")
                with contextlib.suppress(OSError):
                    (target / "cgroup.procs").write_text(str(pid), encoding="ascii")
        self.path.rmdir()

    def _set(self, value: int) -> None:
        (self.path / "cgroup.freeze").write_text(str(value), encoding="ascii")
