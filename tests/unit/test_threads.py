"""Pools whose threads all start with them (gateway/core/threads.py): a burst of tasks
later starts no thread. Every pool a test makes is shut down and its threads joined."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from gateway.core.threads import start_threads, started_executor

WAIT = 10.0  # a generous outer bound: only "it came back" is asserted, never how fast


def named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_every_thread_runs_before_the_first_task_and_a_burst_starts_none() -> None:
    pool = started_executor(4, "test-started")
    try:
        started = named("test-started")
        assert len(started) == 4  # a plain ThreadPoolExecutor has none before a task
        release = threading.Event()
        burst = [pool.submit(release.wait, WAIT) for _ in range(8)]
        release.set()
        assert [f.result(WAIT) for f in burst] == [True] * 8
        assert named("test-started") == started
    finally:
        pool.shutdown(wait=True)
    assert not named("test-started")


def test_a_pool_smaller_than_asked_is_let_go_at_the_timeout_with_what_it_has() -> None:
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-small")
    try:
        start_threads(pool, 3, timeout=0.2)  # three never meet in a pool of two
        assert len(named("test-small")) == 2
        assert pool.submit(lambda: "still works").result(WAIT) == "still works"
    finally:
        pool.shutdown(wait=True)


def test_no_workers_starts_nothing() -> None:
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-none")
    try:
        start_threads(pool, 0)
        start_threads(pool, -3)
        assert not named("test-none")
    finally:
        pool.shutdown(wait=True)
