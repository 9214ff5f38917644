"""Session ownership leases in PostgreSQL: one row per session, the database's clock.

The multi-host mode's first promise is that one WhatsApp account is never connected
from two processes at once (issue 22). Heartbeats between hosts cannot promise that;
a row per session in one database can:

- ``acquire`` grants the lease when it is free: released, expired for longer than the
  margin, or held by this very process (a retry after an answer that got lost). Each
  grant increments ``epoch``, the fencing token: a row is never deleted, so an epoch
  is never handed out twice.
- ``renew`` extends it, only for the current owner with the current epoch, and only
  while it has not expired: a holder that missed its expiry has lost the lease even
  if nobody took it yet (it may already have stopped, or someone may be about to
  take it).
- ``release`` lets it go at once; ``current`` reads it.
- ``fenced_write`` runs a write that only the owner may make, refused for any epoch
  but the current, unexpired one; the row stays locked (``FOR SHARE``) until the
  write commits, so no grant can slip in between the check and the write.

Every time is the database's ``statement_timestamp()``: this module never sends a
time of its own, so the hosts' clocks, right or wrong, decide nothing (a holder's own
deadlines are ``actors.leases.timing``). Each statement is its own transaction on an
autocommit connection whose commits are durable (``synchronous_commit = on``, set
and checked on every connection whatever the server's default). Any database error
(a broken connection, a timeout, a table not made yet) raises
``LeaseStoreUnavailable`` and the next call connects again; nothing is retried here,
because the caller must count a lost answer against its own deadline.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg.rows import TupleRow

from actors.leases.timing import LeaseTiming
from gateway.core.errors import WagateError

SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_leases (
    session     text PRIMARY KEY,
    owner_host  text NOT NULL,
    owner_pid   integer NOT NULL,
    epoch       bigint NOT NULL CHECK (epoch > 0),
    granted_at  timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    released    boolean NOT NULL DEFAULT false
)
"""

_COLUMNS: LiteralString = ("session, owner_host, owner_pid, epoch, granted_at, expires_at, "
                           "released, statement_timestamp()")

_ACQUIRE: LiteralString = """
INSERT INTO wagate_leases AS l
    (session, owner_host, owner_pid, epoch, granted_at, renewed_at, expires_at, released)
VALUES (%(session)s, %(host)s, %(pid)s, 1, statement_timestamp(), statement_timestamp(),
        statement_timestamp() + make_interval(secs => %(lease)s), false)
ON CONFLICT (session) DO UPDATE SET
    owner_host = EXCLUDED.owner_host, owner_pid = EXCLUDED.owner_pid,
    epoch = l.epoch + 1, granted_at = EXCLUDED.granted_at,
    renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at, released = false
WHERE l.released
   OR l.expires_at + make_interval(secs => %(margin)s) <= statement_timestamp()
   OR (l.owner_host = EXCLUDED.owner_host AND l.owner_pid = EXCLUDED.owner_pid)
RETURNING """ + _COLUMNS

_RENEW: LiteralString = """
UPDATE wagate_leases
SET renewed_at = statement_timestamp(),
    expires_at = statement_timestamp() + make_interval(secs => %(lease)s)
WHERE session = %(session)s AND epoch = %(epoch)s AND owner_host = %(host)s
  AND owner_pid = %(pid)s AND NOT released AND expires_at > statement_timestamp()
RETURNING """ + _COLUMNS

_RELEASE: LiteralString = """
UPDATE wagate_leases
SET released = true, expires_at = least(expires_at, statement_timestamp())
WHERE session = %(session)s AND epoch = %(epoch)s AND owner_host = %(host)s
  AND owner_pid = %(pid)s AND NOT released
RETURNING """ + _COLUMNS

_CURRENT: LiteralString = "SELECT " + _COLUMNS + " FROM wagate_leases WHERE session = %(session)s"

_CURRENT_MANY: LiteralString = ("SELECT " + _COLUMNS +
                                " FROM wagate_leases WHERE session = ANY(%(sessions)s)")

