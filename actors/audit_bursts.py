"""Bursts of identical refused requests, recorded as one audit entry with a count.

Every refused request must be on record, but a client hammering the API without a
token must not be able to fill the disk through the audit log (it is append-only and
never pruned). So the first refusal of a kind (same address, code, path and token
name) is written at once, and repeats within ``window`` seconds are counted and
written as one entry with ``repeated`` (how many more), ``first`` and ``last``. The
number of kinds tracked at once is bounded; beyond it, refusals are counted under one
catch-all kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_KINDS = 1000
KEY_FIELDS = ("ip", "code", "path", "actor")
OVERFLOW = ("*", "*", "*", "*")


@dataclass(slots=True)
class _Burst:
    fields: dict[str, Any]
    first: float
    last: float
    repeated: int = 0


class BurstCounter:
    def __init__(self, window: float, max_kinds: int = MAX_KINDS) -> None:
        self.window = window
        self.max_kinds = max_kinds
        self._bursts: dict[tuple[Any, ...], _Burst] = {}

    def observe(self, fields: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        """The fields to write now (the first of a burst), or None (counted for later)."""
        key = tuple(fields.get(name) for name in KEY_FIELDS)
        burst = self._bursts.get(key)
        if burst is None and len(self._bursts) >= self.max_kinds:
            key, fields = OVERFLOW, {"ip": "*", "code": "*", "path": "*", "overflow": True}
            burst = self._bursts.get(key)
        if burst is None:
            self._bursts[key] = _Burst(dict(fields), now, now)
            return dict(fields)
        burst.repeated += 1
        burst.last = now
        return None

    def due(self, now: float) -> list[dict[str, Any]]:
        """Summaries of the bursts whose window has passed (those with repeats)."""
        ended = [key for key, b in self._bursts.items() if now - b.first >= self.window]
        return [entry for key in ended if (entry := self._summary(self._bursts.pop(key)))]

    def flush(self) -> list[dict[str, Any]]:
        """Every open burst's summary (at exit)."""
        bursts, self._bursts = self._bursts, {}
        return [entry for b in bursts.values() if (entry := self._summary(b))]

    def __len__(self) -> int:
        return len(self._bursts)

    @staticmethod
    def _summary(burst: _Burst) -> dict[str, Any] | None:
        if not burst.repeated:
            return None
        return {**burst.fields, "repeated": burst.repeated, "first": burst.first,
                "last": burst.last}
