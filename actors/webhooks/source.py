"""Where the events to deliver come from.

The delivery loop needs two things of the event log: the events after a cursor, in
order, and the newest event's seq. ``EventSource`` is those two methods, so the loop
works over the durable event log (``actors/outbox/events.py``, rows of seq, id, type,
session, created_at, data) and over a test's own table alike. ``SqliteEventSource``
reads a table of that shape.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the log: ``seq`` is the cursor, ``id`` the stable id sent as
    ``webhook-id``."""

    seq: int
    id: str
    type: str
    session: str
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


class EventSource(Protocol):
    def events_after(self, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with ``seq > after_seq``, by ascending seq."""
        ...  # pragma: no cover

    def head(self) -> int:
        """The seq of the newest event (0 for an empty log): where a new endpoint
        starts. Asked at every start: it must not read the log through."""
        ...  # pragma: no cover


def parse_time(value: object) -> datetime:
    """A stored time: seconds since the epoch, or ISO 8601 text (UTC when unmarked)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def event_of(row: Any) -> Event:
    """An event from a row of (seq, id, type, session, created_at, data as JSON)."""
    return Event(int(row[0]), str(row[1]), str(row[2]), str(row[3] or ""),
                 parse_time(row[4]), json.loads(row[5]) if row[5] else {})


class SqliteEventSource:
    """Reads ``table`` (columns seq, id, type, session, created_at, data as JSON) of the
    SQLite database at ``path``; a new connection per call, so any thread may use it."""

    def __init__(self, path: Path, table: str = "events") -> None:
        if not table.isidentifier():
            raise ValueError(f"table name {table!r} is not an identifier")
        self._path, self._table = path, table

    def events_after(self, after_seq: int, limit: int) -> list[Event]:
        connection = sqlite3.connect(self._path, timeout=30)
        try:
            rows = connection.execute(
                f"SELECT seq, id, type, session, created_at, data FROM {self._table} "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        finally:
            connection.close()
        return [event_of(row) for row in rows]

    def head(self) -> int:
        connection = sqlite3.connect(self._path, timeout=30)
        try:
            (seq,) = connection.execute(
                f"SELECT COALESCE(MAX(seq), 0) FROM {self._table}").fetchone()
        finally:
            connection.close()
        return int(seq)
