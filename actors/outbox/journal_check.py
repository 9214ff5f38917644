"""The outbox's questions to the sent journal (multi-host mode with leases, issue 16).

Before the outbox treats a message in flight in an ended session process as uncertain
(and sends it again), it asks the journal whether WhatsApp already took it: the
session process records every accepted send there before it reports the result
(``actors.session.journaling``). The question runs on a thread of its own and the
outbox's thread waits at most ``QUESTION_SECONDS`` (``actors.leases.bounded``): a
database that does not answer in time makes the outbox behave as without a journal
(uncertain, sent again by ``delivery.on_uncertain``), and says so in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from actors.leases.bounded import BoundedQuestion
    from actors.leases.journal import Sent, SentJournal

log = structlog.get_logger("wagate.outbox")

QUESTION_SECONDS = 1.0  # the outbox's thread waits at most this for the journal


class JournalCheck:
    """One journal connection of the outbox, asked with a bound."""

    def __init__(self, database_url: str, retention_hours: float) -> None:
        from actors.leases.bounded import BoundedQuestion
        from actors.leases.journal import SentJournal

        self._journal: SentJournal = SentJournal(database_url, QUESTION_SECONDS,
                                                 retention_hours)
        self._question: BoundedQuestion[Any] = BoundedQuestion(QUESTION_SECONDS,
                                                               "sent-journal")

    def found(self, message_ids: Sequence[str]) -> dict[str, Sent]:
        """The journaled sends among ``message_ids``; none when the journal does not
        answer in time (logged: those messages are treated as before, uncertain)."""
        if not message_ids:
            return {}
        ids = list(message_ids)
        answer = self._question.ask(lambda: self._journal.find(ids))
        if isinstance(answer, str):
            log.warning("the sent journal did not answer: in-flight messages of an ended "
                        "session process are treated as uncertain", count=len(ids),
                        why=answer)
            return {}
        found: dict[str, Sent] = answer
        return found

    def prune(self) -> None:
        """Delete rows past the retention (bounded; a failure waits for the next time)."""
        answer = self._question.ask(self._journal.prune)
        if isinstance(answer, str):
            log.info("the sent journal was not pruned this time", why=answer)
        elif answer:
            log.info("pruned the sent journal", count=answer)

    def close(self) -> None:
        if not self._question.hanging:
            self._journal.close()
