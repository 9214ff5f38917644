"""The durable event log: what happened to messages and sessions, in order.

Why a table in the outbox's own SQLite file (``messages.sqlite3``) and not a file of
its own: an event must be written in the same transaction as the change it tells of.
Two files cannot commit together; one connection to one file can. A SIGKILL then
leaves either the change and its event, or neither.

``seq`` (INTEGER PRIMARY KEY AUTOINCREMENT) is the cursor: it only grows, and SQLite
never hands out a number again, not even after the newest rows are pruned or a
transaction is rolled back (AUTOINCREMENT keeps the high-water mark in
``sqlite_sequence``). On PostgreSQL (multi-host mode, ``actors.outbox.db``) it is an
identity column, and each event-writing transaction holds a lock from before its
number is drawn to its commit, so numbers are committed in order there too. ``id`` is
the stable event id an application dedupes on.

Plain code (no actors): the outbox actor is the one writer; the functions take the
connection so that the caller's transaction is the event's transaction.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actors.outbox.db import Db, is_postgres, transaction

MESSAGE_STATUS = "message.status"
MESSAGE_RECEIVED = "message.received"
SESSION_STATUS = "session.status"
EVENT_TYPES = (MESSAGE_STATUS, MESSAGE_RECEIVED, SESSION_STATUS)
# What a message.received event holds of the person who wrote and of what they wrote:
# nulled when the reply is pruned, and never shown to a role that may not list replies.
RECEIVED_PERSONAL = ("text", "phone_number", "sender_jid", "sender_lid", "push_name", "chat")
# The states the message chart counts (StateBucket's fields): what an operator watches
# a send become; QUEUED and SENDING are in the queue panel, EXPIRED is rare and is not drawn.
CHART_STATES = ("SENT", "DELIVERED", "READ", "FAILED")
HOUR = 3600
# pg_advisory_xact_lock's key for writing the event log on PostgreSQL ("wagate events")
EVENT_LOCK = 0x7761676174657665
# SQLite's largest INTEGER: a cursor naming more is forged (a larger number does not even
# bind as a query parameter: OverflowError), so decoding refuses it as invalid.
MAX_SEQ = 2**63 - 1

# Part of schema version 1 (gateway.core.migrations runs it): IF NOT EXISTS, so it is
# also safe to run on a store that already has it.
EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the cursor: only grows, never reused
    id TEXT NOT NULL UNIQUE,                -- the stable event id ("evt_" + random)
    type TEXT NOT NULL,
    session TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    data TEXT NOT NULL                      -- JSON object
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session, seq);
"""


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the log, as it leaves the outbox (pickled to the web tier, so its
    layout is in actors/protocol.py). ``data`` holds a message's text only for
    message.received (a reply, what an application listens for)."""

    seq: int
    id: str
    type: str
    session: str
    created_at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StateBucket:
    """One hour of the message chart (whatsAppMessageChart): how many messages reached
    each state in the hour that starts at ``start`` (Unix time, a whole hour in UTC).
    Pickled to the web tier, so its layout is in actors/protocol.py."""

    start: float
    sent: int = 0
    delivered: int = 0
    read: int = 0
    failed: int = 0


def new_event_id() -> str:
    """Unguessable and unique: 128 random bits."""
    return "evt_" + secrets.token_hex(16)


def append_event(db: Db, type: str, session: str, data: dict[str, Any],
                 now: float) -> Event:
    """Write one event in the caller's transaction (none is opened here: an event
    belongs to its change's transaction, so the caller opens it)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    event_id = new_event_id()
    body = json.dumps(data, separators=(",", ":"), sort_keys=True)
    insert = ("INSERT INTO events (id, type, session, created_at, data) "
              "VALUES (?, ?, ?, ?, ?)")
    values = (event_id, type, session, now, body)
    if is_postgres(db):
        # An identity column: the number comes back with the row. The transaction's
        # lock is taken before the number: a second writer (a leader that has not yet
        # noticed it lost the lock) waits for this commit, so numbers are committed in
        # order and a reader's cursor never skips a row committed after it read.
        seq = db.execute("INSERT INTO events (id, type, session, created_at, data) "
                         "SELECT ?, ?, ?, ?, ? FROM (SELECT pg_advisory_xact_lock("
                         f"{EVENT_LOCK})) AS l RETURNING seq", values).fetchone()[0]
    else:
        seq = db.execute(insert, values).lastrowid
    assert seq is not None
    return Event(seq, event_id, type, session, now, data)


