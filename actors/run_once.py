"""No actor handler of the gateway runs twice for one message.

Thespian runs a handler that raised a second time, at once, on a copy of the message
and on the same instance. Whatever the first run changed before it failed is then
changed twice: a message without an idempotency key stored (and sent) twice, an
audit line written twice, a child process started twice. ``RunOnce`` refuses that
second run: it raises at once, so the sender still gets Thespian's ``PoisonMessage``
(the web tier answers ``INTERNAL``), and first gives the actor ``handler_failed`` to
bring what it keeps in memory back in line with what is on disk.

Put it before Thespian's classes among an actor's bases. A handler that dispatches
other messages itself (``BridgedActor`` draining its queue) nests calls: only the
outermost one counts.
"""

from __future__ import annotations

from typing import Any

import structlog
from thespian.actors import ActorExitRequest

from gateway.core.errors import WagateError

log = structlog.get_logger("wagate.actors")


class HandlerNotRerun(WagateError):
    """Raised instead of running a failed handler a second time."""


class RunOnce:
    _rerun_due = False  # the next outermost call is Thespian's re-run of a failed one
    _depth = 0

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if self._depth == 0 and self._rerun_due:
            self._rerun_due = False
            raise HandlerNotRerun(f"the handler of {type(msg).__name__} failed; it is not "
                                  "run a second time")
        self._depth += 1
        try:
            return super().receiveMessage(msg, sender)  # type: ignore[misc]
        except Exception:
            # Thespian re-runs every failed handler but that of an exit request.
            if self._depth == 1 and not isinstance(msg, ActorExitRequest):
                self._rerun_due = True
                # The type only: a message's fields can be personal data.
                log.error("an actor handler failed; it is not run again",
                          actor=type(self).__name__, message=type(msg).__name__,
                          exc_info=True)
                try:
                    self.handler_failed(msg)
                except Exception:
                    log.exception("repairing after a failed handler failed too",
                                  actor=type(self).__name__)
            raise
        finally:
            self._depth -= 1

    def handler_failed(self, msg: Any) -> None:
        """Called once when a handler raised, before Thespian's refused re-run: undo or
        complete what the failed run left half-done. Must not raise."""
