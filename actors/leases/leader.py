"""Leadership as a PostgreSQL advisory lock: one active leader at a time (issue 22).

The lock is tied to the database session that took it: it is held while that
connection lives and is let go by the server the moment the connection ends, cleanly
or not. A standby that keeps trying (``try_acquire``) takes over as soon as the
holder's connection is gone. A holder that dies with its machine leaves a connection
the server only notices through TCP keep-alives, so the lock's connection asks the
server to probe it every second after ``keepalive_seconds`` of silence and to give up
after three unanswered probes: takeover then happens about ``keepalive_seconds + 3``
seconds after the holder's death.

The holder must also notice when *it* lost the lock (its connection broke, the
database restarted): ``holds`` asks the server and is False on any error, and a
holder that sees False must stop acting as the leader before a standby's
``try_acquire`` can succeed.
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg.rows import TupleRow

from actors.leases.store import SYNCHRONOUS_COMMIT_OPTION

LEADER_LOCK = "wagate.leader"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit lock key for ``name`` (PostgreSQL's bigint)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaderLock:
    """One contender for a named advisory lock, on a connection of its own."""

    def __init__(self, dsn: str, name: str = LEADER_LOCK, *,
                 keepalive_seconds: int = 5, timeout_seconds: float = 5.0) -> None:
        self._dsn = dsn
        self.key = advisory_key(name)
        self._keepalive = keepalive_seconds
        self._timeout = timeout_seconds
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._held = False

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this contender holds it now.
        Never waits for the holder; False too when the database cannot be reached."""
        if self._held:
            return self.holds()
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.OperationalError:
            self._drop()
            return False
        self._held = bool(row and row[0])
        return self._held

    def holds(self) -> bool:
        """Whether this contender still holds the lock, by the server's word."""
        if not self._held or self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND objid = (%s::bigint & 4294967295)::oid "
                "AND classid = ((%s::bigint >> 32) & 4294967295)::oid",
                (self.key, self.key)).fetchone()
        except psycopg.OperationalError:
            self._drop()
            return False
        self._held = bool(row and row[0])
        return self._held

    def backend_pid(self) -> int | None:
        """The server process of this contender's connection (tests end it)."""
        return None if self._conn is None else self._conn.info.backend_pid

    def release(self) -> None:
        """Let the lock go by ending the connection (which frees it in any case)."""
        self._drop()

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            seconds = self._keepalive
            self._conn = psycopg.connect(
                self._dsn, autocommit=True,
                connect_timeout=max(1, int(self._timeout + 0.999)),
                keepalives=1, keepalives_idle=seconds, keepalives_interval=1,
                keepalives_count=3, tcp_user_timeout=int(self._timeout * 1000),
                # Set like every connection of ours (actors.leases.store), though an
                # advisory lock writes nothing: nothing of ours commits weakly.
                options=(f"-c tcp_keepalives_idle={seconds} -c tcp_keepalives_interval=1 "
                         f"-c tcp_keepalives_count=3 "
                         f"-c statement_timeout={int(self._timeout * 1000)} "
                         + SYNCHRONOUS_COMMIT_OPTION))
        return self._conn

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            conn.close()
