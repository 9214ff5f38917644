"""Thread pools whose threads all run from the start.

``ThreadPoolExecutor`` starts a thread only when a task finds none idle, so a pool
reaches its size at the first burst, and bursts come with faults: a restarted outbox
offers its whole backlog to the sessions at once. A thread started then costs its
process the native memory of its stack and frames (tens to hundreds of KiB) for good,
long after the process warmed up:
in the soak (``tests/perf/soak.py``, issue 16) a session's successor gained a thread
and 280 KiB three seconds after an outbox was killed, 23 minutes into its life. A pool
that starts every thread with itself has its whole cost at start-up, where the
operator sees it, and the same number of threads for the rest of its life.

Used where a pool is small and every thread does light work (a session's pools, the
webhook workers). Not in the web tier: started whole there, its workers' memory crept
for half an hour in the soak, worse than the few threads a burst adds; its pools take
work in turn, so probably every thread, not only the few a steady load needs, grew
its stack and Thespian context to their largest (docs/architecture.md).

Relies on ``ThreadPoolExecutor`` reusing an idle thread before it starts another
(Python 3.8 and later): once every thread has run, a submit starts none.

Plain module: no actor or Flask import.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, wait

START_SECONDS = 10.0  # how long starting a pool may wait for its threads to meet


def started_executor(workers: int, prefix: str,
                     timeout: float = START_SECONDS) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, every one of them already running.

    Each start holds its thread at a barrier until all have started, so no task finds
    a thread idle and each submit starts a new one. When a thread cannot be started
    (the process is out of threads or memory), the barrier is broken so the ones
    already started are not held for ``timeout``, the pool is shut down, and the error
    is raised: no half-started pool is left behind."""
    executor = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    barrier = threading.Barrier(workers)

    def meet() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout)

    try:
        wait([executor.submit(meet) for _ in range(workers)], timeout * 2)
    except BaseException:
        barrier.abort()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    return executor
