"""The one way the gateway replaces a file on disk.

Credentials, sealed stores, the token file, the launcher's run record and the status
snapshot are all rewritten while readers (other processes, the next start after a
crash or a power cut) may look at them. Each must see either the old file or the new
one, never a torn mix: so the bytes go into a temp file in the same directory (a
rename is atomic only within one file system), are flushed to disk, and the temp file
is renamed over the target; then the directory is fsynced, so the rename itself
survives a power cut.

The temp file is created by ``mkstemp`` (``O_EXCL``, mode 0600 from the start), so a
planted symlink at its name is never followed, and the secret is never readable by
others, not even for a moment. Its name, ``.<name>.<random>.tmp``, is what
``stale_temp_files`` finds after a crash between the write and the rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600
# What link() answers on a file system without hard links (vfat, exFAT, sshfs ...).
NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def write_atomic(path: Path, data: bytes | str, *, mode: int = PRIVATE,
                 exclusive: bool = False, durable: bool = True) -> None:
    """Replace (or create) ``path`` with ``data`` so that a crash at any moment leaves
    the old file or the new one, and no temp file when the write fails.

    ``mode``: the new file's permission bits (0600 unless a caller needs others).
    ``exclusive``: never replace an existing file (``FileExistsError`` instead), for
    what must not be overwritten, such as a storage key; the complete file appears
    under its name at once (a hard link), so even a crash leaves no half key; on a
    file system without hard links (a key on a USB stick) it is written under its name
    directly, as before the one writer, where a crash can leave a short file.
    ``durable=False`` skips both fsyncs, for a file rewritten every second that is
    worthless after a restart (the status snapshot): a power cut may then lose the
    last version, but never leaves a torn one.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode != PRIVATE:
                os.fchmod(handle.fileno(), mode)
            handle.write(raw)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        published = _publish(tmp, path, exclusive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if not published:
        _create_exclusive(path, raw, mode, durable)
    if durable:
        fsync_dir(path.parent)


def _publish(tmp: Path, path: Path, exclusive: bool) -> bool:
    """Give the finished temp file its real name: a rename over the old file, or, when
    nothing may be overwritten, a hard link that fails if the name is taken (the temp
    name is then removed by the caller). False: the file system has no hard links."""
    if not exclusive:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        return False
    return True


def _create_exclusive(path: Path, raw: bytes, mode: int, durable: bool) -> None:
    """Where there are no hard links: create the name itself (``O_EXCL``: never over
    an existing file, never through a symlink) and write into it. A write that fails
    removes the file again: ``O_EXCL`` proved it ours, and a short key is worse than
    none."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 PRIVATE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(raw)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


def streaming_temp(directory: Path, prefix: str) -> tuple[BinaryIO, Path]:
    """A private temp file (``O_EXCL``, 0600) to stream a file too large for
    ``write_atomic`` into (a media upload); the caller fsyncs it, then ``publish_once``."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    return os.fdopen(fd, "wb"), Path(name)


def publish_once(tmp: Path, path: Path) -> bool:
    """Give a finished, fsynced temp file its name, then fsync the directory; for
    content-addressed files, whose name says their content: when the name is taken
    already the same bytes are there, so ``tmp`` is removed instead (False)."""
    if path.exists():
        tmp.unlink()
        return False
    os.replace(tmp, path)  # a writer of the same content at the same moment: same bytes
    fsync_dir(path.parent)
    return True


def fsync_dir(directory: Path) -> None:
    """Make a rename, creation or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stale_temp_files(directory: Path, name: str) -> list[Path]:
    """Temp files ``write_atomic`` left for ``directory/name`` when the process died
    between the write and the rename; only safe to remove while nothing writes there."""
    return sorted(directory.glob(f".{name}.*.tmp"))


def publish_directory(temp: Path, target: Path, keep_as: Path | None = None) -> None:
    """Put a finished directory tree ``temp`` (already fsynced) in place as ``target``
    in one rename, so a reader sees the old tree or the new one, never half of it.
    ``target`` must not exist, be an empty directory, or be moved to ``keep_as``
    first (nothing is deleted). Both must be on one file system, as for ``write_atomic``."""
    if keep_as is not None:
        os.rename(target, keep_as)
    elif target.exists():
        target.rmdir()  # empty (rmdir refuses anything else): a rename needs the name free
    os.rename(temp, target)
    fsync_dir(target.parent)
