"""Message records and per-session queues in one SQLite database (``data_dir/outbox``).

Why SQLite and not diskcache here: the outbox must page through records by session,
state and recipient, find a session's next queued messages, and keep a 100 000
message backlog on disk rather than in memory. Those are indexed queries, which a
key-value cache does not offer. SQLite in WAL mode with ``synchronous=NORMAL``
survives a SIGKILL of any process without losing a committed record; ``FULL`` (a
config key) also survives a power cut, at the cost of one fsync per change.

In multi-host mode with a database (``cluster.database_url``) the same tables are in
PostgreSQL instead (``actors.outbox.db``, ``pg_schema``), so that a standby leader
that takes over continues every accepted message; the methods keep their meaning.

The store is plain code (no actors), used by one writer: the outbox actor.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.messages import MediaSpec, MessageState
from actors.outbox import events, pg_schema
from actors.outbox.db import Db, PgConnection, transaction
from actors.outbox.incoming_schema import add_incoming
from actors.outbox.media_schema import MEDIA_COLUMNS, add_media
from gateway.core.migrations import migrate, statements

PAGE_CACHE_KIB = 8192
STORE_FILE = "messages.sqlite3"  # in data_dir/outbox
PENDING = (MessageState.QUEUED, MessageState.SENDING)
FINISHED = (MessageState.SENT, MessageState.DELIVERED, MessageState.READ, MessageState.FAILED,
            MessageState.EXPIRED)
STATES = tuple(MessageState)  # the values the state column holds
RECEIPT_RANK = {MessageState.SENT: 0, MessageState.DELIVERED: 1, MessageState.READ: 2}
# The states as SQL literals: the partial indexes' WHERE clauses, and the queries that
# must repeat them word for word to use them (a bound parameter would not match).
_QUEUED = f"'{MessageState.QUEUED}'"
_SENT = f"'{MessageState.SENT}'"
_PENDING = "(" + ", ".join(f"'{state}'" for state in PENDING) + ")"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,             -- time-ordered: sorting by id is acceptance order
    session TEXT NOT NULL,
    phone TEXT NOT NULL,
    text TEXT,                       -- NULL once redacted (text_hash stays)
    text_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    valid_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    wa_message_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    requester TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    is_test INTEGER NOT NULL DEFAULT 0,
    uncertain INTEGER NOT NULL DEFAULT 0,
    history TEXT NOT NULL            -- JSON list of [state, unix time, reason]
);
CREATE INDEX IF NOT EXISTS queue ON messages (session, state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS by_state ON messages (state, id);
CREATE INDEX IF NOT EXISTS by_phone ON messages (phone, id);
CREATE INDEX IF NOT EXISTS by_wa_id ON messages (wa_message_id) WHERE wa_message_id IS NOT NULL;
-- An idempotency key belongs to one caller (API token) on one session: two
-- applications sharing a session never see each other's messages through it.
-- (by_key, its predecessor, was unique per session only.)
DROP INDEX IF EXISTS by_key;
CREATE UNIQUE INDEX IF NOT EXISTS by_caller_key ON messages (requester, session, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS by_validity ON messages (valid_until) WHERE state = {_QUEUED};
CREATE INDEX IF NOT EXISTS by_update ON messages (updated_at);
CREATE INDEX IF NOT EXISTS pending_by_recipient ON messages (session, phone, id)
    WHERE state IN {_PENDING};
-- unconfirmed(): every health report and /metrics scrape counts the old SENT messages
-- per session; without it that read every SENT row of the table (by_state).
CREATE INDEX IF NOT EXISTS unconfirmed ON messages (session, updated_at, state)
    WHERE state = {_SENT};
"""


