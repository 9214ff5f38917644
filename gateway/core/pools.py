"""Thread pools started at their working size, so that a process's memory is flat.

A ``ThreadPoolExecutor`` starts a thread only when a task finds none idle, and keeps
every thread it started. A pool therefore grows in steps whenever tasks first overlap
more than before: a session's send workers after a reconnect hands them a backlog, a
web worker's request threads when requests wait on an actor being restarted. Each
step (a thread's stack, its first allocations, and for the web tier an actor-system
socket) happens hours into a run and reads as memory creep (issue 16's soak measured
it). Starting the threads with the process moves the step into its start-up.

Plain module: no actor or Flask import.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Executor

START_SECONDS = 10.0  # at most, for a pool's threads to start (a loaded machine)


def start_threads(executor: Executor, count: int, wait: float = START_SECONDS) -> None:
    """Make ``executor`` (a ``ThreadPoolExecutor`` of at least ``count`` workers) start
    ``count`` threads now: ``count`` tasks that each wait until all of them run, so no
    thread can take two. If they do not all start within ``wait`` seconds the pool is
    left to grow as before; nothing else changes."""
    if count < 1:
        return
    met = threading.Barrier(count + 1)
    for _ in range(count):
        executor.submit(_meet, met, wait)
    _meet(met, wait)


def _meet(barrier: threading.Barrier, wait: float) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(wait)
