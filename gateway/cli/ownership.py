"""Which processes are this gateway's, proven from /proc, and signals to those only.

A pid or a process-group id proves nothing once the process that had it may be gone:
after a crash, a reboot or a pid wrap the id names whatever process got it next, and
a gateway running as root can signal anything. So the launcher *marks* the processes
it starts: before starting any, it creates a file with a random name in
``data_dir/run``, keeps it open and unlinks it at once. Every process of the gateway
inherits that descriptor (the actor system by fork, the web server by ``pass_fds``,
gunicorn's workers by fork), and nothing else can open the file by its name.

A process is ours (``Mark.owns``) only when all of this holds, read from /proc:
- this boot is the boot the mark was made in (``/proc/sys/kernel/random/boot_id``);
- it started no earlier than the launcher that made the mark (field 22 of
  ``/proc/PID/stat``, clock ticks since boot);
- it holds the mark: a descriptor whose path is the mark's, inside the ``data_dir``
  the mark was made for, with the mark's device and inode.

Signals go through a pidfd opened *before* that check: if the pid is reused between
the check and the signal, the pidfd still names the old (gone) process and the
signal reaches nobody.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MARK_PREFIX = "owner-"
DELETED = " (deleted)"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
POLL_SECONDS = 0.05


def boot_id() -> str:
    """This boot's id ("" where the kernel does not say): start times count from boot."""
    try:
        return Path(BOOT_ID_PATH).read_text(encoding="ascii").strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """What ``/proc/PID/stat`` says about a process."""

    pid: int
    state: str
    pgid: int
    start: int  # clock ticks since boot


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when it is gone (or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice threads itrealvalue starttime ...; comm
    # may hold spaces and parentheses, so split after its last ")".
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return ProcStat(pid, fields[0], int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Stamp:
    """One process, told apart from any later process with the same pid."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Stamp | None:
        stat = proc_stat(pid)
        return None if stat is None else cls(pid, stat.start)

    def alive(self) -> bool:
        """This very process still runs (not a zombie, not a later one with its pid)."""
        stat = proc_stat(self.pid)
        return stat is not None and stat.start == self.start and stat.state != "Z"


@dataclass(frozen=True, slots=True)
class Mark:
    """The file every process of one launcher's run holds open (see the module doc)."""

    path: str  # data_dir/run/owner-<random>, data_dir fully resolved
    device: int
    inode: int
    boot: str
    since: int  # the launcher's start time: no process of the run started earlier

    def owns(self, pid: int) -> bool:
        """``pid`` is, right now, a live process of this run."""
        if self.boot != boot_id():
            return False  # another boot: none of the run's processes survived it
        stat = proc_stat(pid)
        if stat is None or stat.state == "Z" or stat.start < self.since:
            return False
        return self.held_by(pid)

    def held_by(self, pid: int) -> bool:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look into (then not ours to signal)
            return False
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
                if target not in (self.path, self.path + DELETED):
                    continue
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (self.device, self.inode):
                return True
        return False

    def in_data_dir(self, data_dir: Path) -> bool:
        """The mark was made for ``data_dir`` (a state file copied from another
        data_dir, or edited, names a mark that is not ours)."""
        path = Path(self.path)
        return (path.parent == Path(os.path.realpath(data_dir)) / "run"
                and path.name.startswith(MARK_PREFIX))


def make_mark(data_dir: Path) -> tuple[int, Mark]:
    """Create this run's mark in ``data_dir/run``; returns the open descriptor (keep
    it open for the life of the run: it is what the processes inherit) and the mark.
    The file is unlinked at once: nothing can open it by name any more."""
    run = Path(os.path.realpath(data_dir)) / "run"
    path = run / f"{MARK_PREFIX}{secrets.token_hex(16)}"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        path.unlink()
        launcher = proc_stat(os.getpid())
        if launcher is None:
            raise OSError("cannot read /proc/self/stat: /proc must be mounted")
        return fd, Mark(str(path), st.st_dev, st.st_ino, boot_id(), launcher.start)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def remove_stale_marks(data_dir: Path) -> None:
    """Marks a run could not unlink (it died between creating and unlinking one)."""
    for path in (Path(data_dir) / "run").glob(f"{MARK_PREFIX}*"):
        with contextlib.suppress(OSError):
            path.unlink()


# ---- finding and signalling -------------------------------------------------------------


def owned_processes(mark: Mark, pgid: int | None = None,
                    exclude: Iterable[int] = ()) -> list[int]:
    """Every live process of ``mark``'s run (only those in process group ``pgid`` when
    given), except ``exclude`` and this process."""
    if mark.boot != boot_id():
        return []
    skip = {os.getpid(), *exclude}
    euid = os.geteuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        stat = proc_stat(pid)
        if (stat is None or stat.state == "Z" or stat.start < mark.since
                or (pgid is not None and stat.pgid != pgid)):
            continue
        if euid != 0 and _owner(pid) != euid:
            continue  # another user's process: never one we started
        if mark.held_by(pid):
            found.append(pid)
    return found


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def signal_owned(mark: Mark, pid: int, signum: int) -> bool:
    """Send ``signum`` to ``pid`` if, and only if, it is a process of ``mark``'s run;
    True when sent."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (a kernel before 5.3, a seccomp filter): check, then kill
        if not mark.owns(pid):
            return False
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        if not mark.owns(pid):
            return False
        signal.pidfd_send_signal(pidfd, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(pidfd)


def wait_owned_gone(mark: Mark, timeout: float, pgid: int | None = None,
                    exclude: Iterable[int] = ()) -> bool:
    """Wait until no process of the run (of group ``pgid``) lives; False on timeout."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        if not owned_processes(mark, pgid, exclude):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def sweep_owned(mark: Mark, settle: float = 2.0, grace: float = 5.0, pgid: int | None = None,
                exclude: Iterable[int] = ()) -> str:
    """Make sure no process of ``mark``'s run (of group ``pgid``) survives, signalling
    each proven process on its own (SIGTERM, then SIGKILL), never a group by its id.

    Returns ``clean`` (they ended by themselves within ``settle``), ``sigterm`` or
    ``sigkill`` (what it took), or ``survived`` (one outlived SIGKILL: stuck in the
    kernel). Processes are looked up again on every round: one may start another
    while it is being stopped; each gets each signal once.
    """
    skip = tuple(exclude)
    if wait_owned_gone(mark, settle, pgid, skip):
        return "clean"
    for signum, outcome in ((signal.SIGTERM, "sigterm"), (signal.SIGKILL, "sigkill")):
        deadline = time.monotonic() + max(0.0, grace)
        sent: set[int] = set()
        while left := owned_processes(mark, pgid, skip):
            for pid in set(left) - sent:
                if signal_owned(mark, pid, signum):
                    sent.add(pid)
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        else:
            return outcome
    return "survived"
