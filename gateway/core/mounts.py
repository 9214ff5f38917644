"""Which file system a path is on, from ``/proc/self/mountinfo``.

Everything but ``read_mounts`` and ``mount_of_path`` (which read that file and stat
the path) is pure, on mountinfo text.

The gateway keeps SQLite databases in ``storage.data_dir`` (the outbox, rate limits,
the supervisor's state, webhooks, the audit log's index) in WAL mode. WAL keeps its
index in a memory-mapped ``-shm`` file that only processes of one host can share, and
SQLite's locks are POSIX advisory locks, which network file systems implement
unreliably or not at all (SQLite's own "How To Corrupt An SQLite Database File",
sections 2.1 and 2.2; "WAL does not work over a network filesystem"). A data_dir on
one of them can lose committed writes or corrupt a database, silently. So the
launcher refuses it (``gateway.cli.serve``), and this module says which file system a
path is on, and whether that is one of the network file systems below.

mountinfo (proc(5)): one line per mount, fields separated by spaces::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    id parent major:minor root mount-point options [optional...] - type source super

Space, tab, newline and backslash in a path are written as octal escapes (``\\040``,
``\\011``, ``\\012``, ``\\134``). A mount point can be mounted over (the later line is the
one in use), and a mount can hide mounts below it: when the caller knows the path's
device number (``os.stat(path).st_dev``), the mounts of that device decide.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# File systems whose files another host may share and whose locking or shared memory
# SQLite cannot rely on. "fuse.<name>" is how a FUSE file system shows its type.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4",                          # NFS
    "cifs", "smb3", "smbfs",                # SMB / Windows shares
    "9p",                                   # Plan 9 (VM and WSL shares)
    "ceph", "fuse.ceph-fuse",               # CephFS, kernel and FUSE clients
    "glusterfs", "fuse.glusterfs",          # GlusterFS
    "fuse.sshfs",                           # SSHFS
    "lustre", "gpfs", "beegfs", "afs",      # cluster and distributed file systems
})

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo, what this module needs of it."""

    mount_point: str
    fs_type: str
    source: str
    device: tuple[int, int]  # (major, minor), as os.major/os.minor of st_dev


def unescape(field: str) -> str:
    """A mountinfo path field with its octal escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of mountinfo ``text``, in its order (a line that does not parse is
    skipped: the kernel writes none, and a guess is worse than leaving it out)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = (int(n) for n in fields[2].split(":"))
            mounts.append(Mount(unescape(fields[4]), fields[separator + 1],
                                unescape(fields[separator + 2]), (major, minor)))
        except (ValueError, IndexError):
            continue
    return mounts


def within(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (whole components; both absolute)."""
    return directory == "/" or path == directory or path.startswith(
        directory.rstrip("/") + "/")


def mount_of(path: str, mounts: Iterable[Mount], device: int | None = None) -> Mount | None:
    """The mount that absolute, resolved ``path`` is on: the longest mount point that
    is a prefix of it (whole components), the later one of two at the same point.
    With ``device`` (its ``st_dev``) only mounts of that device count, if any does:
    a mount hidden by a later one over a directory above it is then not taken."""
    candidates = [m for m in mounts if within(path, m.mount_point)]
    if device is not None:
        same = [m for m in candidates if m.device == (os.major(device), os.minor(device))]
        candidates = same or candidates
    best: Mount | None = None
    for mount in candidates:  # in mount order: a later mount at one point wins a tie
        if best is None or len(mount.mount_point) >= len(best.mount_point):
            best = mount
    return best


def mounts_below(path: str, mounts: Iterable[Mount]) -> list[Mount]:
    """The mounts strictly inside directory ``path`` (a data_dir's subdirectory can be
    a mount of its own)."""
    return [m for m in mounts if m.mount_point != path and within(m.mount_point, path)]


def is_network(mount: Mount) -> bool:
    return mount.fs_type in NETWORK_FILESYSTEMS


DATA_DIR_ADVICE = ("Put it on a local file system of this host (ext4, xfs, btrfs, ...); "
                   "only storage.sessions_dir and storage.media_dir (sealed files, no "
                   "live database) may be a shared network directory")


def network_problem(key: str, directory: str, mount: Mount,
                    advice: str = DATA_DIR_ADVICE) -> str | None:
    """The refusal of ``directory`` (configured as ``key``) on ``mount``, or None when
    that is not a network file system."""
    if not is_network(mount):
        return None
    return (f"{key} {directory} is on a network file system ({mount.fs_type}, "
            f"{mount.source} mounted at {mount.mount_point}): the gateway keeps SQLite "
            "databases there in WAL mode, whose shared-memory index works only among the "
            "processes of one host and whose locks a network file system does not "
            "reliably honour, so a database could lose committed writes or be corrupted. "
            f"{advice}")


# ------------------------------------------------------------------------------ I/O


def read_mounts(text: str | None = None) -> list[Mount] | None:
    """This process's mounts (``text``: mountinfo given instead of read), None when
    there is no /proc to read (not Linux, or /proc not mounted): nobody can tell."""
    if text is None:
        try:
            text = MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return None
    return parse_mountinfo(text)


def mount_of_path(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` is on: resolved (symlinks followed), and its device number
    from its nearest existing directory."""
    resolved = path.expanduser().resolve()
    existing = resolved
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        device: int | None = os.stat(existing).st_dev
    except OSError:
        device = None
    return mount_of(str(resolved), mounts, device)
