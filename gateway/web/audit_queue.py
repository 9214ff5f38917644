"""Audit entries leave a web process in batches, on one sender thread.

Every mutation writes an audit line. Told one at a time, each entry cost its request a
helper-thread hand-off and a Thespian ``tell`` (a TCP send and its acknowledgement),
and the audit actor one received message: about a millisecond of CPU per send across
the processes, a tenth of the whole path (issue #17's profile). Here a request only
appends its entry and returns; one thread per process sends what gathered as a single
batch. After the first entry of a batch it waits ``linger`` seconds (``audit.batch_seconds``)
for more: without it, at a hundred requests a second each entry found the thread idle
and left alone, and nothing was saved.

Bounded: at most ``max_entries`` wait (a writer that does not answer must not grow the
web process); beyond that new entries are counted as lost and logged. What waits when
the process ends normally is sent first, within a deadline (``close``). A killed web
process loses what had not left yet, as a ``tell`` in flight was lost before.

Plain threads, no Flask and no Thespian here: ``send`` is the caller's.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("wagate.audit")

T = TypeVar("T")

MAX_ENTRIES = 10_000  # waiting, per process
MAX_BATCH = 256  # entries per message: one message stays small however long the queue


class AuditQueue(Generic[T]):
    """A FIFO of entries and the one thread that hands them to ``send`` in batches.

    ``send`` gets a non-empty sequence, in order; it must not raise for a lost batch
    (it logs), but if it does, the batch is counted as lost and the thread goes on."""

    def __init__(self, send: Callable[[Sequence[T]], None], linger: float = 0.0,
                 max_entries: int = MAX_ENTRIES, max_batch: int = MAX_BATCH) -> None:
        if max_entries < 1 or max_batch < 1:
            raise ValueError("max_entries and max_batch must be at least 1")
        if not 0 <= linger < float("inf"):
            raise ValueError("linger must be a finite number of seconds, 0 or more")
        self._send = send
        self._linger = linger
        self._hurry = False  # close(): what waits leaves now, without lingering
        self._max_entries = max_entries
        self._max_batch = max_batch
        self._entries: deque[T] = deque()
        self._cond = threading.Condition()
        self._sending = 0  # entries taken by the thread and not yet handed over
        self._closed = False
        self.lost = 0  # entries refused because the queue was full, or whose send raised
        self._thread = threading.Thread(target=self._run, name="wagate-audit", daemon=True)
        self._thread.start()

    def put(self, entry: T) -> bool:
        """Queue one entry; False (counted and logged) when the queue is full or closed."""
        with self._cond:
            if self._closed or len(self._entries) >= self._max_entries:
                self.lost += 1
                lost = self.lost
            else:
                self._entries.append(entry)
                self._cond.notify()
                return True
        if lost == 1 or lost % 1000 == 0:
            log.error("audit entries lost: the audit writer is not keeping up",
                      lost_total=lost, waiting_max=self._max_entries)
        return False

    def drain(self, timeout: float) -> bool:
        """Wait until every queued entry was handed to ``send``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._entries or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float) -> bool:
        """Send what waits (within ``timeout``), then stop the thread."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
        drained = self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout))
        return drained

    def waiting(self) -> int:
        with self._cond:
            return len(self._entries) + self._sending

    def _gather(self) -> None:
        """Under the lock: wait up to ``linger`` for a full batch (or ``close``)."""
        deadline = time.monotonic() + self._linger
        while len(self._entries) < self._max_batch and not self._hurry:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._entries and not self._closed:
                    self._cond.wait()
                if not self._entries:
                    return  # closed and empty
                self._gather()
                count = min(len(self._entries), self._max_batch)
                batch = [self._entries.popleft() for _ in range(count)]
                self._sending = count
            try:
                self._send(batch)
            except Exception:
                log.exception("audit entries could not be sent", count=len(batch))
                with self._cond:
                    self.lost += len(batch)
            finally:
                with self._cond:
                    self._sending = 0
                    self._cond.notify_all()
