"""The C allocator's arena limit, and the web server's lack of a per-thread cache:
memory that stays flat in processes whose threads come and go.

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
processes it starts with exec (the web server).

The web server also runs without malloc's per-thread cache (``tcache``): each thread
keeps up to seven freed chunks of every size up to 1 KiB for itself, and malloc counts
them as in use. A thread's cache fills slowly, size by size, as it frees blocks of
sizes it had not freed before, so a web worker's memory crept for as long as its
threads kept meeting new sizes, and each thread a burst added started a creep of its
own. In the soak a heap profiler saw a worker at a constant thread count keep nothing
it allocated, while in another run malloc's bytes in use rose 0.4 MiB in 17 minutes;
sixteen threads held 3.2 to 3.6 MiB in their caches in a probe, none with it off. The
web tier's are the only threads started late, as load needs them, and Python's small
objects do not use malloc (pymalloc), so what the cache saved is the arena's lock on
the larger allocations. A cache can only be turned off before a process starts (a
glibc tunable), so the forked actor processes keep theirs: their threads start with
them.

An operator's own ``MALLOC_ARENA_MAX``, or ``glibc.malloc`` tunables in
``GLIBC_TUNABLES``, win: then nothing is changed (other tunables are kept, with ours
added). On a C library other than glibc nothing is done.

Plain module: no actor or Flask import.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Mapping

ARENA_MAX = 2
ARENA_ENV = "MALLOC_ARENA_MAX"
TUNABLES_ENV = "GLIBC_TUNABLES"
NO_THREAD_CACHE = "glibc.malloc.tcache_count=0"
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
    """The variables that give a process started with exec the same arena limit and no
    per-thread cache (none when the operator chose, so theirs is what it inherits; their
    other tunables are kept)."""
    if operator_chose(environ):
        return {}
    tunables = ":".join(t for t in (environ.get(TUNABLES_ENV, ""), NO_THREAD_CACHE) if t)
    return {ARENA_ENV: str(ARENA_MAX), TUNABLES_ENV: tunables}
