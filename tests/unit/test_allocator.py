"""The malloc arena limit (gateway/core/allocator.py), checked in real child processes
by counting the thread arenas glibc made."""

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


def thread_heaps(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in (ARENA_ENV, "GLIBC_TUNABLES")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


@glibc_only
def test_the_limit_keeps_threads_to_its_arenas() -> None:
    floor = thread_heaps("none")  # the same work without the limit, in the same run
    assert floor > ARENA_MAX, f"without the limit the threads made only {floor} heaps"
    assert thread_heaps("limit") <= ARENA_MAX - 1  # the main arena is not a thread heap


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
