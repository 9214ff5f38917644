"""Calls with a hard deadline: the web tier's asks run on helper threads.

Thespian's ask over TCP can block far beyond its own timeout: in connect, in send, in
finding the supervisor by its global name through a convention leader that does not
answer (a member's API call took 68.8 s with a 5 s timeout during a partition, and held
its web thread all that time). No timeout inside Thespian bounds all of that, so the web
thread does not make the call itself: a helper thread does, and the web thread waits at
most the deadline for it. A helper that is stuck stays stuck, but it is one of a bounded
pool and it holds no web thread; its late reply is dropped (``bridge`` matches replies
by request id).

A call may declare the point after which its effect may have happened (``Call.commit``,
just before a send is handed to the outbox). When the deadline passes before that
point, the call is cancelled and can never get there: the caller may say for certain
that nothing happened. After it, the outcome is unknown.

Helper threads live as long as the process, so each keeps its own Thespian context (a
new one per call would cost a socket, a bind and a name lookup; docs/architecture.md §4)
until an ask on it goes unanswered (``bridge``).
Plain threads, no Flask and no Thespian here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from gateway.core.errors import WagateError

T = TypeVar("T")

QUEUED, RUNNING, CANCELLED, ABANDONED, DONE = "queued", "running", "cancelled", "abandoned", "done"


class DeadlinePassed(WagateError):
    """The call did not end in time. ``committed``: it had passed its commit point
    (its effect may have happened); False: it certainly had not, and never will."""

    def __init__(self, committed: bool) -> None:
        super().__init__("the deadline passed " + ("after" if committed else "before")
                         + " the call's commit point")
        self.committed = committed


class Call(Generic[T]):
    """One call handed to a helper thread; its state changes under one lock, so the
    waiting thread and the helper always agree on whether it committed."""

    def __init__(self, work: Callable[[Call[T]], T]) -> None:
        self.work = work
        self.state = QUEUED
        self.committed = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def commit(self) -> bool:
        """The helper is about to do what cannot be taken back. False when the waiting
        thread has given up already: then it must not (it was told "did not happen")."""
        with self._lock:
            if self.state != RUNNING:
                return False
            self.committed = True
            return True

    def start(self) -> bool:
        """The helper takes the call; False if the caller gave up while it was queued."""
        with self._lock:
            if self.state != QUEUED:
                return False
            self.state = RUNNING
            return True

    def abandon(self) -> bool:
        """The caller gives up; whether the call had committed."""
        with self._lock:
            if self.state == QUEUED:
                self.state = CANCELLED
            elif self.state == RUNNING:
                self.state = ABANDONED
            return self.committed

    def run(self) -> None:
        try:
            self.result = self.work(self)
        except BaseException as exc:  # handed to the waiting thread, raised there
            self.error = exc
        with self._lock:
            if self.state == RUNNING:
                self.state = DONE
        self.done.set()


class CallPool:
    """Up to ``max_threads`` helper threads, started as calls need them and kept.

    When every helper is busy (stuck calls included), a call waits in the queue and, if
    its deadline passes there, is cancelled: so a partition that leaves many calls
    stuck costs at most ``max_threads`` threads, never one per request."""

    def __init__(self, max_threads: int, name: str = "wagate-call") -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1 (got {max_threads})")
        self.max_threads = max_threads
        self.name = name
        self._queue: queue.SimpleQueue[Call[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def run(self, work: Callable[[Call[T]], T], deadline: float) -> T:
        """``work(call)`` on a helper thread; its result, or its exception re-raised.
        ``DeadlinePassed`` when it has not ended within ``deadline`` seconds."""
        call: Call[T] = Call(work)
        self._submit(call)
        if not call.done.wait(max(0.0, deadline)):
            raise DeadlinePassed(call.abandon())
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set when error is None

    def busy(self) -> int:
        """Calls running (stuck ones included) or waiting for a helper."""
        with self._lock:
            return len(self._threads) - self._idle

    def close(self, wait: float = 5.0) -> None:
        """Stop the helpers once their calls end (tests; a process just exits)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(wait)

    def _submit(self, call: Call[Any]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the call pool is closed")
            if self._idle <= 0 and len(self._threads) < self.max_threads:
                thread = threading.Thread(target=self._serve, daemon=True,
                                          name=f"{self.name}-{len(self._threads) + 1}")
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1  # taken by an idle helper, or queued for the next one
        self._queue.put(call)

    def _serve(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            if call.start():
                call.run()
            with self._lock:
                self._idle += 1