def events_after(db: Db, after_seq: int, *, types: Iterable[str] | None = None,
                 sessions: Iterable[str] | None = None, limit: int) -> list[Event]:
    """Up to ``limit`` events with a sequence number above ``after_seq``, oldest first.

    ``types``/``sessions`` None means every one; an empty collection means none
    (a token limited to no session sees nothing, never everything)."""
    where: list[str] = ["seq > ?"]
    args: list[Any] = [after_seq]
    for column, values in (("type", types), ("session", sessions)):
        if values is None:
            continue
        chosen = sorted(set(values))
        if not chosen:
            return []
        where.append(f"{column} IN ({', '.join('?' for _ in chosen)})")
        args.extend(chosen)
    rows = db.execute(f"SELECT seq, id, type, session, created_at, data FROM events "
                      f"WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                      (*args, max(0, limit))).fetchall()
    return [Event(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), json.loads(r[5]))
            for r in rows]


def page_of_events(db: Db, after_seq: int, *, types: Iterable[str] | None,
                   sessions: Iterable[str] | None, first: int) -> tuple[list[Event], bool]:
    """Up to ``first`` events after ``after_seq`` and whether more follow (one row more
    than asked is read to know)."""
    first = max(0, first)
    found = events_after(db, after_seq, types=types, sessions=sessions, limit=first + 1)
    return found[:first], len(found) > first


def last_session_state(db: Db, session: str) -> str | None:
    """The state of ``session``'s newest ``session.status`` event still in the log."""
    row = db.execute("SELECT data FROM events WHERE session = ? AND type = ? "
                     "ORDER BY seq DESC LIMIT 1", (session, SESSION_STATUS)).fetchone()
    if row is None:
        return None
    state = json.loads(row[0]).get("state")
    return str(state) if state is not None else None


def record_session_state(db: Db, session: str, state: str, previous: str | None,
                         data: dict[str, Any], now: float) -> Event | None:
    """A ``session.status`` event when ``state`` differs from ``previous`` (the state
    last logged for ``session``, which the caller keeps so that a state report costs no
    query); None when it is the same state again (a link update that changed no state)."""
    if state == previous:
        return None
    return append_event(db, SESSION_STATUS, session,
                        {**data, "state": state, "previous_state": previous}, now)


def last_seq(db: Db) -> int:
    """The newest sequence number written (0 before the first): pruning never lowers it."""
    if is_postgres(db):  # the identity's sequence: NULL before its first number
        row = db.execute("SELECT pg_sequence_last_value("
                         "pg_get_serial_sequence('events', 'seq'))").fetchone()
        return int(row[0]) if row and row[0] is not None else 0
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


def prune_events(db: Db, older_than: float, batch: int) -> int:
    """Delete at most ``batch`` events written before ``older_than``, oldest first;
    returns how many. Bounded so that one prune never holds the write lock long: the
    caller repeats on its timer until nothing is left."""
    if batch <= 0:
        return 0
    cursor = db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events "
                        "WHERE created_at < ? ORDER BY seq LIMIT ?)", (older_than, batch))
    return cursor.rowcount


def prune_old_events(db: Db, older_than: float, batch: int,
                     max_batches: int) -> int:
    """``prune_events`` repeated, each batch its own transaction, until a batch comes
    back short or ``max_batches`` ran (what is left waits for the next round: one
    round's work is bounded even after a long downtime). ``db`` is in autocommit."""
    total = 0
    for _ in range(max(0, max_batches)):
        with transaction(db):
            deleted = prune_events(db, older_than, batch)
        total += deleted
        if deleted < batch:
            break
    return total


