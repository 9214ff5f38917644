"""The ``incoming`` table (``actors.outbox.incoming``): version 2 of the outbox store.

Why a module of its own: the store's migrations (``actors.outbox.store``) make the
table, and ``actors.outbox.incoming`` uses the store; the schema here is imported by
the first without importing the second. Every statement keeps ``IF NOT EXISTS``: a
store of version 1 written before the table was a migration step already has it (it
was made at open), and the step must leave it as it is.

Plain code (no actors).
"""

from __future__ import annotations

import sqlite3

from gateway.core.migrations import statements

INCOMING_SCHEMA = """
CREATE TABLE IF NOT EXISTS incoming (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: what the cursor names
    id TEXT NOT NULL UNIQUE,                -- the gateway's id (whatsAppMarkRead)
    session TEXT NOT NULL,
    wa_message_id TEXT NOT NULL,
    chat TEXT NOT NULL,
    sender_jid TEXT NOT NULL,
    sender_phone TEXT NOT NULL DEFAULT '',
    sender_lid TEXT NOT NULL DEFAULT '',
    push_name TEXT NOT NULL DEFAULT '',
    is_group INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL,
    text TEXT,                              -- NULL once erased (text_hash stays)
    text_hash TEXT NOT NULL,
    quoted_id TEXT NOT NULL DEFAULT '',
    sent_at REAL NOT NULL,                  -- WhatsApp's timestamp
    received_at REAL NOT NULL,              -- when the gateway stored it
    read_at REAL,                           -- when whatsAppMarkRead sent the read receipt
    meta TEXT NOT NULL DEFAULT '{}',        -- JSON object of str -> str
    opt_out INTEGER NOT NULL DEFAULT 0,     -- the text is one of messages.opt_out_keywords
    truncated INTEGER NOT NULL DEFAULT 0    -- text cut to messages.max_incoming_text_chars
);
CREATE UNIQUE INDEX IF NOT EXISTS incoming_by_wa_id ON incoming (session, wa_message_id);
CREATE INDEX IF NOT EXISTS incoming_by_session ON incoming (session, seq);
CREATE INDEX IF NOT EXISTS incoming_by_arrival ON incoming (received_at);
-- The message.received event of one incoming row, found without reading every event's
-- JSON: what erasing a pruned reply's copy in the log looks up.
CREATE INDEX IF NOT EXISTS events_by_incoming ON events (json_extract(data, '$.incoming_id'))
    WHERE type = 'message.received';
"""


def add_incoming(db: sqlite3.Connection) -> None:
    """Version 2: the incoming table, its indexes, and the event log's index of
    ``message.received`` by incoming id (the event log is version 1). A table made
    at open by an older version gains the columns it lacks."""
    for statement in statements(INCOMING_SCHEMA):
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(incoming)")}
    for column in ("opt_out", "truncated"):
        if column not in columns:
            db.execute(f"ALTER TABLE incoming ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
