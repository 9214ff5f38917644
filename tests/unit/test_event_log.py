"""The event log (actors/outbox/events.py), on SQLite and PostgreSQL, and the store
migrations (gateway/core/migrations.py), on real SQLite files (SQLite only)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.outbox import events as ev
from actors.outbox.db import Db
from actors.outbox.store import MIGRATIONS, MessageStore
from gateway.core.migrations import NewerStoreError, migrate, schema_version

# MessageStore(directory, ...) on the test's backend (tests/conftest.py: SQLite and
# PostgreSQL): each test that takes it runs on both.
OpenStore = Callable[..., MessageStore]


def open_log(tmp_path: Path, open_store: OpenStore) -> Db:
    store = open_store(tmp_path / "outbox")
    return store.db


def test_events_are_paged_in_order_exactly_once(tmp_path: Path, open_store: OpenStore) -> None:
    db = open_log(tmp_path, open_store)
    written = [ev.append_event(db, ev.MESSAGE_STATUS, f"s{n % 2}", {"n": n}, float(n))
               for n in range(25)]
    seen, after = [], 0
    while page := ev.events_after(db, after, limit=7):
        seen.extend(page)
        after = page[-1].seq
    assert seen == written
    assert len({e.id for e in seen}) == 25 and all(e.id.startswith("evt_") for e in seen)


def test_filters_by_type_and_session(tmp_path: Path, open_store: OpenStore) -> None:
    db = open_log(tmp_path, open_store)
    ev.append_event(db, ev.MESSAGE_STATUS, "a", {}, 1.0)
    ev.append_event(db, ev.SESSION_STATUS, "b", {}, 2.0)
    ev.append_event(db, ev.MESSAGE_STATUS, "b", {}, 3.0)
    assert [e.seq for e in ev.events_after(db, 0, types=[ev.SESSION_STATUS], limit=9)] == [2]
    assert [e.seq for e in ev.events_after(db, 0, sessions=["b"], limit=9)] == [2, 3]
    assert ev.events_after(db, 0, sessions=[], limit=9) == []  # no session: nothing
    with pytest.raises(ValueError):
        ev.append_event(db, "message.bogus", "a", {}, 1.0)


def test_prune_is_bounded_and_the_cursor_never_goes_back(
        tmp_path: Path, open_store: OpenStore) -> None:
    db = open_log(tmp_path, open_store)
    for n in range(10):
        ev.append_event(db, ev.MESSAGE_STATUS, "s", {"n": n}, float(n))
    assert ev.prune_events(db, 100.0, 4) == 4
    assert ev.event_log_size(db)[0] == 6
    assert ev.prune_events(db, 100.0, 0) == 0
    assert ev.prune_events(db, 100.0, 100) == 6
    assert ev.event_log_size(db) == (0, 0)
    assert ev.append_event(db, ev.MESSAGE_STATUS, "s", {}, 1.0).seq == 11  # never reused
    assert ev.last_seq(db) == 11


def test_a_change_and_its_event_commit_together(tmp_path: Path, open_store: OpenStore) -> None:
    """A rolled back transaction leaves neither the event nor the cursor number used."""
    db = open_log(tmp_path, open_store)
    db.execute("BEGIN IMMEDIATE")
    ev.append_event(db, ev.MESSAGE_STATUS, "s", {}, 1.0)
    db.execute("ROLLBACK")
    assert ev.events_after(db, 0, limit=9) == []


def old_store(path: Path) -> None:
    """A store as versions before migrations wrote it: messages, no events, version 0."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, session TEXT NOT NULL, "
               "phone TEXT NOT NULL, text TEXT, text_hash TEXT NOT NULL, state TEXT NOT NULL, "
               "accepted_at REAL NOT NULL, updated_at REAL NOT NULL, "
               "next_attempt_at REAL NOT NULL DEFAULT 0, valid_until REAL, "
               "attempts INTEGER NOT NULL DEFAULT 0, wa_message_id TEXT, "
               "reason TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '', "
               "request_id TEXT NOT NULL DEFAULT '', requester TEXT NOT NULL DEFAULT '', "
               "idempotency_key TEXT, is_test INTEGER NOT NULL DEFAULT 0, "
               "uncertain INTEGER NOT NULL DEFAULT 0, history TEXT NOT NULL)")
    db.execute("INSERT INTO messages (id, session, phone, text, text_hash, state, accepted_at, "
               "updated_at, history) VALUES ('m1', 'default', '+1', 'hi', 'h', 'QUEUED', 1, 1, "
               "'[[\"QUEUED\", 1, \"\"]]')")
    db.close()


