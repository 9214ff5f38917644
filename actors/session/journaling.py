"""A session process's side of the sent journal (multi-host mode with leases).

Right after WhatsApp took a send, and before its result leaves for the outbox, the send
worker records it in the lease database (``actors.leases.journal``) under the session's
lease epoch, one statement per send batch. A process stopped before its result reached
the outbox (its host's agent fenced it, SIGTERM, or the supervisor stopped it) has
then left a trace the outbox finds instead of sending the message again (issue 16).

The actor counts the sends it handed to its workers (``started``/``finished``) so that
its exit can wait, briefly, for those still running to be journaled (``drain``). A
SIGKILL gives no such chance: what WhatsApp took after the last journal write is the
one window left (README: Deployment on several hosts).

No actor import here; the journal and the lease epoch come in from the actor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from actors.messages import DeliveryResult

if TYPE_CHECKING:  # the session process loads it with its lease keeper
    from actors.leases.journal import Sent, SentJournal

log = structlog.get_logger("wagate.session")


class SendJournaling:
    """Journals a worker's accepted sends and counts the sends still running."""

    def __init__(self, session: str, journal: SentJournal, epoch: Callable[[], int | None],
                 entry: Callable[[str, str, float], Sent]) -> None:
        self.session = session
        self._journal = journal
        self._epoch = epoch  # the lease epoch held now (None: none)
        self._entry = entry  # makes one journal row (``actors.leases.journal.Sent``)
        self._cond = threading.Condition()
        self._running = 0

    def started(self) -> None:
        """The actor thread handed a send (or a batch) to a worker."""
        with self._cond:
            self._running += 1

    def finished(self) -> None:
        """That worker journaled what it could and posted its results."""
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def record(self, results: Sequence[DeliveryResult]) -> None:
        """Worker thread: journal the sends WhatsApp took, in one statement. A refusal
        (the epoch is stale) or an unanswering database is logged, never raised: the
        result still goes to the outbox, which then needs no journal."""
        sent = [self._entry(r.message_id, r.wa_message_id, r.timestamp or time.time())
                for r in results if r.ok and r.wa_message_id]
        if not sent:
            return
        epoch = self._epoch()
        if epoch is None:
            log.warning("sends not journaled: the session holds no lease",
                        count=len(sent))
            return
        try:
            self._journal.record(self.session, epoch, sent)
        except Exception as exc:  # StaleEpoch, LeaseStoreUnavailable: the window stays
            log.warning("sends not journaled; should this process end before their "
                        "results reach the outbox, they are sent again as uncertain",
                        count=len(sent), error=str(exc).splitlines()[0][:200])

    def drain(self, timeout_seconds: float) -> bool:
        """Wait at most ``timeout_seconds`` for the running sends to finish (journaled);
        whether none is left."""
        deadline = time.monotonic() + timeout_seconds
        with self._cond:
            if self._running > 0:
                log.info("the exit waits for running sends to be journaled",
                         count=self._running, at_most=timeout_seconds)
            while self._running > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("exiting with sends still running: not journaled",
                                count=self._running)
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self._journal.close()
