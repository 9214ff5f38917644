"""How the API, health documents and token files write a moment: ISO 8601, UTC, whole
seconds, ``Z``. One function, so every surface agrees (dependency-free: the CLI and
the auth module use it without loading the GraphQL stack)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