_HELD_BY_HOST: LiteralString = """
SELECT owner_pid, epoch FROM wagate_leases
WHERE owner_host = %(host)s AND NOT released AND expires_at > statement_timestamp()
"""

_CHECK_EPOCH: LiteralString = """
SELECT epoch FROM wagate_leases
WHERE session = %(session)s AND epoch = %(epoch)s AND NOT released
  AND expires_at > statement_timestamp()
FOR SHARE
"""


class LeaseStoreUnavailable(WagateError):
    """The database could not be reached or the connection broke: the outcome of the
    operation is unknown. The caller's own deadline (``Holding.stop_by``) decides."""


class StaleEpoch(WagateError):
    """A fenced write under an epoch that is not the session's current, unexpired one."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One session's lease row as the database saw it at ``db_now``."""

    session: str
    owner_host: str
    owner_pid: int
    epoch: int
    granted_at: datetime
    expires_at: datetime
    released: bool
    db_now: datetime

    @property
    def held(self) -> bool:
        """Held by its owner at ``db_now``."""
        return not self.released and self.expires_at > self.db_now


def _lease(row: TupleRow | None) -> Lease | None:
    return None if row is None else Lease(*row)


class WeakCommits(LeaseStoreUnavailable):
    """The server runs our connection with a ``synchronous_commit`` that acknowledges a
    commit before it is on disk, although we asked for ``on`` when connecting."""


# Commits the server acknowledges only once they are flushed to its disk (and, with
# synchronous replicas, applied there): a lease grant or a journaled send that was
# acknowledged survives a crash of the server. "off", "local" and "remote_write" do not
# promise that on every setup, so they are refused.
DURABLE_COMMITS = frozenset({"on", "remote_apply"})
# Set on every connection at its start: it overrides the server's, the database's and
# the role's defaults (postgresql.conf, ALTER DATABASE/ROLE ... SET), so a server
# configured with synchronous_commit = off does not weaken our writes.
SYNCHRONOUS_COMMIT_OPTION = "-c synchronous_commit=on"


def check_durable(conn: psycopg.Connection[TupleRow]) -> None:
    """Raise ``WeakCommits`` unless ``conn`` commits durably. The option we connect with
    can still be dropped on the way (a connection pooler that ignores startup options),
    so each new connection is asked once."""
    row = conn.execute("SHOW synchronous_commit").fetchone()
    value = str(row[0]) if row else ""
    if value not in DURABLE_COMMITS:
        raise WeakCommits(
            f"synchronous_commit is {value!r} on wagate's lease database connection, not "
            "'on': connect to PostgreSQL directly, or ALTER ROLE <wagate's role> SET "
            "synchronous_commit = on (a pooler that drops startup options?); such a "
            "connection could lose an acknowledged write in a server crash, so wagate does "
            "not use it")


