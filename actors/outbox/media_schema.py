"""Media in the outbox store: version 3 (``actors.outbox.store.MIGRATIONS``).

A message record gains what it sends (``media_*`` columns, NULL for text), and the
``media`` table holds one row per reference to a stored file: the id ``GET /media/<id>``
serves, the session it belongs to (who may fetch it), and what the file is. Outgoing
references share the message's id; incoming ones have their own. The bytes are in
``data_dir/media`` by their SHA-256 (``actors.media.store``); a file is deleted when
no reference names it any more (``MessageStore.media_prune``).

Plain code (no actors).
"""

from __future__ import annotations

import sqlite3

from gateway.core.migrations import statements

# The caption is the message's text (kept, hashed and erased exactly like a text's).
MEDIA_COLUMNS = ("media_id", "media_kind", "media_mime", "media_size", "media_sha256",
                 "media_file_name")

MEDIA_SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    id TEXT PRIMARY KEY,               -- what GET /media/<id> names
    sha256 TEXT NOT NULL,              -- the file in data_dir/media (stored once)
    session TEXT NOT NULL,             -- tokens allowed on it may fetch it
    direction TEXT NOT NULL,           -- 'out' (a message we send) or 'in' (received)
    message_id TEXT NOT NULL,          -- messages.id or incoming.id
    kind TEXT NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,             -- plaintext bytes
    disk_bytes INTEGER NOT NULL,       -- what the encrypted file takes on disk
    file_name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    -- when the reference may go: set when its message reaches a final state (out) or at
    -- reception (in), plus media.retention_days; NULL while the message is pending
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS media_by_sha ON media (sha256);
CREATE INDEX IF NOT EXISTS media_by_expiry ON media (expires_at) WHERE expires_at IS NOT NULL;
"""


def add_media(db: sqlite3.Connection) -> None:
    """Version 3: the media columns of a message and the media table."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    for column in MEDIA_COLUMNS:
        if column not in columns:
            kind = "INTEGER" if column == "media_size" else "TEXT"
            db.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
    for statement in statements(MEDIA_SCHEMA):
        db.execute(statement)
