"""The outbox store's tables in PostgreSQL (multi-host mode), and their versions.

The same tables and indexes as the SQLite file (``store._SCHEMA``, ``events``,
``incoming_schema``, ``media_schema``) and the webhook endpoints
(``actors.webhooks.store``, its own file on one host), in PostgreSQL's types: ``double precision``
for times (SQLite's REAL is the same 8-byte float), ``bigint`` identities for the
sequence numbers (a sequence only grows and never hands a number out twice, as
SQLite's AUTOINCREMENT), JSON kept as ``text`` (read with ``::jsonb`` where a query
looks inside), flags as ``integer`` like SQLite's. They live in the schema
``wagate_outbox`` (``actors.outbox.db``).

Versions are PostgreSQL's own (the SQLite file keeps ``PRAGMA user_version``): the
table ``schema_version`` holds one row. ``ensure`` makes the schema and runs the
missing steps in one transaction under an advisory lock, so two leaders starting at
once never both migrate, and refuses a database written by a newer wagate.

Plain code (no actors).
"""

from __future__ import annotations

from actors.messages import MessageState
from actors.outbox.db import SCHEMA_NAME, PgConnection, transaction
from gateway.core.migrations import NewerStoreError

_QUEUED = f"'{MessageState.QUEUED}'"
_SENT = f"'{MessageState.SENT}'"
_PENDING = f"('{MessageState.QUEUED}', '{MessageState.SENDING}')"
# pg_advisory_xact_lock's key for the migration ("wagate outbox" in ASCII, truncated)
_MIGRATION_LOCK = 0x7761676174656F75

VERSION_1 = f"""
CREATE TABLE IF NOT EXISTS messages (
    id text PRIMARY KEY,
    session text NOT NULL,
    phone text NOT NULL,
    text text,
    text_hash text NOT NULL,
    state text NOT NULL,
    accepted_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    next_attempt_at double precision NOT NULL DEFAULT 0,
    valid_until double precision,
    attempts integer NOT NULL DEFAULT 0,
    wa_message_id text,
    reason text NOT NULL DEFAULT '',
    error text NOT NULL DEFAULT '',
    request_id text NOT NULL DEFAULT '',
    requester text NOT NULL DEFAULT '',
    idempotency_key text,
    is_test integer NOT NULL DEFAULT 0,
    uncertain integer NOT NULL DEFAULT 0,
    history text NOT NULL,
    account text,
    link_epoch integer NOT NULL DEFAULT 0,
    media_id text,
    media_kind text,
    media_mime text,
    media_size bigint,
    media_sha256 text,
    media_file_name text
);
CREATE INDEX IF NOT EXISTS queue ON messages (session, state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS by_state ON messages (state, id);
CREATE INDEX IF NOT EXISTS by_phone ON messages (phone, id);
CREATE INDEX IF NOT EXISTS by_wa_id ON messages (wa_message_id) WHERE wa_message_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS by_caller_key ON messages (requester, session, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS by_validity ON messages (valid_until) WHERE state = {_QUEUED};
CREATE INDEX IF NOT EXISTS by_update ON messages (updated_at);
CREATE INDEX IF NOT EXISTS pending_by_recipient ON messages (session, phone, id)
    WHERE state IN {_PENDING};
CREATE INDEX IF NOT EXISTS unconfirmed ON messages (session, updated_at, state)
    WHERE state = {_SENT};
CREATE TABLE IF NOT EXISTS events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    type text NOT NULL,
    session text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    data text NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session, seq);
CREATE TABLE IF NOT EXISTS incoming (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    session text NOT NULL,
    wa_message_id text NOT NULL,
    chat text NOT NULL,
    sender_jid text NOT NULL,
    sender_phone text NOT NULL DEFAULT '',
    sender_lid text NOT NULL DEFAULT '',
    push_name text NOT NULL DEFAULT '',
    is_group integer NOT NULL DEFAULT 0,
    kind text NOT NULL,
    text text,
    text_hash text NOT NULL,
    quoted_id text NOT NULL DEFAULT '',
    sent_at double precision NOT NULL,
    received_at double precision NOT NULL,
    read_at double precision,
    meta text NOT NULL DEFAULT '{{}}',
    opt_out integer NOT NULL DEFAULT 0,
    truncated integer NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS incoming_by_wa_id ON incoming (session, wa_message_id);
CREATE INDEX IF NOT EXISTS incoming_by_session ON incoming (session, seq);
CREATE INDEX IF NOT EXISTS incoming_by_arrival ON incoming (received_at);
CREATE INDEX IF NOT EXISTS events_by_incoming ON events ((data::jsonb ->> 'incoming_id'))
    WHERE type = 'message.received';
CREATE TABLE IF NOT EXISTS media (
    id text PRIMARY KEY,
    sha256 text NOT NULL,
    session text NOT NULL,
    direction text NOT NULL,
    message_id text NOT NULL,
    kind text NOT NULL,
    mime text NOT NULL,
    size bigint NOT NULL,
    disk_bytes bigint NOT NULL,
    file_name text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    expires_at double precision
);
CREATE INDEX IF NOT EXISTS media_by_sha ON media (sha256);
CREATE INDEX IF NOT EXISTS media_by_expiry ON media (expires_at) WHERE expires_at IS NOT NULL
"""

# The webhook endpoints (``actors.webhooks.store``): one row per endpoint, its sealed
# secrets as bytea, its cursor (an event's ``seq``) as bigint. The webhook worker of
# the active leader reads and writes it over its own connections.
VERSION_2 = """
CREATE TABLE IF NOT EXISTS endpoints (
    id text PRIMARY KEY,
    url text NOT NULL,
    events text NOT NULL DEFAULT '[]',
    sessions text NOT NULL DEFAULT '[]',
    description text NOT NULL DEFAULT '',
    origin text NOT NULL DEFAULT 'api',
    enabled integer NOT NULL DEFAULT 1,
    disabled_reason text NOT NULL DEFAULT '',
    cursor bigint NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL DEFAULT 0,
    last_status integer,
    last_error text NOT NULL DEFAULT '',
    last_delivery_at double precision,
    secret bytea NOT NULL,
    old_secret bytea,
    old_until double precision NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    replays integer NOT NULL DEFAULT 0
)
"""

# Step n turns version n - 1 into n; version 1 is the whole store as of SQLite's 3,
# version 2 adds the webhook endpoints (kept in their own SQLite file on one host).
STEPS: tuple[str, ...] = (VERSION_1, VERSION_2)


def schema_version(db: PgConnection) -> int:
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row is not None else 0


def ensure(db: PgConnection, name: str = "the outbox store (PostgreSQL)") -> int:
    """Bring the database to version ``len(STEPS)``; returns the version it was at.
    Raises ``NewerStoreError`` (and changes nothing) for a newer one."""
    known = len(STEPS)
    with transaction(db):
        db.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME}")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        found = schema_version(db)
        if found > known:
            raise NewerStoreError(name, found, known)
        for step in STEPS[found:]:
            for statement in step.split(";"):
                if statement.strip():
                    db.execute(statement)
        if found != known:
            db.execute("DELETE FROM schema_version")
            db.execute(f"INSERT INTO schema_version (version) VALUES ({known})")
    return found
