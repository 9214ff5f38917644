"""Hand events from foreign threads (transport callbacks, worker threads) to an actor.

Thespian calls ``receiveMessage`` only on the actor's main thread. Producers on other
threads put the event on a queue and write one byte to a pipe; the actor watches the
pipe with ``ThespianWatch`` and drains the queue on its own thread. The producer
never blocks (measured p50 32 us; docs/architecture.md §4).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import queue
import signal
from collections.abc import Iterator
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, ThespianWatch

from actors.run_once import RunOnce

log = structlog.get_logger("wagate.actors")


def harden_fatal_signals() -> None:
    """Make a native crash kill the process instead of spinning at 100 % CPU.

    Thespian installs Python handlers for every signal, SIGSEGV included; a fault
    in native code then re-executes the faulting instruction forever. With the
    default action restored, the process dies and the supervisor gets
    ``ChildActorExited`` (docs/architecture.md §4).
    """
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT):
        signal.signal(sig, signal.SIG_DFL)
    faulthandler.enable()


class ThreadBridge:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def post(self, event: Any) -> None:
        """Any thread. Never blocks: a full pipe means a wake-up is already pending."""
        self._queue.put(event)
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")

    def watch(self) -> ThespianWatch:
        return ThespianWatch([self._read_fd])

    def drain(self) -> Iterator[Any]:
        """The actor's main thread only."""
        try:
            while os.read(self._read_fd, 65536):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Rearm:
    """Self-sent after a failing handler: a handler that raises drops the watch."""


class BridgedActor(RunOnce, ActorTypeDispatcher):
    """An actor that also receives events posted from other threads of its process.

    Subclasses handle bridged events with ordinary ``receiveMsg_<Type>`` methods. An
    event whose handler raises is logged and the others drained with it still handled
    (a failed drain is not run again: ``RunOnce``).
    """

    def __init__(self, capabilities: dict | None = None) -> None:
        super().__init__()
        self.bridge: ThreadBridge | None = None
        if (capabilities or {}).get("Thespian Watch Supported"):
            harden_fatal_signals()
            self.bridge = ThreadBridge()

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        try:
            result = super().receiveMessage(message, sender)
        except Exception:
            if self.bridge is not None:
                self.send(self.myAddress, _Rearm())
            raise
        if self.bridge is not None and not isinstance(message, ActorExitRequest):
            return self.bridge.watch()
        return result

    def receiveMsg_WatchMessage(self, message: Any, sender: Any) -> None:
        if self.bridge is None:
            return
        for event in self.bridge.drain():
            try:
                super().receiveMessage(event, self.myAddress)
            except Exception:
                log.exception("a bridged event could not be handled",
                              actor=type(self).__name__, event=type(event).__name__)

    def receiveMsg__Rearm(self, message: _Rearm, sender: Any) -> None:
        pass
