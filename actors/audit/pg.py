"""The audit chain in PostgreSQL, for multi-host mode with ``cluster.database_url``.

Several leaders share one database, and the chain must go on when a standby takes
over: a file on the old leader's disk cannot do that. Here the chain is the table
``wagate_audit``, one row per entry: its ``seq``, the entry's exact line (the same
text ``actors.audit.log`` writes to a file, so one verifier checks both), its ``hash``
and ``prev``. The entry format, ``canonical`` and ``entry_hash`` are the file log's.

One writer, no fork. ``PgAuditLog.append`` is a single statement that inserts the
entry only when

- ``prev`` is the hash of the table's last row and ``seq`` follows its ``seq``, and
  ``seq``, ``prev`` and ``hash`` are each unique: of two writers that append after the
  same entry exactly one row goes in (the other's insert finds the conflict, after
  waiting for the first to commit, and inserts nothing); and
- when the log was opened for a leader (``leader_address``): the ``wagate_leader`` row
  names this leader and that row's database session holds the leadership lock now
  (``actors.leases.leader``), so a leader that lost the lock writes nothing more.

A refused append raises ``AuditRefused`` (nothing was written, and the log marks
itself ``broken``): the caller reopens, which reads the head again. The audit actor
keeps the refused entry in memory and writes it once it holds the chain again (as
the active leader), or refuses it to a caller that waits for the answer; nothing is
dropped silently. After a failover the new leader's ``open`` reads the head the old
leader left and appends after it: one chain, verifiable end to end.

Every database error raises ``AuditError`` (the actor retries as for a full disk).
Not here: retention (``audit.max_files`` bounds files; rows stay until an operator
archives them) and torn lines (a row is committed whole or not at all).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg.rows import TupleRow

from actors.audit.log import (
    GENESIS,
    RECIPIENT_MODES,
    AuditError,
    AuditNotLeader,
    AuditRefused,
    AuditUnreachable,
    TornTail,
    Verification,
    load_secret,
    next_entry,
    render_recipient,
    row_record,
    verify_records,
)
from actors.leases.leader import LEADER_LOCK, LEADER_SCHEMA, advisory_key
from actors.leases.store import connect

TABLE = "wagate_audit"

SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_audit (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    prev       text NOT NULL UNIQUE,
    hash       text NOT NULL UNIQUE,
    entry      text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT statement_timestamp()
)
"""

_HEAD: LiteralString = "SELECT seq, hash FROM wagate_audit ORDER BY seq DESC LIMIT 1"

# Whether the wagate_leader row names this leader and its backend holds the lock now
# (true when no leader is named: a writer that is not a leader, e.g. the CLI).
_LEADING: LiteralString = """
(%(address)s::text = '' OR EXISTS (
    SELECT 1 FROM wagate_leader l
    WHERE l.name = %(name)s::text AND l.address = %(address)s::text
      AND l.host = %(host)s::text
      AND EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted
                  AND k.pid = l.backend_pid
                  AND k.objid = (%(key)s::bigint & 4294967295)::oid
                  AND k.classid = ((%(key)s::bigint >> 32) & 4294967295)::oid)))
"""

# One statement: the head and leadership checks and the insert. Of two writers after
# one head, the second's insert waits for the first's commit, then conflicts and does
# nothing (ON CONFLICT covers the unique seq, prev and hash).
_APPEND: LiteralString = """
WITH head AS (""" + _HEAD + """),
fence AS (SELECT """ + _LEADING + """ AS ok),
written AS (
    INSERT INTO wagate_audit (seq, prev, hash, entry)
    SELECT %(seq)s::bigint, %(prev)s::text, %(hash)s::text, %(entry)s::text
    WHERE (SELECT ok FROM fence)
      AND COALESCE((SELECT seq FROM head), 0) = %(seq)s::bigint - 1
      AND COALESCE((SELECT hash FROM head), %(genesis)s::text) = %(prev)s::text
    ON CONFLICT DO NOTHING
    RETURNING seq
)
SELECT (SELECT ok FROM fence), (SELECT count(*) FROM written)
"""

_LEADING_NOW: LiteralString = "SELECT " + _LEADING

