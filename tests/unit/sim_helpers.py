"""Helpers for tests that drive the simulator transport: wait on conditions, never sleep.

Events arrive on the transport's own thread, so tests collect them in an ``EventLog``
and block on a condition with a deadline instead of sleeping and hoping.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from actors.transport.base import Connected, TransportEvent
from gateway.core.config import QrConfig, SimulatorConfig

E = TypeVar("E")

DEFAULT_TIMEOUT = 5.0


def wait_for(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail at the deadline.

    For state that no one signals (files, server state, threads); events use ``EventLog``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class EventLog:
    """A thread-safe event sink: pass it as ``on_event`` and wait on what it received."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[TransportEvent] = []

    def __call__(self, event: TransportEvent) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    @property
    def events(self) -> list[TransportEvent]:
        with self._cond:
            return list(self._events)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    def wait(self, predicate: Callable[[list[TransportEvent]], bool],
             timeout: float = DEFAULT_TIMEOUT) -> list[TransportEvent]:
        """Block until ``predicate(events)`` holds; returns the events seen so far."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._events), timeout):
                raise AssertionError(f"timed out after {timeout} s; events: {self._events}")
            return list(self._events)

    def wait_count(self, kind: type[E], count: int = 1,
                   timeout: float = DEFAULT_TIMEOUT) -> list[E]:
        """Block until ``count`` events of ``kind`` arrived; returns all of that kind."""
        self.wait(lambda events: sum(isinstance(e, kind) for e in events) >= count, timeout)
        return self.of(kind)

    def last(self) -> TransportEvent:
        return self.events[-1]


def wait_until_parked(thread: threading.Thread | None,
                      timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until a simulated connection's thread sleeps between two looks at the server
    (``_serve`` waiting on its stop flag or its bells), e.g. after the look that
    follows ``Connected``: a fault injected from then on is one its poller has not seen.
    """
    def parked() -> bool:
        frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
        while frame is not None and frame.f_back is not None:
            if frame.f_back.f_code.co_name == "_serve":
                return frame.f_code.co_name == "wait"
            frame = frame.f_back
        return False

    wait_for(parked, timeout, what="the connection to sleep between looks")


FAST_SIM = SimulatorConfig(poll_interval_seconds=0.01, send_delay_seconds=0.0)


def send_from_process(data_dir: str, session: str, count: int, tag: str,
                      qr: QrConfig, sim: SimulatorConfig) -> None:
    """Child-process body: resume ``session`` (already paired) and send ``count`` messages."""
    from actors.transport.simulator import SimulatorTransport

    transport = SimulatorTransport(session, Path(data_dir), qr, sim)
    log = EventLog()
    try:
        transport.connect(log)
        log.wait_count(Connected, timeout=20.0)
        for index in range(count):
            transport.send_text("4915112345678", f"{tag}-{index}")
    finally:
        transport.close()


def send_batches_from_process(data_dir: str, session: str, batches: int, size: int,
                              tag: str, qr: QrConfig, sim: SimulatorConfig) -> None:
    """Child-process body: resume ``session`` (already paired) and send ``batches``
    batches of ``size`` texts with ``send_texts`` (``batches`` < 0: until killed);
    text ``<tag>-<batch>-<index>``."""
    from actors.transport.simulator import SimulatorTransport

    transport = SimulatorTransport(session, Path(data_dir), qr, sim)
    log = EventLog()
    try:
        transport.connect(log)
        log.wait_count(Connected, timeout=20.0)
        batch = 0
        while batch != batches:
            outcomes = transport.send_texts(
                [("4915112345678", f"{tag}-{batch}-{index}") for index in range(size)])
            if len(outcomes) != size or not all(o.message_id for o in outcomes
                                                if not isinstance(o, Exception)):
                raise AssertionError(f"batch {batch} answered {outcomes}")
            batch += 1
    finally:
        transport.close()
