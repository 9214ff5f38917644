"""The session registry in PostgreSQL (multi-host mode with leases).

Every leader keeps its remembered sessions (wanted or not, paired, last state, link
epoch) on its own disk (``actors.supervisor.registry``). With leases the leaders share
the outbox's store, so they must share this too: a standby that takes over must know
every session the old leader ran (or it starts none of them), and its outbox must see
the same link epoch for each (a message accepted under an epoch its link does not
have is failed as from a logged-out device; a queue of a session it does not know is
failed as forgotten). Two tables:

- ``wagate_sessions(session, entry jsonb)``: a write merges only the fields that
  changed (``entry || changes``, into an existing row only: a session another leader
  deleted stays deleted), so two leaders' writes about different fields of one
  session both stay; a new entry never replaces one that is there (``excluded ||
  existing``: the existing fields win); a session made again after this leader
  deleted it replaces the row whole (its new link epoch must win);
- ``wagate_session_epoch``: one row, the link epochs' high-water mark for every
  leader, and the registry's id (random, made with the table: a leader that finds
  another id than the one it last brought its own entries to is looking at a new
  database). ``next_epoch`` raises the mark above the caller's own (one statement, so
  two leaders never get the same number).

Errors raise ``LeaseStoreUnavailable`` (the connection is dropped and made again on
the next call); the caller bounds every call (``actors.leases.bounded``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.rows import TupleRow

from actors.leases.bounded import BoundedQuestion
from actors.leases.store import LeaseStoreUnavailable, connect

SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_sessions (
    session    text PRIMARY KEY,
    entry      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
CREATE TABLE IF NOT EXISTS wagate_session_epoch (
    id       integer PRIMARY KEY CHECK (id = 1),
    epoch    bigint NOT NULL,
    registry text NOT NULL DEFAULT gen_random_uuid()::text
);
INSERT INTO wagate_session_epoch (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING
"""

_LOAD: LiteralString = "SELECT session, entry FROM wagate_sessions"
_EPOCH: LiteralString = "SELECT epoch, registry FROM wagate_session_epoch WHERE id = 1"

# changes win over what is stored (the fields this leader changed); a session another
# leader deleted stays deleted (never a partial entry)
_MERGE: LiteralString = """
UPDATE wagate_sessions SET entry = entry || %(entry)s::jsonb,
    updated_at = statement_timestamp()
WHERE session = %(session)s
"""
# this entry wins whole (a session made again after this leader deleted it)
_REPLACE: LiteralString = """
INSERT INTO wagate_sessions AS s (session, entry) VALUES (%(session)s, %(entry)s::jsonb)
ON CONFLICT (session) DO UPDATE
    SET entry = excluded.entry, updated_at = statement_timestamp()
"""
# what is stored wins (a new entry, or one brought in from a leader's own disk)
_ADD: LiteralString = """
INSERT INTO wagate_sessions AS s (session, entry) VALUES (%(session)s, %(entry)s::jsonb)
ON CONFLICT (session) DO UPDATE
    SET entry = excluded.entry || s.entry, updated_at = statement_timestamp()
"""
_DROP: LiteralString = "DELETE FROM wagate_sessions WHERE session = ANY(%(sessions)s::text[])"
_NEXT_EPOCH: LiteralString = """
INSERT INTO wagate_session_epoch AS e (id, epoch) VALUES (1, %(floor)s + 1)
ON CONFLICT (id) DO UPDATE SET epoch = greatest(e.epoch, %(floor)s) + 1
RETURNING epoch
"""
_RAISE_EPOCH: LiteralString = """
INSERT INTO wagate_session_epoch AS e (id, epoch) VALUES (1, %(floor)s)
ON CONFLICT (id) DO UPDATE SET epoch = greatest(e.epoch, %(floor)s)
"""

Entries = dict[str, dict[str, Any]]
Loaded = tuple[Entries, int, str]  # the entries, the epoch mark, the registry's id
T = TypeVar("T")


