"""The web workers' metric files, with their disk blocks allocated before use.

prometheus-client's multiprocess mode keeps each worker's values in a memory-mapped
file that it grows with ``truncate``: a sparse file whose blocks the file system
allocates only when a page is first written through the mapping. On a full file
system (a tmpfs, or any disk with nothing left) that first write cannot be backed
and the kernel kills the worker with SIGBUS, which took the whole web tier down
with it on a full disk. ``AllocatedMmapedDict`` reserves the blocks with
``posix_fallocate`` before the file is mapped or grown, so a full disk is an
``OSError`` (ENOSPC) at the call that needed the space instead of a signal; callers
skip that one observation (``tolerant``) and the request is answered.

``install()`` puts the class where prometheus-client looks it up when it opens a
worker's file; it must run before the first metric value is written.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from prometheus_client import mmap_dict, values

log = structlog.get_logger("wagate.http")

F = TypeVar("F", bound=Callable[..., Any])


def _entry_size(key: str) -> int:
    """Bytes one value takes in the file (prometheus-client's layout: length, key
    padded to 8 bytes, value and timestamp)."""
    encoded = key.encode("utf-8")
    padded = len(encoded) + (8 - (len(encoded) + 4) % 8)
    return struct.calcsize(f"i{padded}sdd")


class AllocatedMmapedDict(mmap_dict.MmapedDict):
    """``MmapedDict`` whose file's blocks exist before they are mapped."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            with open(filename, "a+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                os.posix_fallocate(handle.fileno(), 0,
                                   size or mmap_dict._INITIAL_MMAP_SIZE)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        capacity = self._capacity
        while self._used + _entry_size(key) > capacity:
            capacity *= 2
        if capacity != self._capacity:  # the parent grows to the same size, then maps
            os.posix_fallocate(self._f.fileno(), 0, capacity)
        super()._init_value(key)


def install() -> None:
    """Make prometheus-client open every worker file as an ``AllocatedMmapedDict``."""
    setattr(values, "MmapedDict", AllocatedMmapedDict)  # noqa: B010 (a class, not a value)


def tolerant(observe: F) -> F:
    """A metric observation that finds the disk full is skipped (and logged), never
    the request's failure: metrics are not worth an answer."""
    @functools.wraps(observe)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return observe(*args, **kwargs)
        except OSError as exc:
            log.warning("a web metric was not recorded (its file could not grow)",
                        error=exc.strerror or str(exc))
            return None
    return guarded  # type: ignore[return-value]
