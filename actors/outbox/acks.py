"""What the outbox tells each session process it has committed (actors/session/unacked.py).

A received message or receipt carries its session process's ``origin`` and a sequence
number; once its write is committed (or it turned out to need none: a duplicate),
its number is noted here, and the outbox sends each session process one
``ReceivedCommitted`` per tick with everything noted since. One actor message per
session and tick at most, never one per receipt: receipts come with every send.

Plain code (no actors), used by the outbox actor only.
"""

from __future__ import annotations


class CommitAcks:
    """Sequence numbers committed since the last flush, per session."""

    def __init__(self) -> None:
        self.due: dict[str, tuple[int, list[int]]] = {}  # session -> (origin, seqs)

    def __bool__(self) -> bool:
        return bool(self.due)

    def committed(self, session: str, origin: int, seq: int) -> None:
        """The write of ``seq`` from ``origin`` is on disk. A message no process keeps
        (``origin`` 0) needs no answer; a new process of the session replaces the
        numbers of the old one, which no one waits for any more."""
        if origin == 0:
            return
        found = self.due.get(session)
        if found is None or found[0] != origin:
            self.due[session] = (origin, [seq])
        else:
            found[1].append(seq)

    def take(self) -> list[tuple[str, int, tuple[int, ...]]]:
        """Everything noted, as (session, origin, seqs), and forget it."""
        out = [(session, origin, tuple(seqs)) for session, (origin, seqs) in self.due.items()]
        self.due.clear()
        return out
