"""What the outbox was told but could not write because the disk was full.

A received message or a receipt reaches the outbox from WhatsApp once. When its write
finds the disk full (SQLite rolls the transaction back whole: neither the row nor its
event is there), dropping it would lose it silently. So the outbox keeps it here, in
arrival order, and writes it again once there is space (every tick tries the oldest
one); while anything waits, what comes next waits behind it, so the order is kept.

Memory is bounded: beyond ``limit`` items the newest are refused and counted as
lost (logged as an error, shown in health and /metrics), never the oldest. Items live
only in the outbox's memory; the session process that sent one keeps it as well
until the outbox has committed it (actors/session/unacked.py) and sends it again
while it is not, so an outbox killed outright loses nothing. A copy of one held
already (the same origin and sequence number) is not held twice.

Plain code (no actors), used by the outbox actor only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

HELD_LIMIT = 10_000  # items; a received text is at most messages.max_incoming_text_chars


class HeldWrites:
    """A FIFO of actor messages whose write waits for disk space."""

    def __init__(self, limit: int = HELD_LIMIT) -> None:
        self.limit = limit
        self.items: deque[Any] = deque()
        self.keys: set[tuple[int, int]] = set()  # (origin, seq) of the items a session keeps
        self.lost = 0  # refused since the outbox started: memory was full too

    def __len__(self) -> int:
        return len(self.items)

    def hold(self, message: Any) -> bool:
        """Keep ``message`` behind the others; False when the limit is reached (it is
        then counted as lost). A copy of one held already counts as held."""
        key = held_key(message)
        if key is not None and key in self.keys:
            return True
        if len(self.items) >= self.limit:
            self.lost += 1
            return False
        self.items.append(message)
        if key is not None:
            self.keys.add(key)
        return True

    def oldest(self) -> Any | None:
        return self.items[0] if self.items else None

    def written(self) -> None:
        """The oldest one is on disk now."""
        key = held_key(self.items.popleft())
        if key is not None:
            self.keys.discard(key)


def held_key(message: Any) -> tuple[int, int] | None:
    """Who keeps ``message`` until it is committed: (origin, seq); None when nobody
    does (no copy of it will come)."""
    origin = getattr(message, "origin", 0)
    return (origin, message.seq) if origin else None
