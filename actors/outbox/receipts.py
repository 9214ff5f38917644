"""Receipts that arrive before the message they confirm has its WhatsApp id on record.

The engine chooses a message's WhatsApp id and tells it only with the server's ack,
which reaches the outbox as the send's result. The recipient's device can confirm the
message before that result arrives: whatsmeow dispatches the receipt on its own
goroutine while the send call is still returning, and the session forwards events and
results separately. A receipt whose id no record carries yet is held here, briefly,
and applied the moment the result records the id.

Held receipts are bounded in number and in age: anyone on WhatsApp can send a receipt
naming any id, so what is held must never grow with what strangers send.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_HELD = 10_000  # receipts held at once, all sessions together
HOLD_SECONDS = 120.0  # longer than any send takes to return (whatsmeow gives up at 75 s)
_PER_MESSAGE = 4  # delivered and read, from a few of the recipient's devices


@dataclass(frozen=True, slots=True)
class HeldReceipt:
    kind: str  # "delivered" | "read"
    phone: str  # who sent it (digits; "" when a LID could not be mapped)
    at: float  # when it arrived (unix time): what it ages by
    sent_at: float = 0.0  # the receipt's own time (unix; 0: unknown)


class EarlyReceipts:
    """Receipts by (session, WhatsApp id), oldest first; forgets the oldest beyond
    ``max_held`` and any older than ``max_age`` seconds."""

    def __init__(self, max_held: int = MAX_HELD, max_age: float = HOLD_SECONDS) -> None:
        if max_held < 1 or not max_age > 0:
            raise ValueError("max_held must be at least 1 and max_age greater than 0")
        self.max_held = max_held
        self.max_age = max_age
        self._held: OrderedDict[tuple[str, str], list[HeldReceipt]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def hold(self, session: str, wa_id: str, kind: str, phone: str, now: float,
             sent_at: float = 0.0) -> None:
        """Keep a receipt until its message's result names ``wa_id`` (or it ages out)."""
        self._expire(now)
        key = (session, wa_id)
        held = self._held.setdefault(key, [])
        if len(held) >= _PER_MESSAGE:
            return  # enough to decide the message's state; more is only noise
        held.append(HeldReceipt(kind, phone, now, sent_at))
        self._count += 1
        while self._count > self.max_held:
            _, dropped = self._held.popitem(last=False)
            self._count -= len(dropped)

    def take(self, session: str, wa_id: str, now: float) -> list[HeldReceipt]:
        """The receipts held for ``wa_id`` of ``session`` (removed), oldest first."""
        self._expire(now)
        held = self._held.pop((session, wa_id), [])
        self._count -= len(held)
        return held

    def _expire(self, now: float) -> None:
        while self._held:
            key, held = next(iter(self._held.items()))
            if now - held[0].at < self.max_age:
                return
            del self._held[key]
            self._count -= len(held)


def receipt_time(sent_at: float, record_time: float, now: float) -> float:
    """The time a receipt's state change is recorded at: the receipt's own time (the
    recipient's device wrote it), kept between the message's last change and ``now``.
    A receipt cannot predate the send it confirms, nor come from the future; a device
    clock that says so is wrong, and 0 (or NaN) means the engine did not say."""
    if not sent_at > 0 or sent_at != sent_at:
        return now
    return min(max(sent_at, record_time), now)
