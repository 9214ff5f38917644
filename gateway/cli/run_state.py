"""The launcher's claim on a data_dir and its record of the run (``run/gateway.json``).

One launcher at a time: it holds a POSIX lock on ``run/launcher.lock`` for its whole
life. Unlike ``flock``, such a lock belongs to the process and is not inherited by
the processes it forks, so it is free as soon as the launcher is gone, however it
died, even while its actor processes live on.

The record names the run's mark (gateway/cli/ownership.py) and the launcher, Admin and
web server, each with its start time. It is written *before* any process is
started, so processes left by a launcher that died at any moment can be found, and
it proves nothing by its ids alone: a leftover process is stopped only if it holds
the mark. A record whose mark is not in this data_dir (copied with a backup, edited)
or was made in another boot names no process of ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from gateway.cli.ownership import (
    Mark,
    Stamp,
    make_mark,
    owned_processes,
    remove_stale_marks,
    sweep_owned,
)
from gateway.core.errors import WagateError
from gateway.core.files import stale_temp_files, write_atomic

log = structlog.get_logger("wagate.run")

STATE_FILE = "run/gateway.json"
LAUNCHER_LOCK = "run/launcher.lock"
STATE_VERSION = 2
LEFTOVER_GRACE_SECONDS = 5.0  # per signal, for processes a crashed launcher left
MAX_STATE_BYTES = 64 * 1024  # a record is a few hundred bytes; more is not one


class ClaimError(WagateError, RuntimeError):
    """The data_dir cannot be claimed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What ``run/gateway.json`` holds. Flat keys (``launcher``, ``actor_pgid``,
    ``web_pgid``, ``admin_port``) are read by ``wagate status`` and the tests."""

    launcher: Stamp
    mark: Mark
    admin_port: int
    role: str
    actor_pgid: int | None = None
    admin: Stamp | None = None
    web_pgid: int | None = None
    web: Stamp | None = None

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "version": STATE_VERSION, "launcher": self.launcher.pid,
            "launcher_start": self.launcher.start, "boot_id": self.mark.boot,
            "mark": self.mark.path, "mark_dev": self.mark.device,
            "mark_ino": self.mark.inode, "admin_port": self.admin_port, "role": self.role}
        if self.actor_pgid is not None:
            raw["actor_pgid"] = self.actor_pgid
        if self.admin is not None:
            raw.update(admin_pid=self.admin.pid, admin_start=self.admin.start)
        if self.web_pgid is not None:
            raw["web_pgid"] = self.web_pgid
        if self.web is not None:
            raw.update(web_pid=self.web.pid, web_start=self.web.start)
        return raw

    @classmethod
    def from_json(cls, raw: Any) -> RunRecord:
        """Raises ValueError for anything but a complete record of this version."""
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise ValueError("not a record of this version")
        launcher = Stamp(_count(raw, "launcher"), _count(raw, "launcher_start"))
        mark = Mark(_text(raw, "mark"), _count(raw, "mark_dev"), _count(raw, "mark_ino"),
                    _text(raw, "boot_id"), launcher.start)
        port = _count(raw, "admin_port")
        if not 0 < port < 65536:
            raise ValueError("admin_port is not a port")
        return cls(launcher, mark, port, _text(raw, "role"),
                   _optional(raw, "actor_pgid"), _stamp(raw, "admin"),
                   _optional(raw, "web_pgid"), _stamp(raw, "web"))


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if type(value) is not int or value < 0:
        raise ValueError(f"{key} is not a count")
    return value


def _text(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is not text")
    return value


def _optional(raw: dict[str, Any], key: str) -> int | None:
    return _count(raw, key) if key in raw else None


def _stamp(raw: dict[str, Any], name: str) -> Stamp | None:
    if f"{name}_pid" not in raw:
        return None
    return Stamp(_count(raw, f"{name}_pid"), _count(raw, f"{name}_start"))


def read_state(data: Path) -> dict[str, Any] | None:
    """The state file as JSON (any shape), or None when there is none or it is garbled."""
    try:
        fd = os.open(data / STATE_FILE,
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None  # a FIFO or device would block or never end
            text = f.read(MAX_STATE_BYTES + 1)
        if len(text) > MAX_STATE_BYTES:
            return None
        raw = json.loads(text)
    except (OSError, ValueError):  # absent, a symlink, not a file, or garbled
        return None
    return raw if isinstance(raw, dict) else None


def read_record(data: Path) -> RunRecord | None:
    """The record of a run on ``data``, or None when there is none this gateway can
    trust: garbled, from an older wagate, or made for another data_dir."""
    raw = read_state(data)
    if raw is None:
        return None
    try:
        record = RunRecord.from_json(raw)
    except ValueError:
        return None
    return record if record.mark.in_data_dir(data) else None


def write_record(data: Path, record: RunRecord) -> None:
    # The temp file is created exclusively, so nothing planted in run/ is written through.
    write_atomic(data / STATE_FILE, json.dumps(record.to_json()))


def running_gateway(data: Path) -> str | None:
    """What still runs on ``data`` according to the state file, proven from /proc (a
    live launcher, or processes holding its run's mark), or None."""
    record = read_record(data)
    if record is None:
        return None
    if record.launcher.alive():
        return f"a running wagate (pid {record.launcher.pid})"
    left = owned_processes(record.mark)
    if left:
        return f"processes a crashed wagate left behind (pids {_pids(left)})"
    return None


def running_admin_port(data: Path) -> int | None:
    """The admin port of the launcher that runs on ``data`` now; None when none does
    (a state file a crashed launcher left names a port someone else may use now)."""
    record = read_record(data)
    if record is None or not record.launcher.alive():
        return None
    return record.admin_port


def _pids(pids: list[int]) -> str:
    shown = ", ".join(str(p) for p in sorted(pids)[:10])
    return shown + (", ..." if len(pids) > 10 else "")


# ---- the claim -------------------------------------------------------------------------------


class Run:
    """This launcher's claim on a data_dir, from before its first process to after its
    last: ``Run.claim`` locks, stops what a crashed predecessor left, makes the mark
    and writes the record; ``close`` stops whatever of the run still lives, and only
    then removes the record and gives up the lock."""

    def __init__(self, data: Path, lock_fd: int, mark_fd: int, record: RunRecord) -> None:
        self.data = data
        self._lock_fd = lock_fd
        self.mark_fd = mark_fd  # to pass to every process started with exec
        self.record = record

    @classmethod
    def claim(cls, data: Path, admin_port: int, role: str) -> Run:
        lock_fd = _lock_launcher(data)
        try:
            sweep_leftovers(data)
            mark_fd, mark = make_mark(data)
        except BaseException:
            os.close(lock_fd)
            raise
        launcher = Stamp(os.getpid(), mark.since)
        run = cls(data, lock_fd, mark_fd, RunRecord(launcher, mark, admin_port, role))
        try:
            write_record(data, run.record)
        except BaseException:
            run._release()
            raise
        return run

    @property
    def mark(self) -> Mark:
        return self.record.mark

    def update(self, **changes: Any) -> None:
        self.record = replace(self.record, **changes)
        write_record(self.data, self.record)

    def sweep(self, settle: float = 2.0, grace: float = 5.0, pgid: int | None = None) -> str:
        return sweep_owned(self.mark, settle, grace, pgid)

    def close(self) -> str:
        """Stop every process of the run that is still alive; returns how (``clean``
        when nothing had to be signalled)."""
        outcome = self.sweep(settle=2.0, grace=5.0)
        if outcome != "clean":
            log.warning("processes of the gateway had to be stopped after shutdown",
                        how=outcome)
        left = owned_processes(self.mark)
        if left:  # keep the record: the next start finds (and stops) them by it
            log.error("processes of the gateway survived SIGKILL", pids=_pids(left))
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.data / STATE_FILE).unlink()
        self._release()
        return outcome

    def _release(self) -> None:
        for fd in (self.mark_fd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.mark_fd = self._lock_fd = -1

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _lock_launcher(data: Path) -> int:
    path = data / LAUNCHER_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ClaimError(f"cannot open {path} ({exc.strerror}); it must be a regular file "
                         "of the user wagate runs as: remove it and start again") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        record = read_record(data)
        who = f" (pid {record.launcher.pid})" if record and record.launcher.alive() else ""
        raise ClaimError(f"another wagate{who} is running with data_dir {data}; stop it "
                         "first or use another --data-dir") from None
    return fd


def sweep_leftovers(data: Path) -> None:
    """Stop what a launcher that died left running on ``data``: only processes that
    hold its run's mark. Called with the launcher lock held, so no other launcher of
    ``data`` runs."""
    raw = read_state(data)
    if raw is not None:
        record = read_record(data)
        if record is None:
            _legacy_or_foreign(data, raw)
        else:
            outcome = sweep_owned(record.mark, settle=0.0, grace=LEFTOVER_GRACE_SECONDS)
            if outcome != "clean":
                log.warning("stopped processes left by a previous crash", how=outcome)
            left = owned_processes(record.mark)
            if left:
                raise ClaimError(f"processes a crashed wagate left on {data} survived "
                                 f"SIGKILL (pids {_pids(left)}); reboot the host or wait "
                                 "for them to end, then start again")
    state = data / STATE_FILE
    # A launcher killed while it rewrote the record left its temp file (write_atomic
    # names it at random, so no later write replaces it): only this launcher writes here.
    for doomed in [state, *stale_temp_files(state.parent, state.name)]:
        with contextlib.suppress(FileNotFoundError):
            doomed.unlink()
    remove_stale_marks(data)


def _legacy_or_foreign(data: Path, raw: dict[str, Any]) -> None:
    """A state file this wagate cannot prove anything by: never signal what it names.
    One written in this boot by an older wagate whose launcher may still run stops
    the start (two gateways on one data_dir would send twice)."""
    launcher = raw.get("launcher")
    if raw.get("version") is None and type(launcher) is int and launcher > 0 \
            and _written_this_boot(data / STATE_FILE) and Stamp.of(launcher) is not None:
        raise ClaimError(f"{data / STATE_FILE} was written by an older wagate whose "
                         f"launcher (pid {launcher}) may still run; stop it first, or, if "
                         "that process is no wagate, delete the file and start again")
    log.warning("ignoring a state file that names no process of this gateway (older "
                "wagate, another data_dir, or damaged); nothing it names was signalled. "
                "If processes of an earlier gateway still run, stop them yourself",
                path=str(data / STATE_FILE), content=_short(raw))


def _written_this_boot(path: Path) -> bool:
    """The file changed after this boot began (``btime`` in /proc/stat)."""
    try:
        mtime = path.stat().st_mtime
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return mtime >= int(line.split()[1])
    except (OSError, ValueError):
        pass
    return True  # unknown: assume it may be


def _short(raw: dict[str, Any]) -> str:
    return json.dumps(raw)[:300]