def new_message_id(now: float) -> str:
    """Time-ordered and unguessable: 12 hex digits of milliseconds, 10 random."""
    return f"{int(now * 1000):012x}{secrets.token_hex(5)}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class NewMessage:
    session: str
    phone: str
    text: str = field(repr=False)  # personal data: never in a log line (see SendText)
    request_id: str = ""
    requester: str = ""
    idempotency_key: str | None = None
    valid_until: float | None = None
    is_test: bool = False
    account: str | None = None  # the linked account it may be sent from (actors.session.links)
    link_epoch: int = 0  # the session's link epoch when it was accepted
    note: str = ""  # the QUEUED history entry's reason (RECIPIENT_UNKNOWN_TIMEOUT ...)
    media: MediaSpec | None = None  # a media message: ``text`` is its caption


def content_text(text: str, media: MediaSpec | None) -> str:
    """What a message's ``text_hash`` covers, so an idempotency key reused for another
    file (another SHA-256), kind or caption is told apart from a resend of the same."""
    if media is None:
        return text
    return f"\x00media\x00{media.kind}\x00{media.sha256}\x00{text}"


# The count of unconfirmed(), from its own covering index: named, because the planner
# prefers by_state while the table is small (no statistics) and keeps that plan.
UNCONFIRMED_SQL = ("SELECT session, COUNT(*) FROM messages INDEXED BY unconfirmed "
                   f"WHERE state = {_SENT} AND updated_at < ? GROUP BY session")


