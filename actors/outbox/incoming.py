"""Messages written to a linked account: a table beside the outbox's records.

Why in the outbox's SQLite database: the outbox is already the single writer of the
gateway's durable message data, its file already has the right mode, durability
setting and retention tick, and an incoming message is queried the way a record is
(by session, paged by cursor). One table, one writer, no new process.

WhatsApp may hand the same message to a client twice (a redelivery after a reconnect):
``(session, wa_message_id)`` is unique, so a message is stored once. Text is personal
data: it is never put in a log line, and with ``delivery.keep_text = false`` it is
erased the moment the message is marked read (the one point at which the gateway
knows the application has seen it), like a sent message's text at its final state.

Plain code (no actors), used by the outbox actor only.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from typing import Any

from actors.media.store import new_media_id
from actors.messages import IncomingReceived
from actors.outbox import events
from actors.outbox.db import Db, is_postgres, transaction
from actors.outbox.store import insert_media_ref, new_message_id, text_hash

# What a message.received event holds of the person who wrote and what they wrote:
# set to null in the event when the row goes (README: Replies and receipts).
_PERSONAL = events.RECEIVED_PERSONAL
_ERASE_TEXT = ("UPDATE events SET data = json_set(data, '$.text', NULL) "
               "WHERE type = 'message.received' "
               "AND json_extract(data, '$.incoming_id') = ?")
_ERASE_PERSONAL = ("UPDATE events SET data = json_set(data, "
                   + ", ".join(f"'$.{name}', NULL" for name in _PERSONAL)
                   + ") WHERE type = 'message.received' "
                   "AND json_extract(data, '$.incoming_id') = ?")

# The same two changes on PostgreSQL, where the log's JSON is text read as jsonb.
_PG_ERASE_TEXT = ("UPDATE events SET data = (data::jsonb || "
                  "jsonb_build_object('text', NULL))::text "
                  "WHERE type = 'message.received' AND (data::jsonb ->> 'incoming_id') = ?")
_PG_ERASE_PERSONAL = ("UPDATE events SET data = (data::jsonb || jsonb_build_object("
                      + ", ".join(f"'{name}', NULL" for name in _PERSONAL)
                      + "))::text WHERE type = 'message.received' "
                      "AND (data::jsonb ->> 'incoming_id') = ?")

_CURSOR_PREFIX = "i:"


def record_event(db: Db, record: dict[str, Any], keep_text: bool,
                 now: float) -> None:
    """The event log's ``message.received``, written inside the transaction that stores
    the message (so there is never one without the other). It carries the text, since
    a reply is what an application listens for, unless ``delivery.keep_text`` is off."""
    data = {
        "incoming_id": record["id"], "whatsapp_message_id": record["wa_message_id"],
        "kind": record["kind"], "text": record["text"] if keep_text else None,
        "phone_number": record["sender_phone"] or None, "sender_jid": record["sender_jid"],
        "sender_lid": record["sender_lid"] or None, "push_name": record["push_name"] or None,
        "chat": record["chat"], "is_group": bool(record["is_group"]),
        "quoted_message_id": record["quoted_id"] or None, "sent_at": record["sent_at"],
        "opt_out": bool(record["opt_out"]), "truncated": bool(record["truncated"]),
    }
    meta = record["meta"] if isinstance(record["meta"], dict) else json.loads(record["meta"])
    if "media_id" in meta:  # the file: GET /media/<media_id>; the caption is the text
        data["media"] = {"id": meta["media_id"], "kind": meta["media_kind"],
                         "mime": meta["media_mime"], "size": int(meta["media_size"]),
                         "file_name": meta.get("media_file_name") or None}
    if "media_missing" in meta:  # a file that could not be stored (DISK_FULL, ...)
        data["media_missing"] = meta["media_missing"]
    events.append_event(db, "message.received", record["session"], data, now)


class IncomingStore:
    """The ``incoming`` table of the outbox's database (``db`` is the outbox's
    connection, in autocommit mode: each method is its own transaction). The table is
    made by the store's migrations (``actors.outbox.incoming_schema``), as
    ``MessageStore`` opens the database."""

    def __init__(self, db: Db, keep_text: bool = True,
                 opt_out_keywords: tuple[str, ...] = ()) -> None:
        self.db = db
        self.keep_text = keep_text
        self.opt_out_keywords = frozenset(_folded(k) for k in opt_out_keywords if k.strip())

    def add(self, message: IncomingReceived, now: float) -> dict[str, Any] | None:
        """Store ``message``; None when this session already has its WhatsApp id (a
        redelivery), so the application hears of each message once."""
        record_id = new_message_id(now)
        media = message.media
        meta = dict(message.meta)
        if media is not None:  # what the event and the API say of the file
            meta.update(media_id=new_media_id(), media_kind=media.kind, media_mime=media.mime,
                        media_size=str(media.size), media_file_name=media.file_name,
                        media_sha256=media.sha256)
        record: dict[str, Any] = {
            "id": record_id, "session": message.session,
            "wa_message_id": message.message_id, "chat": message.chat,
            "sender_jid": message.sender_jid, "sender_phone": message.sender_phone,
            "sender_lid": message.sender_lid, "push_name": message.push_name,
            "is_group": int(message.is_group), "kind": message.kind, "text": message.text,
            "text_hash": text_hash(message.text), "quoted_id": message.quoted_id,
            "sent_at": message.at if message.at > 0 else now,
            "received_at": now, "meta": json.dumps(meta, sort_keys=True),
            "opt_out": int(message.kind == "text"
                           and is_opt_out(message.text, self.opt_out_keywords)),
            "truncated": int(message.truncated),
        }
        insert = (f"INTO incoming ({', '.join(record)}) "
                  f"VALUES ({', '.join('?' for _ in record)})")
        insert = (f"INSERT {insert} ON CONFLICT DO NOTHING" if is_postgres(self.db)
                  else f"INSERT OR IGNORE {insert}")
        with transaction(self.db):  # one transaction: the row and its event
            cursor = self.db.execute(insert, tuple(record.values()))
            if cursor.rowcount == 0:
                return None
            if media is not None:
                insert_media_ref(self.db, meta["media_id"], media, message.session, "in",
                                 record_id, now)
            stored = self.get(record_id)
            assert stored is not None
            record_event(self.db, stored, self.keep_text, now)
        return stored

    def get(self, record_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM incoming WHERE id = ?", (record_id,)).fetchone()
        return _record(row)

    def page(self, *, session: str | None = None, first: int = 20, after: str | None = None
             ) -> tuple[list[dict[str, Any]], bool]:
        """Oldest first, from just after ``after`` (a cursor from ``cursor_of``): an
        application keeps the last cursor it saw and asks again for what came since."""
        where: list[str] = []
        args: list[str | int] = []
        if session is not None:
            where.append("session = ?")
            args.append(session)
        if after:
            where.append("seq > ?")
            args.append(decode_cursor(after))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(f"SELECT * FROM incoming {clause} ORDER BY seq LIMIT ?",
                               (*args, first + 1)).fetchall()
        records = [r for r in map(_record, rows[:first]) if r is not None]
        return records, len(rows) > first

    def mark_read(self, record_id: str, now: float) -> dict[str, Any] | None:
        """Note that the read receipt went out (the first time only); without
        ``keep_text`` the text goes with it. None for an unknown id."""
        text = "text" if self.keep_text else "NULL"
        with transaction(self.db):  # one transaction: the row and its event's copy
            self.db.execute(f"UPDATE incoming SET read_at = COALESCE(read_at, ?), "
                            f"text = {text} WHERE id = ?", (now, record_id))
            if not self.keep_text:
                self.db.execute(_PG_ERASE_TEXT if is_postgres(self.db) else _ERASE_TEXT,
                                (record_id,))
        return self.get(record_id)

    def prune(self, older_than: float) -> int:
        """Forget messages received before ``older_than`` (unix time), and what their
        ``message.received`` events hold of the text and the sender: the event log is
        kept for ``events.retention_days``, and a reply must not outlive
        ``messages.incoming_retention_hours`` there (whatsAppEvents, webhook replays)."""
        erase = _PG_ERASE_PERSONAL if is_postgres(self.db) else _ERASE_PERSONAL
        with transaction(self.db):  # one transaction: the rows and their events' copies
            ids = [row[0] for row in self.db.execute(
                "SELECT id FROM incoming WHERE received_at < ?", (older_than,))]
            self.db.executemany(erase, ((record_id,) for record_id in ids))
            cursor = self.db.execute("DELETE FROM incoming WHERE received_at < ?",
                                     (older_than,))
        return cursor.rowcount

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM incoming").fetchone()[0])


def is_opt_out(text: str, keywords: frozenset[str]) -> bool:
    """Whether ``text`` is one of ``keywords`` (already folded): the whole message,
    whatever its case and surrounding spaces or punctuation ("Stop.", " STOP!"), so
    "don't stop the reminders" is no opt-out."""
    return bool(keywords) and _folded(text) in keywords


def _folded(text: str) -> str:
    """Compatibility-normalised (full-width letters, as some keyboards type them, are
    plain ones), trimmed, case-folded."""
    return unicodedata.normalize("NFKC", text).strip().strip(".!?,;:").strip().casefold()


def cursor_of(record: dict[str, Any]) -> str:
    raw = f"{_CURSOR_PREFIX}{record['seq']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Raises ValueError for a cursor this store did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    seq = raw.removeprefix(_CURSOR_PREFIX)
    if (not raw.startswith(_CURSOR_PREFIX) or not seq.isdigit() or not seq.isascii()
            or len(seq) > 19 or int(seq) > events.MAX_SEQ):  # length first: no huge int()
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(seq)


def _record(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    record = dict(row)
    record["is_group"] = bool(record["is_group"])
    record["opt_out"] = bool(record["opt_out"])
    record["truncated"] = bool(record["truncated"])
    record["meta"] = json.loads(record["meta"])
    return record