def test_a_version_0_sqlite_store_gains_the_event_log_and_keeps_its_messages(
        tmp_path: Path) -> None:
    (tmp_path / "outbox").mkdir()
    path = tmp_path / "outbox" / "messages.sqlite3"
    old_store(path)
    store = MessageStore(tmp_path / "outbox")
    assert schema_version(store.db) == len(MIGRATIONS) == 3
    record = store.get("m1")
    assert record is not None and record["state"] == "QUEUED"
    assert ev.events_after(store.db, 0, limit=9) == []  # the table is there, empty
    store.close()
    MessageStore(tmp_path / "outbox").close()  # a second open migrates nothing


def test_a_sqlite_store_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "outbox").mkdir()
    path = tmp_path / "outbox" / "messages.sqlite3"
    old_store(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(NewerStoreError, match=r"schema version 7.*up to 3.*newer wagate"):
        MessageStore(tmp_path / "outbox")
    db = sqlite3.connect(path, isolation_level=None)
    assert schema_version(db) == 7
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchall()
    db.close()


def test_a_failing_sqlite_step_leaves_the_old_version_whole(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)

    def first(d: sqlite3.Connection) -> None:
        d.execute("CREATE TABLE t (x)")

    def broken(d: sqlite3.Connection) -> None:
        d.execute("CREATE TABLE u (x)")
        raise RuntimeError("half-way")

    with pytest.raises(RuntimeError):
        migrate(db, "the test store", [first, broken])
    assert schema_version(db) == 0
    assert not db.execute("SELECT name FROM sqlite_master").fetchall()
    assert migrate(db, "test", [first]) == 0 and schema_version(db) == 1


def told_history(store: MessageStore) -> dict[str, list[str]]:
    """Each record's history as an application is told it (SENDING has no event)."""
    rows = store.db.execute("SELECT id, history FROM messages").fetchall()
    return {r[0]: [e[0] for e in json.loads(r[1]) if e[0] != "SENDING"] for r in rows}


def logged(store: MessageStore) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for event in ev.events_after(store.db, 0, types=[ev.MESSAGE_STATUS], limit=10_000):
        seen.setdefault(event.data["message_id"], []).append(event.data["state"])
    return seen


def test_every_state_change_writes_its_event(tmp_path: Path, open_store: OpenStore) -> None:
    from actors.messages import MessageState as S
    from actors.outbox.store import NewMessage
    store = open_store(tmp_path / "outbox")
    sent = store.add(NewMessage("s", "+14155552671", "hello"), 1.0)
    sent = store.transition(sent, S.SENDING, 2.0)
    sent = store.transition(sent, S.SENT, 3.0, wa_message_id="W1")
    sent = store.transition(sent, S.SENT, 3.5)  # no change of state: no event
    sent = store.transition(sent, S.DELIVERED, 4.0)
    failed = store.add(NewMessage("s", "+14155552672", "x"), 1.0)
    store.transition(failed, S.FAILED, 2.0, "RECIPIENT_NOT_ON_WHATSAPP", error="E")
    store.add(NewMessage("t", "+14155552673", "y", valid_until=1.5), 1.0)
    assert len(store.expire_due(5.0)) == 1
    assert logged(store) == told_history(store)
    events = ev.events_after(store.db, 0, limit=99)
    delivered = next(e for e in events if e.data["state"] == "DELIVERED")
    assert delivered.data["previous_state"] == "SENT" and delivered.session == "s"
    sent_event = next(e for e in events if e.data["state"] == "SENT")
    assert sent_event.data["previous_state"] == "QUEUED"  # SENDING is not told
    failed_event = next(e for e in events if e.data["state"] == "FAILED")
    assert (failed_event.data["reason"], failed_event.data["error"]) == (
        "RECIPIENT_NOT_ON_WHATSAPP", "E")
    assert {e.data["state"] for e in events if e.session == "t"} == {"QUEUED", "EXPIRED"}
    assert all("hello" not in str(e.data) and "+1415" not in str(e.data) for e in events)


def test_prune_rounds_are_bounded(tmp_path: Path, open_store: OpenStore) -> None:
    db = open_log(tmp_path, open_store)
    for n in range(25):
        ev.append_event(db, ev.MESSAGE_STATUS, "s", {}, float(n))
    ev.append_event(db, ev.MESSAGE_STATUS, "s", {}, 1000.0)  # young: kept
    assert ev.prune_old_events(db, 500.0, batch=4, max_batches=3) == 12  # bounded round
    assert ev.prune_old_events(db, 500.0, batch=4, max_batches=100) == 13  # stops when short
    assert [e.created_at for e in ev.events_after(db, 0, limit=99)] == [1000.0]
    assert not db.in_transaction


def test_the_launcher_check_refuses_only_a_newer_sqlite_store_and_writes_nothing(
        tmp_path: Path) -> None:
    from gateway.core.migrations import check_not_newer
    path = tmp_path / "outbox" / "messages.sqlite3"
    known = len(MIGRATIONS)
    check_not_newer(path, "outbox", known)  # no store yet: nothing to refuse
    assert not path.exists()
    MessageStore(tmp_path / "outbox").close()
    check_not_newer(path, "outbox", known)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {known + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(NewerStoreError, match=f"schema version {known + 1}"):
        check_not_newer(path, "outbox", known)
    assert path.read_bytes() == before


def test_the_number_cache_is_versioned_too(tmp_path: Path) -> None:
    from actors.outbox.numbers import open_cache
    cache = open_cache(tmp_path, 1.0, 1.0)
    cache.close()
    db = sqlite3.connect(tmp_path / "numbers.sqlite", isolation_level=None)
    assert schema_version(db) == 1
    db.execute("PRAGMA user_version = 3")
    db.close()
    with pytest.raises(NewerStoreError, match=r"number cache .* is at schema version 3"):
        open_cache(tmp_path, 1.0, 1.0)


def test_a_session_state_is_logged_only_when_it_changes(
        tmp_path: Path, open_store: OpenStore) -> None:
    db = open_log(tmp_path, open_store)
    assert ev.last_session_state(db, "s") is None
    first = ev.record_session_state(db, "s", "CONNECTING", None, {"paired": False}, 1.0)
    assert first is not None and first.data == {"paired": False, "state": "CONNECTING",
                                                "previous_state": None}
    assert ev.record_session_state(db, "s", "CONNECTING", "CONNECTING", {}, 2.0) is None
    ev.append_event(db, ev.MESSAGE_STATUS, "s", {"state": "SENT"}, 3.0)  # not a session's
    assert ev.last_session_state(db, "s") == "CONNECTING"
    ev.record_session_state(db, "s", "CONNECTED", "CONNECTING", {}, 4.0)
    assert ev.last_session_state(db, "s") == "CONNECTED"
    assert ev.last_session_state(db, "other") is None


def test_an_event_page_repr_is_short_and_holds_no_event() -> None:
    """Regression (found by tests/perf/bench_events_pull.py): Thespian formats every
    message it transmits, so a 500-event page's repr cost the outbox about 15 % of its
    CPU per page; and Thespian logs what it could not deliver, where a message.received
    event's text must not appear."""
    from actors.messages import EventPage

    secret = "my one-time code is 424242"
    page = EventPage(tuple(ev.Event(n, f"evt_{n}", ev.MESSAGE_RECEIVED, "default", 0.0,
                                    {"text": secret}) for n in range(500)), True, 500)
    assert secret not in repr(page) and len(repr(page)) < 100
    assert page.events[0].data["text"] == secret