class MessageStore:
    def __init__(self, directory: Path, synchronous: str = "NORMAL",
                 keep_text: bool = True, database_url: str = "",
                 exclusive: bool = False) -> None:
        """``keep_text`` false (``delivery.keep_text``): a message's text is erased the
        moment it reaches a final state, whichever path took it there (``transition``),
        and at open from any finished record that still has it (written before the
        setting changed, or by an older version).

        ``database_url`` (multi-host mode with a database): the store is in PostgreSQL,
        where a standby leader finds it (``actors.outbox.db``); ``directory`` and
        ``synchronous`` are then unused (commits there are always durable).
        ``exclusive`` (the outbox actor): this store is the database's one writer
        (``PgConnection``'s writer lock); another exclusive opener waits."""
        self.keep_text = keep_text
        # Messages that reached each state since this store was opened (each message
        # once per state, however often it is retried): /metrics reads it at scrape
        # time, so counting costs the send path one increment and no extra query.
        self.reached: Counter[str] = Counter()
        self.events_written: Counter[str] = Counter()  # by type, likewise for /metrics
        self.db: Db
        if database_url:
            self.db = _open_postgres(database_url, exclusive)
            if not keep_text:
                self._erase_finished_text()
            return
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / STORE_FILE
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=5000")
        # A fixed 8 MiB page cache (SQLite's default is 2 MiB): with a large backlog the
        # index pages an insert touches stay in memory. Bounded, so memory still does
        # not grow with the backlog.
        self.db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        if not keep_text:
            # Erased text is overwritten with zeros in the file too, not only unlinked
            # from its row (many builds have this on already; some do not).
            self.db.execute("PRAGMA secure_delete=ON")
        db = self.db
        db.executescript(_SCHEMA)
        _add_link_columns(db)
        try:
            migrate(db, "the outbox store (data_dir/outbox/messages.sqlite3)", MIGRATIONS)
        except BaseException:
            self.db.close()
            raise
        if not keep_text:
            self._erase_finished_text()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.chmod(f"{path}{suffix}", 0o600)

    def close(self) -> None:
        self.db.close()

    # ---- writing ------------------------------------------------------------------------

    def add(self, message: NewMessage, now: float) -> dict[str, Any]:
        media = message.media
        record: dict[str, Any] = {
            "id": new_message_id(now), "session": message.session, "phone": message.phone,
            "text": message.text, "text_hash": text_hash(content_text(message.text, media)),
            "state": MessageState.QUEUED,
            "accepted_at": now, "updated_at": now, "next_attempt_at": 0.0,
            "valid_until": message.valid_until, "attempts": 0, "wa_message_id": None,
            "reason": "", "error": "", "request_id": message.request_id,
            "requester": message.requester, "idempotency_key": message.idempotency_key,
            "is_test": message.is_test, "uncertain": False,
            "history": [[MessageState.QUEUED, now, message.note]],
            "account": message.account, "link_epoch": message.link_epoch,
        }
        record.update(dict.fromkeys(MEDIA_COLUMNS))  # what a read returns: NULL for text
        if media is not None:
            record.update(media_id=record["id"], media_kind=media.kind, media_mime=media.mime,
                          media_size=media.size, media_sha256=media.sha256,
                          media_file_name=media.file_name or None)
        stored = {**record, "is_test": int(message.is_test), "uncertain": 0,
                  "history": json.dumps(record["history"])}
        with self.batch():  # the record, its media reference and QUEUED event, together
            self.db.execute(f"INSERT INTO messages ({', '.join(stored)}) "
                            f"VALUES ({', '.join('?' for _ in stored)})",
                            tuple(stored.values()))
            if media is not None:
                self.add_media_ref(record["id"], media, message.session, "out", record["id"],
                                   now)
            self._status_event(record, None, now)
        self.reached[MessageState.QUEUED] += 1
        return record

    def transition(self, record: dict[str, Any], state: MessageState, now: float, reason: str = "",
                   **fields: Any) -> dict[str, Any]:
        """Move ``record`` (as last read or returned here) to ``state``, appending to its
        history, and set ``fields``; returns the updated record. One UPDATE: the caller
        already holds the record, so nothing is read back.

        ``reason`` and ``error`` always describe the new state (empty unless given): a
        message SENT after a failed attempt does not keep that attempt's reason; the
        history keeps every state's. The one path into a final state, so it is also
        where the text is erased when ``keep_text`` is off.
        """
        assert state in STATES, state
        history = list(record["history"])
        if all(entry[0] != state for entry in history):
            self.reached[state] += 1
        changed = not history or history[-1][0] != state
        if changed:
            history.append([state, now, reason])
        columns = {"state": state, "updated_at": now, "reason": reason, "error": "", **fields}
        if state in FINISHED and not self.keep_text:
            columns["text"] = None
        stored = {**columns, "history": json.dumps(history)}
        for flag in ("uncertain", "is_test"):
            if flag in stored:
                stored[flag] = int(stored[flag])
        assignments = ", ".join(f"{name} = ?" for name in stored)
        updated = {**record, **columns, "history": history}
        for flag in ("uncertain", "is_test"):
            updated[flag] = bool(updated[flag])
        with self.batch():  # the change and its event commit together, or neither
            self.db.execute(f"UPDATE messages SET {assignments} WHERE id = ?",
                            (*stored.values(), record["id"]))
            if changed:
                self._status_event(updated, _previous_state(record["history"]), now)
        return updated

    def _status_event(self, record: dict[str, Any], previous: str | None, now: float) -> None:
        """One event per history entry, except SENDING: a transient internal step (a
        send in flight) that no application acts on, and that would double the log."""
        if record["state"] != MessageState.SENDING:
            events.append_event(self.db, events.MESSAGE_STATUS, str(record["session"]),
                                status_event_data(record, previous), now)
            self.events_written[events.MESSAGE_STATUS] += 1

    def unconfirmed(self, sent_before: float) -> dict[str, int]:
        """Messages per session still SENT (no delivery receipt) since before
        ``sent_before``: WhatsApp's server took them, but no device of the recipient's
        has said so (the engine skips devices it cannot encrypt for, and the server may
        drop what it acked). Records leave this count with retention."""
        rows = self.db.execute(UNCONFIRMED_SQL, (sent_before,))
        return {str(session): int(count) for session, count in rows}

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Several changes in one transaction (one commit instead of one each)."""
        with transaction(self.db):
            yield

    def mark_uncertain(self, record_id: str) -> None:
        """Its caller was answered before its fate was known (``SEND_UNCONFIRMED``)."""
        self.db.execute("UPDATE messages SET uncertain = 1 WHERE id = ?", (record_id,))

    def forget_key(self, record_id: str) -> None:
        """An idempotency key older than its window may be used again."""
        self.db.execute("UPDATE messages SET idempotency_key = NULL WHERE id = ?", (record_id,))

    def _erase_finished_text(self) -> None:
        placeholders = ", ".join("?" for _ in FINISHED)
        erased = self.db.execute(
            f"UPDATE messages SET text = NULL WHERE state IN ({placeholders}) "
            "AND text IS NOT NULL", FINISHED).rowcount
        if erased:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no old page left in the WAL

    def expire_due(self, now: float) -> list[dict[str, Any]]:
        """QUEUED messages whose validity passed become EXPIRED (nothing is sent).

        Runs every tick, so it must not scan the backlog: the partial index holds only
        QUEUED rows ordered by validity (SQLite's planner prefers ``by_state`` unless told).
        """
        rows = self.db.execute(
            f"SELECT * FROM messages INDEXED BY by_validity WHERE state = {_QUEUED} "
            "AND valid_until < ?", (now,)).fetchall()
        records = [r for r in map(_record, rows) if r is not None]
        with self.batch():
            return [self.transition(r, MessageState.EXPIRED, now, reason="VALIDITY_PASSED")
                    for r in records]

    def prune(self, older_than: float) -> int:
        placeholders = ", ".join("?" for _ in FINISHED)
        cursor = self.db.execute(
            f"DELETE FROM messages WHERE updated_at < ? AND state IN ({placeholders})",
            (older_than, *FINISHED))
        return cursor.rowcount

    # ---- media ------------------------------------------------------------------------------

    def add_media_ref(self, media_id: str, media: MediaSpec, session: str, direction: str,
                      message_id: str, now: float, expires_at: float | None = None) -> None:
        """A reference to a stored file (``GET /media/<media_id>`` serves it)."""
        insert_media_ref(self.db, media_id, media, session, direction, message_id, now,
                         expires_at)

    def media_ref(self, media_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM media WHERE id = ?", (media_id,)).fetchone()
        return dict(row) if row is not None else None

    def media_known(self, sha256: str) -> bool:
        return self.db.execute("SELECT 1 FROM media WHERE sha256 = ? LIMIT 1",
                               (sha256,)).fetchone() is not None

    def media_bytes(self) -> int:
        """What the referenced files take on disk (each file once, however many refer)."""
        row = self.db.execute("SELECT COALESCE(SUM(disk_bytes), 0) FROM "
                              "(SELECT sha256, MAX(disk_bytes) AS disk_bytes FROM media "
                              "GROUP BY sha256) AS files").fetchone()
        return int(row[0])

    def media_release(self, older_than: float) -> list[str]:
        """Drop the references whose time is up: an outgoing one once its message is
        final (or pruned) and last changed before ``older_than``, an incoming one
        received before it. Returns the files no reference names any more."""
        placeholders = ", ".join("?" for _ in FINISHED)
        with self.batch():
            candidates = [r[0] for r in self.db.execute(
                "SELECT DISTINCT sha256 FROM media WHERE (direction = 'in' AND created_at < ?) "
                "OR (direction = 'out' AND NOT EXISTS (SELECT 1 FROM messages m WHERE "
                f"m.id = media.message_id AND (m.state NOT IN ({placeholders}) "
                "OR m.updated_at >= ?)))", (older_than, *FINISHED, older_than))]
            self.db.execute(
                "DELETE FROM media WHERE (direction = 'in' AND created_at < ?) "
                "OR (direction = 'out' AND NOT EXISTS (SELECT 1 FROM messages m WHERE "
                f"m.id = media.message_id AND (m.state NOT IN ({placeholders}) "
                "OR m.updated_at >= ?)))", (older_than, *FINISHED, older_than))
            return [sha for sha in candidates if not self.media_known(sha)]

    # ---- reading ----------------------------------------------------------------------------

    def get(self, record_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM messages WHERE id = ?", (record_id,)).fetchone()
        return _record(row)

    def by_idempotency_key(self, requester: str, session: str, key: str
                           ) -> dict[str, Any] | None:
        """The caller's message with this key on this session; failing that, one that
        a version before keys were scoped by caller stored without one (``requester``
        empty): ``key_verdict`` tells whether it is the same request."""
        row = self.db.execute(
            "SELECT * FROM messages WHERE session = ? AND idempotency_key = ? "
            "AND requester IN (?, '') ORDER BY requester = '' LIMIT 1",
            (session, key, requester)).fetchone()
        return _record(row)

    def by_wa_id(self, wa_message_id: str, session: str | None = None
                 ) -> dict[str, Any] | None:
        """The message WhatsApp knows as ``wa_message_id`` (of ``session`` when given:
        an id means something only on the account that sent it)."""
        if session is None:
            row = self.db.execute("SELECT * FROM messages WHERE wa_message_id = ?",
                                  (wa_message_id,)).fetchone()
        else:
            row = self.db.execute("SELECT * FROM messages WHERE wa_message_id = ? "
                                  "AND session = ?", (wa_message_id, session)).fetchone()
        return _record(row)

    def next_queued(self, session: str, now: float, limit: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            f"SELECT * FROM messages WHERE session = ? AND state = {_QUEUED} "
            "AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (session, now, limit))
        return [r for r in map(_record, rows) if r is not None]

    def next_in_order(self, session: str, now: float, limit: int) -> list[dict[str, Any]]:
        """Like ``next_queued``, but only messages that are the oldest still pending
        (queued or being sent) for their recipient in the session: a recipient gets
        its messages in the order they were accepted, even when one of them is being
        sent or waits for a retry."""
        rows = self.db.execute(
            f"SELECT * FROM messages AS m WHERE m.session = ? AND m.state = {_QUEUED} "
            "AND m.next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM messages AS o "
            "INDEXED BY pending_by_recipient WHERE o.session = m.session "
            f"AND o.phone = m.phone AND o.state IN {_PENDING} AND o.id < m.id) "
            "ORDER BY m.next_attempt_at, m.id LIMIT ?", (session, now, limit))
        return [r for r in map(_record, rows) if r is not None]

    def in_state(self, state: MessageState) -> list[dict[str, Any]]:
        """For start-up recovery (SENDING is bounded by the in-flight limit)."""
        rows = self.db.execute("SELECT * FROM messages WHERE state = ? ORDER BY id", (state,))
        return [r for r in map(_record, rows) if r is not None]

    def queued_of_ended_link(self, session: str, epoch: int | None) -> list[dict[str, Any]]:
        """The QUEUED messages of ``session`` accepted under a link epoch older than
        ``epoch`` (all of them when ``epoch`` is None: the session was forgotten)."""
        rows = self.db.execute(
            f"SELECT * FROM messages WHERE session = ? AND state = {_QUEUED} "
            "AND (? IS NULL OR link_epoch < ?)", (session, epoch, epoch))
        return [r for r in map(_record, rows) if r is not None]

    def pending_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT session, COUNT(*) AS n FROM messages "
                               f"WHERE state IN {_PENDING} GROUP BY session")
        return {r["session"]: r["n"] for r in rows}

    def page(self, *, session: str | None = None, state: str | None = None,
             phone: str | None = None, first: int = 20, after: str | None = None
             ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; ``after`` is an opaque cursor from ``cursor_of``."""
        where, args = [], []
        for column, value in (("session", session), ("state", state), ("phone", phone)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if after:
            where.append("id < ?")
            args.append(decode_cursor(after))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(f"SELECT * FROM messages {clause} ORDER BY id DESC LIMIT ?",
                               (*args, first + 1)).fetchall()
        records = [r for r in map(_record, rows[:first]) if r is not None]
        return records, len(rows) > first


def key_verdict(earlier: dict[str, Any], requester: str, phone: str, text: str) -> str:
    """What an idempotency key seen before means for a new request with it.

    ``duplicate``: the same request again (same recipient and text): answer with the
    earlier message. ``reused``: the caller used the key for a different message, an
    error worth telling (silently answering with the other message would drop this
    one). ``unrelated``: a record stored before keys were scoped by caller, for a
    different message: another caller's, so it says nothing about this request.
    """
    same = earlier["phone"] == phone and earlier["text_hash"] == text_hash(text)
    if same:
        return "duplicate"
    return "reused" if earlier["requester"] == requester else "unrelated"


def insert_media_ref(db: Db, media_id: str, media: MediaSpec, session: str,
                     direction: str, message_id: str, now: float,
                     expires_at: float | None = None) -> None:
    """One row of the media table (``actors.outbox.media_schema``)."""
    db.execute(
        "INSERT INTO media (id, sha256, session, direction, message_id, kind, mime, size, "
        "disk_bytes, file_name, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (media_id, media.sha256, session, direction, message_id, media.kind, media.mime,
         media.size, media.disk_bytes, media.file_name, now, expires_at))


def media_of(record: dict[str, Any]) -> MediaSpec | None:
    """The file a record sends (None: a text message)."""
    if not record.get("media_sha256"):
        return None
    return MediaSpec(kind=record["media_kind"], mime=record["media_mime"],
                     size=int(record["media_size"]), sha256=record["media_sha256"],
                     disk_bytes=0, file_name=record.get("media_file_name") or "")


def delivery_unconfirmed(record: dict[str, Any], now: float, after_seconds: float) -> bool:
    """Whether ``record`` is SENT and has been for longer than ``after_seconds`` with no
    delivery receipt (its SENT time is its last change: a receipt moves it on)."""
    state: str = record["state"]
    sent_at: float = record["updated_at"]
    return state == MessageState.SENT and now - sent_at > after_seconds


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as it may leave the outbox: everything but the text. Nothing outside
    needs it, and a record in a reply can end up in a log (Thespian logs the messages
    it could not deliver or whose handler failed)."""
    return {k: v for k, v in record.items() if k != "text"}


def _add_link_columns(db: sqlite3.Connection) -> None:
    """The columns that bind a message to the linked device it was accepted for
    (``actors.session.links``), added to a store written before they existed: its messages
    get epoch 0 and no account, which their sessions' registry entries match."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    if "account" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN account TEXT")
    if "link_epoch" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN link_epoch INTEGER NOT NULL DEFAULT 0")


def status_event_data(record: dict[str, Any], previous: str | None) -> dict[str, Any]:
    """A ``message.status`` event's data: the state it reached and how, never the text
    nor the recipient's number (an event lives for days and is sent to webhooks; the
    application knows the number by the message id it was given)."""
    return {"message_id": record["id"], "state": str(record["state"]),
            "previous_state": previous, "reason": record["reason"],
            "error": record["error"], "uncertain": bool(record["uncertain"]),
            "is_test": bool(record["is_test"])}


def _previous_state(history: list[list[Any]]) -> str | None:
    """The last state an application was told of (SENDING has no event)."""
    return next((str(e[0]) for e in reversed(history) if e[0] != MessageState.SENDING), None)


def _add_event_log(db: sqlite3.Connection) -> None:
    """Version 1: the event log (actors.outbox.events), in this file so that an event
    commits with its change."""
    for statement in statements(events.EVENTS_SCHEMA):
        db.execute(statement)


# Step n turns schema version n - 1 into n (gateway.core.migrations). Version 0 is
# every store written before versions existed (messages as _SCHEMA makes them);
# version 2 adds the incoming messages (before it, they were made at open, outside the
# versions: a version 1 store may already have them); version 3 adds media messages.
MIGRATIONS = (_add_event_log, add_incoming, add_media)


def _open_postgres(database_url: str, exclusive: bool) -> PgConnection:
    """The store's connection to PostgreSQL, its tables made or migrated
    (``actors.outbox.pg_schema``)."""
    db = PgConnection(database_url, exclusive=exclusive)
    try:
        pg_schema.ensure(db)
    except BaseException:
        db.close()
        raise
    return db


def cursor_of(record: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"m:{record['id']}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Raises ValueError for a cursor this store did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    if not raw.startswith("m:"):
        raise ValueError(f"invalid cursor {cursor!r}")
    return raw[2:]


def _record(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    record = dict(row)
    record["history"] = json.loads(record["history"])
    record["is_test"] = bool(record["is_test"])
    record["uncertain"] = bool(record["uncertain"])
    return record