def event_log_size(db: Db) -> tuple[int, int]:
    """(rows, bytes) of the log. Bytes are the payloads and ids as stored (the sum of
    the columns' lengths), not pages: a figure that moves with what is kept, cheap
    enough for a health report (one pass over the table, no dbstat needed)."""
    row = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data) + LENGTH(id) + "
                     "LENGTH(type) + LENGTH(session) + 16), 0) FROM events").fetchone()
    return int(row[0]), int(row[1])


def without_personal(event: Event) -> Event:
    """``event`` as a role that may not read replies (no ``messages`` action) sees it:
    a message.received keeps its ids, kind and flags (a reply came, to which message,
    an opt-out) with the fields of ``RECEIVED_PERSONAL`` null; other types as they are
    (they never hold a text or a number)."""
    if event.type != MESSAGE_RECEIVED:
        return event
    data = {**event.data, **{name: None for name in RECEIVED_PERSONAL if name in event.data}}
    return Event(event.seq, event.id, event.type, event.session, event.created_at, data)


def event_cursor(seq: int) -> str:
    """The opaque cursor of the event with sequence number ``seq`` (whatsAppEvents)."""
    return base64.urlsafe_b64encode(f"e:{seq}".encode()).decode().rstrip("=")


def decode_event_cursor(cursor: str) -> int:
    """The sequence number of a cursor from ``event_cursor``; ValueError for any
    other string (a message cursor included: they are not interchangeable)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"invalid event cursor {cursor!r}") from None
    kind, _, number = raw.partition(":")
    if (kind != "e" or not number.isdigit() or not number.isascii() or len(number) > 19
            or int(number) > MAX_SEQ):
        raise ValueError(f"invalid event cursor {cursor!r}")
    return int(number)


def message_state_chart(db: Db, now: float, hours: int,
                        sessions: Iterable[str] | None) -> list[StateBucket]:
    """``hours`` hourly buckets, oldest first, ending with the hour that holds ``now``:
    the message.status events of each hour counted by the state they reached.

    One query over the ``events_by_time`` range (also when sessions are named: a
    session's rows span the whole retention, the window only its hours), grouped in
    SQLite, so a busy day costs one pass over its own rows, not a page walk in Python.
    Hours without events are zero buckets, so a chart has a fixed width. ``sessions``
    as in ``events_after``: None every one, empty none."""
    if hours <= 0:
        return []
    first = (int(now // HOUR) - (hours - 1)) * HOUR
    buckets = [StateBucket(float(first + n * HOUR)) for n in range(hours)]
    where = ["created_at >= ?", "created_at < ?", "type = ?"]
    args: list[Any] = [first, first + hours * HOUR, MESSAGE_STATUS]
    if sessions is not None:
        chosen = sorted(set(sessions))
        if not chosen:
            return buckets
        # "+session": not the session index (all of a session's days), the time range
        # (SQLite's hint; PostgreSQL's planner decides by its statistics)
        column = "session" if is_postgres(db) else "+session"
        where.append(f"{column} IN ({', '.join('?' for _ in chosen)})")
        args.extend(chosen)
    states = ", ".join(f"'{state}'" for state in CHART_STATES)  # constants, not input
    if is_postgres(db):
        slot = f"CAST(FLOOR((created_at - ?) / {HOUR}) AS bigint)"
        state = "(data::jsonb ->> 'state')"
    else:
        slot = f"CAST((created_at - ?) / {HOUR} AS INTEGER)"
        state = "json_extract(data, '$.state')"
    rows = db.execute(
        f"SELECT {slot} AS slot, {state} AS state, COUNT(*) FROM events "
        f"WHERE {' AND '.join(where)} AND {state} IN ({states}) "
        f"GROUP BY slot, state",
        (first, *args)).fetchall()
    counts: list[dict[str, int]] = [{} for _ in range(hours)]
    for slot, state, count in rows:
        if 0 <= int(slot) < hours:
            counts[int(slot)][str(state)] = int(count)
    return [StateBucket(b.start, *(c.get(s, 0) for s in CHART_STATES))
            for b, c in zip(buckets, counts, strict=True)]
