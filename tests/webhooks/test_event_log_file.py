"""The webhook thread reads the outbox's event log file, which the outbox creates at
its own start: the thread may read first. A file without its table yet is an empty
log, not an error (the thread died of "no such table" and delivered nothing until the
gateway restarted: tests/integration/test_webhooks.py failed about one run in three
when the timing changed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actors.outbox.events import EVENTS_SCHEMA
from actors.webhooks.actor import EventLogFile


def test_a_file_without_the_events_table_is_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "messages.sqlite3"
    log = EventLogFile(path)
    assert log.head() == 0 and log.events_after(0, 10) == []  # no file yet
    sqlite3.connect(path).close()  # the outbox opened it, its schema is not there yet
    assert log.head() == 0 and log.events_after(0, 10) == []
    with sqlite3.connect(path) as db:
        db.executescript(EVENTS_SCHEMA)
        db.execute("INSERT INTO events (id, type, session, created_at, data) "
                   "VALUES ('evt_1', 'session.status', 's', 1.0, '{}')")
    assert log.head() == 1 and [e.id for e in log.events_after(0, 10)] == ["evt_1"]


def test_other_database_errors_still_raise(tmp_path: Path) -> None:
    path = tmp_path / "messages.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        EventLogFile(path).head()