def connect(dsn: str, timeout_seconds: float) -> psycopg.Connection[TupleRow]:
    """An autocommit connection whose every wait is bounded by ``timeout_seconds``:
    connecting, each statement (``statement_timeout``) and unacknowledged sends on a
    dead network (``tcp_user_timeout``), so a partition cannot hold a call for long.
    Its commits are durable (``synchronous_commit``, checked: ``check_durable``)."""
    millis = max(1, int(timeout_seconds * 1000))
    conn = psycopg.connect(
        dsn, autocommit=True, connect_timeout=max(1, int(timeout_seconds + 0.999)),
        tcp_user_timeout=millis, keepalives=1, keepalives_idle=max(1, int(timeout_seconds)),
        keepalives_interval=1, keepalives_count=3,
        options=(f"-c statement_timeout={millis} -c lock_timeout={millis} "
                 + SYNCHRONOUS_COMMIT_OPTION))
    try:
        check_durable(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class LeaseStore:
    """The lease rows, on behalf of one process (``host``, ``pid``)."""

    def __init__(self, dsn: str, timing: LeaseTiming, *, host: str | None = None,
                 pid: int | None = None, timeout_seconds: float | None = None) -> None:
        self._dsn = dsn
        self.timing = timing
        # Each wait's bound; the renew interval unless the caller must answer sooner
        # (the supervisor, which asks on its actor's thread).
        self.timeout_seconds = timing.renew if timeout_seconds is None else timeout_seconds
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self._conn: psycopg.Connection[TupleRow] | None = None

    # ------------------------------------------------------------------ operations

    def ensure_schema(self) -> None:
        """Create the table if it is missing (idempotent; two processes that race to
        create it may see ``LeaseStoreUnavailable`` once, and the table exists after)."""
        self._run(SCHEMA, {})

    def acquire(self, session: str) -> Lease | None:
        """The new grant (its ``epoch``), or None while someone else holds the lease
        or it expired less than the margin ago."""
        return _lease(self._one(_ACQUIRE, self._args(session, lease=self.timing.lease,
                                                     margin=self.timing.margin)))

    def renew(self, session: str, epoch: int) -> Lease | None:
        """The renewed lease, or None: not ours, another epoch, released or expired."""
        return _lease(self._one(_RENEW, self._args(session, epoch=epoch,
                                                   lease=self.timing.lease)))

    def release(self, session: str, epoch: int) -> bool:
        """Let the lease go now; False when it was not ours (any more) to release."""
        return self._one(_RELEASE, self._args(session, epoch=epoch)) is not None

    def current(self, session: str) -> Lease | None:
        """The session's lease row (held or not), None when it never had one."""
        return _lease(self._one(_CURRENT, {"session": session}))

    def current_many(self, sessions: Sequence[str]) -> dict[str, Lease]:
        """The lease rows of ``sessions`` by session, in one statement (sessions that
        never had a lease are absent)."""
        try:
            rows = self._connection().execute(_CURRENT_MANY,
                                              {"sessions": list(sessions)}).fetchall()
        except psycopg.Error as exc:
            self._drop()
            raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {row[0]: Lease(*row) for row in rows}

    def held_by_host(self) -> set[tuple[int, int]]:
        """(owner pid, epoch) of every lease this store's host holds now, by the
        database's clock (a host's agent checks its local processes against them)."""
        try:
            rows = self._connection().execute(_HELD_BY_HOST, {"host": self.host}).fetchall()
        except psycopg.Error as exc:
            self._drop()
            raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {(int(pid), int(epoch)) for pid, epoch in rows}

    def fenced_write(self, session: str, epoch: int, statement: LiteralString,
                     params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run ``statement`` only if ``epoch`` is the session's current, unexpired
        lease; returns its row count, raises ``StaleEpoch`` otherwise."""
        try:
            conn = self._connection()
            with conn.transaction():
                if conn.execute(_CHECK_EPOCH, {"session": session, "epoch": epoch}
                                ).fetchone() is None:
                    raise StaleEpoch(f"session {session!r}: epoch {epoch} is not its current "
                                     "lease (taken over, released or expired)")
                return conn.execute(statement, params).rowcount
        except psycopg.OperationalError as exc:
            self._drop()
            raise LeaseStoreUnavailable(str(exc)) from exc

    def close(self) -> None:
        self._drop()

    # --------------------------------------------------------------------- helpers

    def _args(self, session: str, **more: object) -> dict[str, object]:
        return {"session": session, "host": self.host, "pid": self.pid, **more}

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = connect(self._dsn, self.timeout_seconds)
            except psycopg.Error as exc:
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return self._conn

    def _one(self, statement: LiteralString, params: dict[str, object]) -> TupleRow | None:
        try:
            return self._connection().execute(statement, params).fetchone()
        except psycopg.Error as exc:  # any: a missing table, a dead connection, a timeout
            self._drop()
            raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _run(self, statement: LiteralString, params: dict[str, object]) -> None:
        try:
            self._connection().execute(statement, params)
        except psycopg.Error as exc:
            self._drop()
            raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