# Entries of processes that may not write the chain (a standby leader, a leader that
# stepped down), for the active leader to chain (``PgAuditLog.drain``). ``fields`` is
# the JSON object of the cleaned fields (recipients already rendered by the queuer).
QUEUE_SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_audit_queue (
    id         bigserial PRIMARY KEY,
    host       text NOT NULL,
    event      text NOT NULL,
    request_id text NOT NULL,
    fields     text NOT NULL,
    queued_at  text NOT NULL
)
"""
_QUEUE: LiteralString = """
INSERT INTO wagate_audit_queue (host, event, request_id, fields, queued_at)
VALUES (%(host)s, %(event)s, %(request_id)s, %(fields)s, %(queued_at)s)
"""
_QUEUED: LiteralString = """
SELECT id, host, event, request_id, fields, queued_at FROM wagate_audit_queue
ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
_UNQUEUE: LiteralString = "DELETE FROM wagate_audit_queue WHERE id = ANY(%(ids)s)"
DRAIN_ROWS = 200

_ROWS: LiteralString = ("SELECT seq, entry FROM wagate_audit WHERE seq > %(after)s "
                        "ORDER BY seq LIMIT %(limit)s")
_TAIL: LiteralString = ("SELECT entry FROM (SELECT seq, entry FROM wagate_audit ORDER BY seq "
                        "DESC LIMIT %(count)s) t ORDER BY seq")
BATCH_ROWS = 1000


