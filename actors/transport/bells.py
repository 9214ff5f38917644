"""Sleep until a file's attributes change, or a timeout, or a wake-up: Linux inotify.

The simulated connection (``actors.transport.simulator``) learns of a write meant for it
when its session's "bell" file gets a new modification time. Checking that by polling
cost a wake-up every poll interval for every idle session (issue 17's idle figure);
inotify lets the kernel wake the thread only when a bell rings. Where inotify is not
available (another kernel, a watch limit reached) ``open_watch`` returns None and the
caller keeps polling; on a network file system shared by several hosts a ring made on
another host raises no event here, so callers keep a slower safety-net read as well.

Only the C library through ctypes: no dependency for a test double's optimisation.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
from collections.abc import Iterable
from pathlib import Path

_IN_ATTRIB = 0x00000004  # utime: what a ring does
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - present on Linux only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class BellWatch:
    """An inotify descriptor watching some files, plus a pipe to wake its waiter early."""

    def __init__(self, inotify_fd: int) -> None:
        self._fd = inotify_fd
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wait(self, timeout: float) -> None:
        """Return when a watched file's attributes changed, ``wake`` was called, or
        ``timeout`` seconds passed (whichever is first); pending events are consumed."""
        ready, _, _ = select.select([self._fd, self._wake_r], [], [], max(0.0, timeout))
        for fd in ready:
            _drain(fd)

    def wake(self) -> None:
        """Make a ``wait`` in another thread return now (or the next one at once)."""
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is already pending
        except OSError as exc:
            if exc.errno != errno.EBADF:  # closed meanwhile: nobody waits any more
                raise

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)


def open_watch(paths: Iterable[Path]) -> BellWatch | None:
    """A watch on ``paths`` (created empty when missing), or None without inotify."""
    if _LIBC is None:
        return None
    fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None  # e.g. EMFILE: the per-user instance limit; the caller polls
    try:
        for path in paths:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # a watch needs a file
            if _LIBC.inotify_add_watch(fd, os.fsencode(path), _IN_ATTRIB) < 0:
                os.close(fd)
                return None  # e.g. the per-user watch limit: the caller polls
    except OSError:
        os.close(fd)
        return None  # a bell that cannot be made: the caller polls
    return BellWatch(fd)


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except BlockingIOError:
            return
