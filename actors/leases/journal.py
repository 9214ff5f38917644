"""The sent journal: which messages WhatsApp already took, kept in the lease database.

In multi-host mode a session process can be fenced (stopped by its host's agent, or by
its own lease keeper) after WhatsApp took a message but before the result reached the
outbox on the leader. The outbox then knows only that the message was in flight, and
used to send it again as ``uncertain``: a duplicate the recipient sees (issue 16,
scenario C). The session process therefore records every accepted send here, right
after WhatsApp answered and before it reports the result, and the outbox asks here
before it treats an in-flight message of an ended process as uncertain: a message
found is SENT (with its WhatsApp id), only one not found is sent again.

- ``record`` writes one send batch in one statement: a fenced write under the
  session's lease epoch (the lease row is locked ``FOR SHARE`` in the same statement,
  as ``LeaseStore.fenced_write`` does), refused with ``StaleEpoch`` for any epoch but
  the current, unexpired one. The same statement deletes this session's rows older
  than the retention, so pruning costs no round trip of its own.
- ``find`` reads the rows of some message ids.

Every database error raises ``LeaseStoreUnavailable`` (``actors.leases.bounded`` waits
for it on a thread of its own); nothing is retried here. Single-host mode has no
journal: its outbox and session processes are on one host, and a result is lost only
with the process that would have journaled it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import LiteralString

import psycopg
from psycopg.rows import TupleRow

from actors.leases.store import LeaseStoreUnavailable, StaleEpoch, connect

SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_sent_journal (
    message_id    text PRIMARY KEY,
    session       text NOT NULL,
    wa_message_id text NOT NULL,
    sent_at       double precision NOT NULL,
    epoch         bigint NOT NULL,
    journaled_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS wagate_sent_journal_age
    ON wagate_sent_journal (session, journaled_at)
"""

# One statement: the lease check (row locked until the commit), the prune and the
# batch's rows. Nothing is written unless the epoch is the current, unexpired lease.
_RECORD: LiteralString = """
WITH lease AS (
    SELECT epoch FROM wagate_leases
    WHERE session = %(session)s AND epoch = %(epoch)s AND NOT released
      AND expires_at > statement_timestamp()
    FOR SHARE
), pruned AS (
    DELETE FROM wagate_sent_journal
    WHERE session = %(session)s
      AND journaled_at < statement_timestamp() - make_interval(secs => %(keep)s)
      AND EXISTS (SELECT 1 FROM lease)
), written AS (
    INSERT INTO wagate_sent_journal AS j
        (message_id, session, wa_message_id, sent_at, epoch, journaled_at)
    SELECT m, %(session)s, w, t, %(epoch)s, statement_timestamp()
    FROM unnest(%(ids)s::text[], %(was)s::text[], %(ats)s::float8[]) AS u(m, w, t)
    WHERE EXISTS (SELECT 1 FROM lease)
    ON CONFLICT (message_id) DO UPDATE SET
        session = EXCLUDED.session, wa_message_id = EXCLUDED.wa_message_id,
        sent_at = EXCLUDED.sent_at, epoch = EXCLUDED.epoch,
        journaled_at = EXCLUDED.journaled_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM written)
"""

_FIND: LiteralString = """
SELECT message_id, wa_message_id, sent_at, epoch FROM wagate_sent_journal
WHERE message_id = ANY(%(ids)s)
"""

_PRUNE: LiteralString = """
DELETE FROM wagate_sent_journal
WHERE journaled_at < statement_timestamp() - make_interval(secs => %(keep)s)
"""


@dataclass(frozen=True, slots=True)
class Sent:
    """One message WhatsApp took: its id there and WhatsApp's timestamp (unix)."""

    message_id: str
    wa_message_id: str
    sent_at: float
    epoch: int = 0  # the lease epoch it was journaled under (0: not yet written)


class SentJournal:
    """The journal's rows, for one process; safe to share between its threads (one
    statement at a time on one connection)."""

    def __init__(self, dsn: str, timeout_seconds: float, retention_hours: float) -> None:
        self._dsn = dsn
        self.timeout_seconds = timeout_seconds
        self.keep_seconds = retention_hours * 3600.0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._schema_ready = False

    def record(self, session: str, epoch: int, sent: Sequence[Sent]) -> int:
        """Write ``sent`` (one send batch) under ``epoch``; returns the rows written.
        Raises ``StaleEpoch`` when the epoch is not the session's current lease."""
        if not sent:
            return 0
        row = self._one(_RECORD, {
            "session": session, "epoch": epoch, "keep": self.keep_seconds,
            "ids": [s.message_id for s in sent], "was": [s.wa_message_id for s in sent],
            "ats": [float(s.sent_at) for s in sent]})
        if row is None or not row[0]:
            raise StaleEpoch(f"session {session!r}: epoch {epoch} is not its current lease "
                             "(taken over, released or expired); the sends are not journaled")
        return int(row[1])

    def find(self, message_ids: Sequence[str]) -> dict[str, Sent]:
        """The journaled sends among ``message_ids``, by message id."""
        if not message_ids:
            return {}
        rows = self._all(_FIND, {"ids": list(message_ids)})
        return {r[0]: Sent(r[0], r[1], float(r[2]), int(r[3])) for r in rows}

    def prune(self) -> int:
        """Delete every row older than the retention (``record`` prunes its own
        session's as it goes); returns how many."""
        with self._lock:
            conn = self._ready()
            try:
                return conn.execute(_PRUNE, {"keep": self.keep_seconds}).rowcount
            except psycopg.Error as exc:
                self._drop()
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --------------------------------------------------------------------- helpers

    def _one(self, statement: LiteralString, params: dict[str, object]) -> TupleRow | None:
        rows = self._all(statement, params)
        return rows[0] if rows else None

    def _all(self, statement: LiteralString, params: dict[str, object]) -> list[TupleRow]:
        with self._lock:
            conn = self._ready()
            try:
                return conn.execute(statement, params).fetchall()
            except psycopg.Error as exc:
                self._drop()
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _ready(self) -> psycopg.Connection[TupleRow]:
        """The connection, the table made on first use (by whichever process is first;
        two that race may see one error, and the table exists after)."""
        if self._conn is None or self._conn.closed:
            try:
                self._conn = connect(self._dsn, self.timeout_seconds)
            except psycopg.Error as exc:
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if not self._schema_ready:
            try:
                self._conn.execute(SCHEMA)
            except psycopg.Error as exc:
                self._drop()
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            self._schema_ready = True
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
