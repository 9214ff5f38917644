"""Received messages and receipts a session keeps until the outbox has committed them.

WhatsApp hands a reply or a receipt over once (the engine has already acknowledged
it). The outbox may hold one in memory while the disk is full (actors/outbox/held.py),
and an outbox, or the supervisor keeping them while no outbox runs, may be killed
outright: so the session process keeps each one here, under a sequence number of its
own, until the outbox says that its write is committed (``ReceivedCommitted``, sent
per tick for everything committed since, never per message). What is not
acknowledged is sent again, oldest first, when an outbox comes back and every
``delivery.received_resend_seconds``; the outbox's writes are idempotent (an incoming
message once per WhatsApp id, a receipt only raises a state), so a second copy is a
no-op.

A session process killed outright still loses what it kept: nothing here is on disk.

Plain code (no actors), used by the session actor only.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any


def new_origin() -> int:
    """This process's mark on its sequence numbers: an acknowledgement meant for an
    earlier process of the same session must never drop what this one keeps."""
    return random.getrandbits(62) + 1  # never 0, which means "not kept"


class Unacknowledged:
    """Messages in sequence order, each with the monotonic time it was last sent."""

    def __init__(self, origin: int, limit: int, resend_after: float) -> None:
        self.origin = origin
        self.limit = limit
        self.resend_after = resend_after
        self.items: OrderedDict[int, tuple[float, Any]] = OrderedDict()
        self.last_seq = 0
        self.unkept = 0  # dropped unacknowledged at the limit, since the process started

    def __len__(self) -> int:
        return len(self.items)

    def next_seq(self) -> int:
        """The sequence number for the next message (numbers are never reused)."""
        self.last_seq += 1
        return self.last_seq

    def keep(self, seq: int, message: Any, now: float) -> Any | None:
        """Keep ``message`` (just sent) under ``seq``; at the limit, the oldest is no
        longer kept and is returned (it was sent, only a resend is given up)."""
        dropped = None
        if len(self.items) >= self.limit:
            _, (_, dropped) = self.items.popitem(last=False)
            self.unkept += 1
        self.items[seq] = (now, message)
        return dropped

    def acknowledged(self, origin: int, seqs: Iterable[int]) -> int:
        """The outbox committed ``seqs`` of ``origin``: forget them. Returns how many
        were kept (an acknowledgement for another process, or repeated, counts 0)."""
        if origin != self.origin:
            return 0
        return sum(self.items.pop(seq, None) is not None for seq in seqs)

    def due(self, now: float) -> list[Any]:
        """The messages sent at least ``resend_after`` ago, oldest first, marked as
        sent now."""
        found = [seq for seq, (sent, _) in self.items.items() if now - sent >= self.resend_after]
        return self._resent(found, now)

    def all(self, now: float) -> list[Any]:
        """Every message kept, oldest first, marked as sent now (a new outbox)."""
        return self._resent(list(self.items), now)

    def _resent(self, seqs: list[int], now: float) -> list[Any]:
        out = []
        for seq in seqs:
            _, message = self.items[seq]
            self.items[seq] = (now, message)
            out.append(message)
        return out
