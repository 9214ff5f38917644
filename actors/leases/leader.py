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
``try_acquire`` can succeed. A holder that lost the lock leaves it alone for
``retake_after_seconds`` (``actors.leases.standing``): a standby gets its turn.

Members must find the active leader (they join one convention leader at a time):
a contender that takes the lock writes its convention address in ``wagate_leader``,
on the very connection that holds the lock, with that connection's backend pid.
``LeaderDirectory.current`` reads the row and says whether that backend still holds
the lock, so a dead holder's row is never taken for the active leader.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import LiteralString

import psycopg
from psycopg.rows import TupleRow

from actors.leases.standing import may_retake
from actors.leases.store import SYNCHRONOUS_COMMIT_OPTION, LeaseStoreUnavailable, connect

LEADER_LOCK = "wagate.leader"

LEADER_SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_leader (
    name        text PRIMARY KEY,
    address     text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    backend_pid integer NOT NULL,
    since       timestamptz NOT NULL
)
"""

_PUBLISH: LiteralString = """
INSERT INTO wagate_leader (name, address, host, pid, backend_pid, since)
VALUES (%(name)s, %(address)s, %(host)s, %(pid)s, pg_backend_pid(), statement_timestamp())
ON CONFLICT (name) DO UPDATE SET
    address = EXCLUDED.address, host = EXCLUDED.host, pid = EXCLUDED.pid,
    backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since
"""

# Whether the backend pid of the row holds the lock now (the key split as pg_locks
# shows an advisory bigint key: high half in classid, low half in objid).
_HELD_BY: LiteralString = (
    "EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted "
    "AND k.pid = l.backend_pid AND k.objid = (%(key)s::bigint & 4294967295)::oid "
    "AND k.classid = ((%(key)s::bigint >> 32) & 4294967295)::oid)")

_CURRENT: LiteralString = ("SELECT address, host, pid, " + _HELD_BY
                           + " FROM wagate_leader l WHERE name = %(name)s")


def advisory_key(name: str) -> int:
    """A stable signed 64-bit lock key for ``name`` (PostgreSQL's bigint)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaderLock:
    """One contender for a named advisory lock, on a connection of its own."""

    def __init__(self, dsn: str, name: str = LEADER_LOCK, *,
                 keepalive_seconds: int = 5, timeout_seconds: float = 5.0,
                 address: str = "", host: str = "", pid: int = 0,
                 retake_after_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dsn = dsn
        self.name = name
        self.key = advisory_key(name)
        # Published in wagate_leader on every grant (members join it); "" publishes none.
        self.address, self.host, self.pid = address, host, pid
        self._keepalive = keepalive_seconds
        self._timeout = timeout_seconds
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._held = False
        # After losing the lock, no new try for this long (a standby's turn first).
        self._retake_after = retake_after_seconds
        self._clock = clock
        self.lost_at: float | None = None  # when it last found the lock lost (clock)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this contender holds it now.
        Never waits for the holder; False too when the database cannot be reached, and
        for ``retake_after_seconds`` after it found the lock lost."""
        if self._held:
            return self.holds()
        if not may_retake(self.lost_at, self._clock(), self._retake_after):
            return False
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            if row and row[0] and self.address:
                self._publish(conn)
        except psycopg.Error:  # unreachable, or the row not written: not the leader yet
            self._drop()
            return False
        self._held = bool(row and row[0])
        return self._held

    def _publish(self, conn: psycopg.Connection[TupleRow]) -> None:
        """Write this contender's address as the active leader's, on the connection
        that holds the lock (its backend pid is how readers know the row is live)."""
        conn.execute(LEADER_SCHEMA)
        conn.execute(_PUBLISH, {"name": self.name, "address": self.address,
                                "host": self.host, "pid": self.pid})

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
            row = None  # the connection is gone, and the lock with it
        if not (row and row[0]):
            self.lost_at = self._clock()  # no new try before a standby had its turn
            self._drop()
        return self._held

    def backend_pid(self) -> int | None:
        """The server process of this contender's connection (tests end it)."""
        return None if self._conn is None else self._conn.info.backend_pid

    def release(self) -> None:
        """Let the lock go now, then end the connection. Closing alone frees it only
        when the server's backend has exited, which happens after ``close`` returns:
        a standby or a reader of ``wagate_leader`` could still see it held."""
        conn = self._conn
        if self._held and conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):  # gone: its end frees the lock
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
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


@dataclass(frozen=True, slots=True)
class Published:
    """The row of the last contender that took the lock; ``held``: it holds it now."""

    address: str
    host: str
    pid: int
    held: bool


class LeaderDirectory:
    """Reads which leader holds the lock (members ask it to know whom to join)."""

    def __init__(self, dsn: str, name: str = LEADER_LOCK, timeout_seconds: float = 1.0
                 ) -> None:
        self._dsn = dsn
        self.name = name
        self.key = advisory_key(name)
        self.timeout_seconds = timeout_seconds
        self._conn: psycopg.Connection[TupleRow] | None = None

    def current(self) -> Published | None:
        """The published leader (None: no leader ever published one); raises
        ``LeaseStoreUnavailable`` when the database does not answer."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._dsn, self.timeout_seconds)
            row = self._conn.execute(_CURRENT, {"name": self.name, "key": self.key}
                                     ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None  # no leader has taken the lock on this database yet
        except psycopg.Error as exc:
            self.close()
            raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if row is None:
            return None
        return Published(str(row[0]), str(row[1]), int(row[2]), bool(row[3]))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
