"""Pools whose threads all start with them (gateway/core/threads.py). Every pool a test
makes is shut down and its threads are gone when it ends."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from gateway.core.threads import started_executor

WAIT = 10.0  # a generous outer bound: only "it came back" is asserted, never how fast


def named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_every_thread_runs_before_the_first_task() -> None:
    pool = started_executor(4, "test-started")
    try:
        assert len(named("test-started")) == 4  # a plain ThreadPoolExecutor has none
        assert pool.submit(lambda: "works").result(WAIT) == "works"
    finally:
        pool.shutdown(wait=True)
    assert not named("test-started")


@pytest.mark.parametrize("workers", [0, -3])
def test_a_pool_of_no_threads_is_refused(workers: int) -> None:
    with pytest.raises(ValueError):
        started_executor(workers, "test-none")
    assert not named("test-none")


def test_a_thread_that_cannot_start_leaves_no_pool_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS refuses the third thread: the error is raised, and the two started are
    let go at once and end (before, they were held at the barrier for its whole wait)."""
    start = threading.Thread.start
    started: list[str] = []

    def refuse_the_third(self: threading.Thread, *args: Any) -> None:
        if self.name.startswith("test-fail"):
            started.append(self.name)
            if len(started) == 3:
                raise RuntimeError("can't start new thread")
        start(self, *args)

    monkeypatch.setattr(threading.Thread, "start", refuse_the_third)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        started_executor(4, "test-fail", timeout=WAIT * 6)
    monkeypatch.undo()
    deadline = time.monotonic() + WAIT
    while named("test-fail") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not named("test-fail")
