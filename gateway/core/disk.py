"""Free space on data_dir's file system, and telling a full disk from other failures.

A full disk must not turn into lost or corrupted records. The gateway therefore stops
accepting new messages while the free space is under ``storage.min_free_mb``: what
is left stays for the writes that messages already accepted still need (their state
changes, events, receipts, the audit log). A write that fails anyway with ENOSPC (a
burst, another program filling the disk) is rolled back whole by SQLite, and the
send that caused it is refused the same way, before anything was acknowledged.
Nothing has to be restarted when space comes back: the check is made on every send,
with ``statvfs``, which costs a system call.

Pure: imports nothing of ours.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
DISK_FULL = "DISK_FULL"
DISK_FULL_RETRY_SECONDS = 30
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True)
class Space:
    """What ``statvfs`` says of a file system, for the caller (not root) that writes."""

    free_bytes: int
    total_bytes: int
    min_free_bytes: int

    @property
    def low(self) -> bool:
        return self.free_bytes < self.min_free_bytes

    def to_json(self) -> dict[str, int | bool]:
        return {"freeBytes": self.free_bytes, "totalBytes": self.total_bytes,
                "minFreeBytes": self.min_free_bytes, "low": self.low}


def space(path: Path, min_free_mb: int) -> Space:
    """Free space where ``path`` lives (``f_bavail``: what an unprivileged writer may
    use, so the blocks ext4 reserves for root do not count as free)."""
    info = os.statvfs(path)
    return Space(info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize,
                 min_free_mb * MIB)


def is_disk_full(exc: BaseException) -> bool:
    """The error of a write that found no space: ENOSPC or a quota (EDQUOT) from the
    OS, or SQLite's ``SQLITE_FULL`` ("database or disk is full")."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
            or "database or disk is full" in str(exc)
    cause = exc.__cause__
    return cause is not None and is_disk_full(cause)


def refusal_text(free: int, min_free: int) -> str:
    """The message of a send refused for want of space: what happened, what to do (no
    path: a client need not learn where the operator keeps data_dir)."""
    return (f"the gateway's disk is (nearly) full: {free // MIB} MiB free, under "
            f"storage.min_free_mb ({min_free // MIB} MiB); the message was not accepted. "
            "Retry later; the operator frees disk space on data_dir (sends resume by "
            "themselves)")


def write_refused_text(what: str) -> str:
    """The message of a change refused because its write found the disk full (the
    change was rolled back whole): what happened, what to do."""
    return (f"the gateway's disk is full: {what} could not be written and nothing was "
            f"changed. Retry in {DISK_FULL_RETRY_SECONDS} s; the operator frees disk space "
            "on data_dir (the gateway recovers by itself)")


def disk_full_details() -> dict[str, object]:
    """The ``extensions`` of an ``UNAVAILABLE`` caused by a full disk."""
    return {"reason": DISK_FULL, "retryAfterSeconds": DISK_FULL_RETRY_SECONDS}


def access_problem(data_dir: Path, skip: frozenset[str] = frozenset({"run"})) -> str | None:
    """Why the gateway cannot work in ``data_dir``, naming the directory or file, or
    None: a directory it cannot write (a read-only mount, wrong owner) or a file it
    cannot read. Checked at start, so the operator reads one clear line instead of a
    store failing later inside an actor. ``skip``: top-level directories of runtime
    state that the launcher recreates anyway."""
    for directory, dirs, files in os.walk(data_dir):
        here = Path(directory)
        if here == data_dir:
            dirs[:] = [d for d in dirs if d not in skip]
        problem = _unwritable(here)
        if problem is not None:
            return problem
        for name in files:
            problem = _unreadable(here / name)
            if problem is not None:
                return problem
    return None


def _unreadable(path: Path) -> str | None:
    """Opening the regular file ``path`` for reading fails: why, or None (also for a
    symlink, socket or FIFO: not a store, not ours to judge here)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # removed meanwhile
    except OSError as exc:
        return (f"cannot read {path} ({exc.strerror}): give the user wagate runs as read "
                "and write access to it (and everything in data_dir)")
    os.close(fd)
    return None


def _unwritable(directory: Path) -> str | None:
    """Creating (and removing) a file in ``directory`` fails: why, or None."""
    probe = directory / f".wagate-write-check-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return None  # a leftover of a crashed check: writable enough to have made it
    except OSError as exc:
        what = "is on a read-only file system" if exc.errno == errno.EROFS else \
            f"is not writable ({exc.strerror})"
        return (f"data_dir's directory {directory} {what}: the gateway writes its stores "
                "there; mount it read-write and give the user wagate runs as write access")
    os.close(fd)
    os.unlink(probe)
    return None