class PgRegistry:
    """The shared registry's rows, for one supervisor (one connection)."""

    def __init__(self, dsn: str, timeout_seconds: float) -> None:
        self._dsn = dsn
        self.timeout_seconds = timeout_seconds
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._schema_ready = False

    def load(self) -> Loaded:
        """Every entry, the epochs' high-water mark, and the registry's id (made with
        the table: a new database is another registry)."""
        def read(conn: psycopg.Connection[TupleRow]) -> Loaded:
            entries = {str(s): dict(e) for s, e in conn.execute(_LOAD).fetchall()}
            row = conn.execute(_EPOCH).fetchone()
            assert row is not None  # made with the schema
            return entries, int(row[0]), str(row[1])
        return self._do(read)

    def write(self, changes: Mapping[str, Mapping[str, Any]],
              added: Mapping[str, Mapping[str, Any]],
              replaced: Mapping[str, Mapping[str, Any]], dropped: Iterable[str],
              epoch_floor: int = 0) -> None:
        """In one transaction: add ``added`` under what is stored, ``replaced`` over it,
        merge ``changes`` into the stored entries, delete ``dropped``, and raise the
        epoch mark to ``epoch_floor``."""
        gone = sorted(set(dropped))

        def run(conn: psycopg.Connection[TupleRow]) -> None:
            with conn.transaction():
                for statement, rows in ((_ADD, added), (_REPLACE, replaced),
                                        (_MERGE, changes)):
                    for session, entry in rows.items():
                        conn.execute(statement, {"session": session,
                                                 "entry": json.dumps(dict(entry))})
                if gone:
                    conn.execute(_DROP, {"sessions": gone})
                if epoch_floor > 0:
                    conn.execute(_RAISE_EPOCH, {"floor": epoch_floor})
        self._do(run)

    def next_epoch(self, floor: int) -> int:
        """A link epoch no leader has had: above the stored mark and above ``floor``."""
        def run(conn: psycopg.Connection[TupleRow]) -> int:
            row = conn.execute(_NEXT_EPOCH, {"floor": floor}).fetchone()
            assert row is not None  # RETURNING of an upsert always has its row
            return int(row[0])
        return self._do(run)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _do(self, work: Callable[[psycopg.Connection[TupleRow]], T]) -> T:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._dsn, self.timeout_seconds)
            if not self._schema_ready:
                self._conn.execute(SCHEMA)
                self._schema_ready = True
            return work(self._conn)
        except psycopg.Error as exc:  # any: a dead connection, a timeout, a race on CREATE
            self.close()
            self._schema_ready = False  # a table dropped under us is made again
            raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


class BoundedRegistry:
    """``PgRegistry``'s calls for the supervisor's thread, each waited for at most
    ``timeout_seconds`` (``actors.leases.bounded``): the answer, or why there is none
    (a short sentence). A call still hanging answers the next one at once."""

    def __init__(self, registry: PgRegistry, timeout_seconds: float) -> None:
        self.registry = registry
        self._question: BoundedQuestion[Any] = BoundedQuestion(timeout_seconds,
                                                               "registry-question")

    def load(self) -> Loaded | str:
        answer: Loaded | str = self._question.ask(self.registry.load)
        return answer

    def write(self, changes: Mapping[str, Mapping[str, Any]],
              added: Mapping[str, Mapping[str, Any]],
              replaced: Mapping[str, Mapping[str, Any]], dropped: Iterable[str],
              epoch_floor: int = 0) -> str | None:
        answer = self._question.ask(
            lambda: self.registry.write(changes, added, replaced, dropped, epoch_floor))
        return answer if isinstance(answer, str) else None

    def next_epoch(self, floor: int) -> int | str:
        answer: int | str = self._question.ask(lambda: self.registry.next_epoch(floor))
        return answer

    def close(self) -> None:
        if not self._question.hanging:  # a hanging question keeps its connection
            self.registry.close()
