"""How the API, health documents and token files write a moment: ISO 8601, UTC, whole
seconds, ``Z``. One function, so every surface agrees (dependency-free: the CLI and
the auth module use it without loading the GraphQL stack)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_time(timestamp: float) -> str: ...
@overload
def iso_time(timestamp: None) -> None: ...
@overload
def iso_time(timestamp: float | None) -> str | None: ...
def iso_time(timestamp: float | None) -> str | None:
    """``None`` stays ``None`` (no moment); the overloads tell callers that a moment
    always gives a string."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
