"""The malloc arena limit and the web server's lack of a per-thread malloc cache
(gateway/core/allocator.py), checked in real child processes: by counting the thread
arenas glibc made, and what malloc counts as in use while threads live."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core.allocator import (
    ARENA_ENV,
    ARENA_MAX,
    NO_THREAD_CACHE,
    TUNABLES_ENV,
    allocator_environment,
    limit_arenas,
)

ROOT = Path(__file__).resolve().parents[2]

# Eight threads each make one allocation too large for pymalloc, all at once; then the
# process counts glibc's thread heaps (each starts on a 64 MiB boundary).
CHILD = """
import sys, threading
from gateway.core.allocator import limit_arenas
if sys.argv[1] == "limit":
    assert limit_arenas({})
barrier, keep = threading.Barrier(8), []
def work():
    barrier.wait()
    keep.append(bytearray(200_000))
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
heaps = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    start = int(fields[0].split("-")[0], 16)
    if start % (64 << 20) == 0 and len(fields) == 5 and fields[1].startswith("rw"):
        heaps += 1
print(heaps)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="the arena limit is glibc's; elsewhere nothing is set")


def run_child(code: str, *args: str, environ: dict[str, str] | None = None) -> int:
    """``code`` in a fresh interpreter without the allocator variables of this one (plus
    ``environ``); the number it prints."""
    env = {k: v for k, v in os.environ.items() if k not in (ARENA_ENV, TUNABLES_ENV)}
    env = {**env, "PYTHONPATH": str(ROOT), **(environ or {})}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


def thread_heaps(mode: str) -> int:
    return run_child(CHILD, mode)


@glibc_only
def test_the_limit_keeps_threads_to_its_arenas() -> None:
    floor = thread_heaps("none")  # the same work without the limit, in the same run
    assert floor > ARENA_MAX, f"without the limit the threads made only {floor} heaps"
    assert thread_heaps("limit") <= ARENA_MAX - 1  # the main arena is not a thread heap


# Sixteen threads each free eight blocks of every size from 520 bytes (above pymalloc's
# limit, so malloc's) to 1 KiB, and stay alive; the process prints how much more malloc
# counts as in use than before they started: blocks a thread's cache still holds.
CACHED = """
import ctypes, threading
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
done, leave = threading.Barrier(17), threading.Event()
def work():
    for size in range(520, 1024, 16):
        blocks = [bytes(size) for _ in range(8)]
        del blocks
    done.wait()
    leave.wait()
threads = [threading.Thread(target=work) for _ in range(16)]
before = mallinfo2().uordblks
for t in threads: t.start()
done.wait()
print(mallinfo2().uordblks - before)
leave.set()
for t in threads: t.join()
"""


def held_by_thread_caches(environ: dict[str, str]) -> int:
    return run_child(CACHED, environ=environ)


@glibc_only
def test_the_web_servers_threads_keep_no_freed_blocks_of_their_own() -> None:
    """Regression (issue 16's soak): a web worker's threads each filled malloc's
    per-thread cache over hours; the web server's environment turns it off."""
    floor = held_by_thread_caches({})  # glibc's default, in the same run
    assert floor > 1 << 20, f"with the cache on the threads held only {floor} bytes"
    held = held_by_thread_caches(allocator_environment({}))
    assert held < floor // 8, f"threads still hold {held} bytes (with the cache on: {floor})"


def test_the_operators_own_setting_wins() -> None:
    assert limit_arenas({ARENA_ENV: "4"}) is False
    assert limit_arenas({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is False
    assert allocator_environment({ARENA_ENV: "4"}) == {}
    assert allocator_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == {}
    assert allocator_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}) == {}
    # Their other tunables are kept, with ours added.
    assert allocator_environment({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}) == {
        ARENA_ENV: "2", "GLIBC_TUNABLES": "glibc.rtld.nns=2:" + NO_THREAD_CACHE}
    assert allocator_environment({}) == {ARENA_ENV: str(ARENA_MAX),
                                         "GLIBC_TUNABLES": NO_THREAD_CACHE}
    assert allocator_environment({"GLIBC_TUNABLES": ""})["GLIBC_TUNABLES"] == NO_THREAD_CACHE
