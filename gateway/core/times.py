"""How the gateway writes a moment: ISO 8601, UTC, ``Z``. One function, so every
surface agrees (dependency-free: the CLI, the auth module and the audit log use it
without loading the GraphQL stack).

Two precisions, one format. The API, the health documents and the token file say
whole seconds (the schema documents it; a client compares them as text). The audit
log says microseconds, as it always has: its lines are covered by the chain's hashes
as written, so the precision of existing lines can never change, and a writer that
switched would only make one log hold two formats and lose the order of the events of
one second when read next to other logs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, overload

Precision = Literal["seconds", "microseconds"]


@overload
def iso_time(timestamp: float, precision: Precision = "seconds") -> str: ...


@overload
def iso_time(timestamp: None, precision: Precision = "seconds") -> None: ...


@overload
def iso_time(timestamp: float | None, precision: Precision = "seconds") -> str | None: ...


def iso_time(timestamp: float | None, precision: Precision = "seconds") -> str | None:
    """``2026-12-02T15:00:00Z`` (or ``...00.123456Z``); None stays None (a moment that
    has not happened, such as a session never connected)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(_in_range(timestamp), UTC).isoformat(timespec=precision).replace(
        "+00:00", "Z")


_EARLIEST = -62_135_596_800.0  # 0001-01-01T00:00:00Z
_LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z


def _in_range(timestamp: float) -> float:
    """``timestamp`` held to what a datetime can show. A moment outside it (a stored
    time from a peer's clock, or NaN) would raise and fail a whole page of records for
    one row; the nearest moment that can be written is shown instead (NaN as 1970)."""
    if timestamp != timestamp:  # NaN
        return 0.0
    return min(max(float(timestamp), _EARLIEST), _LATEST)