class PgAuditLog:
    """Appends entries to the chain in ``wagate_audit``; the same interface as
    ``AuditLog`` where the audit actor and the CLI use it."""

    # A row is committed whole: there is never a torn line to set aside.
    torn: TornTail | None = None

    def __init__(self, dsn: str, recipients: str = "masked", *, secret_dir: Path | None = None,
                 leader_address: str = "", leader_host: str = "",
                 timeout_seconds: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        """``leader_address`` and ``leader_host``: this leader's entry in
        ``wagate_leader``; every append is refused unless it holds the leadership lock.
        "" for a writer that is not a leader. ``secret_dir``: where the secret of hashed
        recipients is (the audit directory)."""
        if recipients not in RECIPIENT_MODES:
            raise AuditError(f"audit.recipients = {recipients!r}; use one of "
                             f"{', '.join(RECIPIENT_MODES)}")
        self._dsn = dsn
        self.recipients = recipients
        self._secret_dir = secret_dir
        self._secret = b""
        self._clock = clock
        self._timeout = timeout_seconds
        self._fence = {"address": leader_address, "host": leader_host, "name": LEADER_LOCK,
                       "key": advisory_key(LEADER_LOCK)}
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._closed = False
        self.seq = 0
        self.last_hash = GENESIS
        self.broken = False  # an append was refused or failed: reopen to go on

    @classmethod
    def open(cls, dsn: str, recipients: str = "masked", *, secret_dir: Path | None = None,
             leader_address: str = "", leader_host: str = "", timeout_seconds: float = 5.0,
             clock: Callable[[], float] = time.time) -> PgAuditLog:
        """Connect, make the table if missing, and read the head of the chain. Raises
        ``AuditNotLeader`` when opened for a leader that does not hold the lock."""
        log = cls(dsn, recipients, secret_dir=secret_dir, leader_address=leader_address,
                  leader_host=leader_host, timeout_seconds=timeout_seconds, clock=clock)
        if recipients == "hashed":
            if secret_dir is None:
                raise AuditError("hashed recipients need the audit secret's directory")
            log._secret = load_secret(secret_dir)
        try:
            conn = log._connection()
            _ensure_schema(conn)
            row = conn.execute(_LEADING_NOW, log._fence).fetchone()
            if not (row and row[0]):
                raise AuditNotLeader("this leader does not hold the leadership lock: only "
                                     "the active leader writes the audit chain")
            log._read_head(conn)
        except psycopg.Error as exc:
            log.close()
            raise AuditUnreachable(f"cannot open the audit chain in the database: "
                                   f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            log.close()
            raise
        return log

    def append(self, event: str, fields: Mapping[str, Any] | None = None,
               request_id: str = "") -> dict[str, Any]:
        """Write one entry (committed before this returns) and return it; raises
        ``AuditRefused`` when it would not continue the chain's current head."""
        if self._closed or self.broken:
            raise AuditError("the audit log is closed")
        entry = next_entry(self.seq, self.last_hash, self._clock(), event, fields,
                           request_id, self._render)
        try:
            self._insert(self._connection(), entry)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        self.seq, self.last_hash = entry["seq"], entry["hash"]
        return entry

    def drain(self, limit: int = DRAIN_ROWS) -> int:
        """Chain up to ``limit`` entries other processes queued (``PgAuditQueue``: a
        standby leader, a leader that stepped down), oldest first, and delete them from
        the queue in the same transaction: each is chained exactly once, or stays
        queued. Returns how many were chained; raises like ``append``."""
        if self._closed or self.broken:
            raise AuditError("the audit log is closed")
        seq, last = self.seq, self.last_hash
        try:
            conn = self._connection()
            with conn.transaction():
                rows = conn.execute(_QUEUED, {"limit": limit}).fetchall()
                for _id, host, event, request_id, text, queued_at in rows:
                    fields = {**_object(text), "queued_by": host, "queued_at": queued_at}
                    entry = next_entry(seq, last, self._clock(), event, fields, request_id,
                                       _as_recorded)
                    self._insert(conn, entry)
                    seq, last = entry["seq"], entry["hash"]
                if rows:
                    conn.execute(_UNQUEUE, {"ids": [r[0] for r in rows]})
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        self.seq, self.last_hash = seq, last
        return len(rows)

    def retire(self) -> None:
        """Retention applies to files only; rows are kept."""

    def close(self) -> None:
        self._closed = True
        self._drop()

    # ---- internals ------------------------------------------------------------------------

    def _render(self, value: Any) -> str | None:
        return render_recipient(value, self.recipients, self._secret)

    def _insert(self, conn: psycopg.Connection[TupleRow], entry: dict[str, Any]) -> None:
        """The one statement that appends ``entry`` after the current head, or refuses."""
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        params = {**self._fence, "seq": entry["seq"], "prev": entry["prev"],
                  "hash": entry["hash"], "entry": line, "genesis": GENESIS}
        row = conn.execute(_APPEND, params).fetchone()
        if row is None or not row[0]:
            self.broken = True
            raise AuditNotLeader(f"audit entry {entry['seq']} ({entry['event']}) refused: this "
                                 "leader no longer holds the leadership lock")
        if not row[1]:
            self.broken = True
            raise AuditRefused(f"audit entry {entry['seq']} ({entry['event']}) refused: the "
                               "chain no longer ends at this writer's last entry (another "
                               "writer appended); reopen to continue from the new head")

    def _failed(self, exc: psycopg.Error) -> AuditError:
        self.broken = True  # the outcome is unknown: reopen reads the head
        self._drop()
        return AuditUnreachable(f"could not write the audit chain to the database: "
                                f"{type(exc).__name__}: {exc}")

    def _read_head(self, conn: psycopg.Connection[TupleRow]) -> None:
        row = conn.execute(_HEAD).fetchone()
        if row is not None:
            self.seq, self.last_hash = int(row[0]), str(row[1])

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = connect(self._dsn, self._timeout)
            except psycopg.Error as exc:
                raise AuditUnreachable(f"cannot reach the audit database: "
                                       f"{type(exc).__name__}: {exc}") from exc
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class PgAuditQueue:
    """A standby leader's writer: its entries go into ``wagate_audit_queue`` (durable,
    whatever happens to this process), and the active leader chains them. The same
    interface as the chain's writers; ``append`` returns the entry without seq/hash."""

    torn: TornTail | None = None
    broken = False  # an insert that fails raises; the queue has no head to lose

    def __init__(self, dsn: str, host: str, recipients: str = "masked", *,
                 secret_dir: Path | None = None, timeout_seconds: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._dsn = dsn
        self.host = host
        self.recipients = recipients
        self._secret = load_secret(secret_dir) if recipients == "hashed" and secret_dir else b""
        self._timeout = timeout_seconds
        self._clock = clock
        self._conn: psycopg.Connection[TupleRow] | None = None

    @classmethod
    def open(cls, dsn: str, host: str, recipients: str = "masked", *,
             secret_dir: Path | None = None, timeout_seconds: float = 5.0,
             clock: Callable[[], float] = time.time) -> PgAuditQueue:
        queue = cls(dsn, host, recipients, secret_dir=secret_dir,
                    timeout_seconds=timeout_seconds, clock=clock)
        try:
            _ensure_schema(queue._connection())
        except psycopg.Error as exc:
            queue.close()
            raise AuditError(f"cannot reach the audit database: {type(exc).__name__}: "
                             f"{exc}") from exc
        return queue

    def append(self, event: str, fields: Mapping[str, Any] | None = None,
               request_id: str = "") -> dict[str, Any]:
        """Queue one entry (committed before this returns)."""
        entry = next_entry(0, GENESIS, self._clock(), event, fields, request_id,
                           lambda v: render_recipient(v, self.recipients, self._secret))
        body = {k: v for k, v in entry.items()
                if k not in ("seq", "time", "event", "request_id", "prev", "hash")}
        try:
            self._connection().execute(_QUEUE, {
                "host": self.host, "event": entry["event"],
                "request_id": entry.get("request_id", ""),
                "fields": json.dumps(body, separators=(",", ":"), ensure_ascii=True),
                "queued_at": entry["time"]})
        except psycopg.Error as exc:
            self.close()
            raise AuditUnreachable(f"could not queue the audit entry in the database: "
                                   f"{type(exc).__name__}: {exc}") from exc
        return {**body, "event": entry["event"], "time": entry["time"], "seq": 0, "hash": ""}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = connect(self._dsn, self._timeout)
            except psycopg.Error as exc:
                raise AuditUnreachable(f"cannot reach the audit database: "
                                       f"{type(exc).__name__}: {exc}") from exc
        return self._conn


_TABLES_EXIST: LiteralString = ("SELECT to_regclass('wagate_audit') IS NOT NULL AND "
                                 "to_regclass('wagate_audit_queue') IS NOT NULL AND "
                                 "to_regclass('wagate_leader') IS NOT NULL")


def _ensure_schema(conn: psycopg.Connection[TupleRow]) -> None:
    """The tables, made by whoever comes first (a standby looks every second: it only
    reads the catalog once they exist). Two that race may see one error, and the
    tables exist after."""
    row = conn.execute(_TABLES_EXIST).fetchone()
    if row and row[0]:
        return
    for schema in (LEADER_SCHEMA, SCHEMA, QUEUE_SCHEMA):
        conn.execute(schema)


def _as_recorded(value: Any) -> str | None:
    """A recipient a queuer already rendered: kept as it is."""
    return None if value is None else str(value)


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"fields_unreadable": text[:200]}
    return value if isinstance(value, dict) else {"fields": value}


# ---- reading -------------------------------------------------------------------------------


def _rows(conn: psycopg.Connection[TupleRow]) -> Iterator[tuple[int, str]]:
    """Every row in seq order, a batch at a time (the table may be large)."""
    after = 0
    while True:
        batch = conn.execute(_ROWS, {"after": after, "limit": BATCH_ROWS}).fetchall()
        for seq, text in batch:
            yield int(seq), str(text)
        if len(batch) < BATCH_ROWS:
            return
        after = int(batch[-1][0])


def verify_pg(dsn: str, expect_hash: str | None = None, timeout_seconds: float = 30.0
              ) -> Verification:
    """Check the whole chain in the database with the file log's checks (a row is a
    line); a problem names the row's seq. Raises ``AuditError`` when the database
    cannot be read."""
    try:
        with connect(dsn, timeout_seconds) as conn:
            if not _table_exists(conn):
                return verify_records(iter(()), [], False, expect_hash)
            records = (row_record(TABLE, seq, text, index == 0)
                       for index, (seq, text) in enumerate(_rows(conn)))
            return verify_records(records, [(1, Path(TABLE))], False, expect_hash)
    except psycopg.Error as exc:
        raise AuditError(f"cannot read the audit chain from the database: "
                         f"{type(exc).__name__}: {exc}") from exc


def read_tail_pg(dsn: str, count: int, timeout_seconds: float = 30.0) -> list[str]:
    """The last ``count`` entries' lines, oldest first."""
    try:
        with connect(dsn, timeout_seconds) as conn:
            if count <= 0 or not _table_exists(conn):
                return []
            return [str(r[0]) for r in conn.execute(_TAIL, {"count": count}).fetchall()]
    except psycopg.Error as exc:
        raise AuditError(f"cannot read the audit chain from the database: "
                         f"{type(exc).__name__}: {exc}") from exc


def _table_exists(conn: psycopg.Connection[TupleRow]) -> bool:
    row = conn.execute("SELECT to_regclass('wagate_audit') IS NOT NULL").fetchone()
    return bool(row and row[0])
