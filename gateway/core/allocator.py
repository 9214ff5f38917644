"""The C allocator's arena limit: memory that stays flat in processes whose threads
come and go.

glibc's malloc gives a new thread an arena of its own until there are eight per core,
and an arena keeps the memory it once held. The gateway's processes start threads
all the time (a send batch's worker, a database question with a deadline, the web
tier's call helpers), so each process kept growing, arena by arena, for hours: in the
soak (``tests/perf/soak.py``), without faults, a session process grew about 10 MiB
an hour of anonymous memory while what its heap held grew under 3. Two arenas took
that drift away (issue 16). Python's own small objects do not use malloc's arenas
(pymalloc), so the cost is only some lock contention on large allocations, which our
processes make few of.

The limit is set with ``mallopt`` in the launcher before it forks the actor
processes (they inherit the setting), and passed as ``MALLOC_ARENA_MAX`` to the
processes it starts with exec (the web server). An operator's own
``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES`` wins: then nothing is changed. On a C
library other than glibc nothing is done.

Plain module: no actor or Flask import.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Mapping

ARENA_MAX = 2
ARENA_ENV = "MALLOC_ARENA_MAX"
TUNABLES_ENV = "GLIBC_TUNABLES"
_M_ARENA_MAX = -8  # glibc's malloc.h


def operator_chose(environ: Mapping[str, str]) -> bool:
    """Whether the operator set the allocator up themselves."""
    return ARENA_ENV in environ or "glibc.malloc" in environ.get(TUNABLES_ENV, "")


def limit_arenas(environ: Mapping[str, str]) -> bool:
    """Limit this process (and the processes it forks from now on) to ``ARENA_MAX``
    malloc arenas; False when nothing was changed (not glibc, or the operator chose)."""
    if operator_chose(environ) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX))
    except (OSError, AttributeError):
        return False


def allocator_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variable that gives a process started with exec the same limit (none when
    the operator chose, so theirs is what it inherits)."""
    return {} if operator_chose(environ) else {ARENA_ENV: str(ARENA_MAX)}
