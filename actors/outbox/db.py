"""The outbox store's connection: SQLite on one host, PostgreSQL in multi-host mode.

Why one interface: in multi-host mode a standby leader takes over the outbox, so the
message records, queues, idempotency keys, event log, incoming messages and media
references must be where every leader can reach them (PostgreSQL), while a single
host keeps its embedded SQLite file. The store's code (``actors.outbox.store``,
``events``, ``incoming``) is written once against the small part of
``sqlite3.Connection`` it uses: ``execute``, ``executemany``, ``in_transaction``,
``close``. On SQLite that is the connection itself, untouched; ``PgConnection`` gives
the same calls on psycopg 3:

- the SQL text is SQLite's, translated: ``?`` placeholders, ``INDEXED BY`` hints
  dropped (PostgreSQL's planner has statistics), ``BEGIN IMMEDIATE`` is ``BEGIN``,
  a ``PRAGMA`` does nothing. The few statements that differ in meaning (JSON
  functions, ``INSERT OR IGNORE``, the event cursor's high-water mark) ask
  ``is_postgres`` and say their own PostgreSQL text.
- parameters are bound on the client (``psycopg.ClientCursor``): ``? IS NULL`` with
  an untyped NULL is fine there, as in SQLite.
- the tables live in the schema ``wagate_outbox`` (the connection's ``search_path``),
  so the same names (``messages``, ``events``...) serve both backends and nothing
  clashes with the lease tables (``wagate_*`` in ``public``).
- rows are read by index and by key, like ``sqlite3.Row``.
- a constraint that refuses a row raises ``sqlite3.IntegrityError`` as on SQLite;
  every other database error is ``StoreUnavailable``: the outbox answers it as a write that
  could not be made now (nothing acknowledged that was not committed), never as a
  crash. After a broken connection the next statement connects again, except inside
  the transaction that lost it: that one fails until it is rolled back, so no half of
  a transaction is ever written on a new connection.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import pq

from actors.leases.store import SYNCHRONOUS_COMMIT_OPTION, check_durable
from gateway.core.errors import WagateError

SCHEMA_NAME = "wagate_outbox"
# What pg_stat_activity shows for the store's connection (an operator, and the tests,
# tell the active leader's outbox by it).
APPLICATION_NAME = "wagate-outbox"
# Each statement's bound, and the connection's: the outbox answers on its one thread,
# so a partition must not hold it longer than this.
STATEMENT_TIMEOUT_SECONDS = 5.0

# The ``reason`` of a refusal for want of the database, and when to retry.
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
STORE_RETRY_SECONDS = 5

_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+", re.IGNORECASE)


class StoreUnavailable(WagateError, RuntimeError):
    """PostgreSQL could not be reached, or refused the statement. ``outcome_unknown``:
    it was a COMMIT whose answer was lost, so the transaction may or may not have
    been committed."""

    code = "STORE_UNAVAILABLE"

    def __init__(self, message: str, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class Row(tuple[Any, ...]):
    """A row by index (``row[0]``, unpacking) and by column name (``row["id"]``,
    ``dict(row)``), as ``sqlite3.Row``."""

    _names: tuple[str, ...]
    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: tuple[str, ...],
                index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names, row._index = names, index
        return row

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)


def _row_factory(cursor: Any) -> Any:
    names = tuple(column.name for column in cursor.description or ())
    index = {name: n for n, name in enumerate(names)}
    return lambda values: Row(values, names, index)


class _NoRows:
    """What a PRAGMA answers on PostgreSQL: nothing."""

    rowcount = 0
    lastrowid = None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


def translate(sql: str) -> str:
    """SQLite's SQL as PostgreSQL takes it (see the module's docstring)."""
    text = _INDEXED_BY.sub("", sql).replace("%", "%%").replace("?", "%s")
    if text.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    return text


class PgConnection:
    """The subset of ``sqlite3.Connection`` the outbox store uses, on PostgreSQL."""

    def __init__(self, dsn: str, timeout_seconds: float = STATEMENT_TIMEOUT_SECONDS) -> None:
        self._dsn = dsn
        self.timeout_seconds = timeout_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._lost_transaction = False  # the connection broke inside a transaction
        self._connection()  # fail at open, not at the first write

    @property
    def in_transaction(self) -> bool:
        if self._lost_transaction:
            return True  # until the caller's ROLLBACK clears it
        conn = self._conn
        return conn is not None and not conn.closed and \
            conn.info.transaction_status != pq.TransactionStatus.IDLE

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        statement = sql.strip().upper()
        if statement.startswith("PRAGMA"):
            return _NoRows()
        if self._lost_transaction:
            if statement in ("ROLLBACK", "COMMIT"):
                self._lost_transaction = False
                if statement == "COMMIT":
                    raise StoreUnavailable("the connection to PostgreSQL broke inside the "
                                           "transaction: nothing of it was committed")
                return _NoRows()
            raise StoreUnavailable("the connection to PostgreSQL broke inside this "
                                   "transaction; roll it back")
        return self._run(statement, lambda cur: cur.execute(translate(sql), tuple(params)))

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]]) -> Any:
        rows = [tuple(p) for p in seq_of_params]
        if self._lost_transaction:
            raise StoreUnavailable("the connection to PostgreSQL broke inside this "
                                   "transaction; roll it back")
        if not rows:
            return _NoRows()
        return self._run(sql.strip().upper(),
                         lambda cur: cur.executemany(translate(sql), rows))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # --------------------------------------------------------------------- helpers

    def _run(self, statement: str, call: Any) -> Any:
        conn = self._connection()
        in_transaction = conn.info.transaction_status != pq.TransactionStatus.IDLE
        cursor = conn.cursor()
        try:
            call(cursor)
        except psycopg.IntegrityError as exc:
            # A constraint refused the row (a unique key): the store's callers see the
            # same error as on SQLite; the database is fine.
            raise sqlite3.IntegrityError(str(exc)) from exc
        except psycopg.Error as exc:
            broken = conn.closed or conn.broken
            if broken:
                self.close()
                self._lost_transaction = in_transaction and statement != "ROLLBACK"
                if statement == "COMMIT":
                    self._lost_transaction = False
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}",
                                   outcome_unknown=broken and statement == "COMMIT"
                                   ) from exc
        return cursor

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn, self.timeout_seconds)
        return self._conn


def connect(dsn: str, timeout_seconds: float) -> psycopg.Connection[Any]:
    """An autocommit connection with client-side binding, rows by index and key, the
    store's schema first on its search path, every wait bounded by ``timeout_seconds``
    and durable commits (checked, as the lease store does)."""
    millis = max(1, int(timeout_seconds * 1000))
    try:
        conn: psycopg.Connection[Any] = psycopg.connect(
            dsn, autocommit=True, cursor_factory=psycopg.ClientCursor,
            application_name=APPLICATION_NAME,
            row_factory=_row_factory,
            connect_timeout=max(1, int(timeout_seconds + 0.999)), tcp_user_timeout=millis,
            keepalives=1, keepalives_idle=max(1, int(timeout_seconds)),
            keepalives_interval=1, keepalives_count=3,
            options=(f"-c statement_timeout={millis} -c lock_timeout={millis} "
                     f"-c search_path={SCHEMA_NAME} " + SYNCHRONOUS_COMMIT_OPTION))
    except psycopg.Error as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    try:
        check_durable(conn)
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


Db = sqlite3.Connection | PgConnection


def is_postgres(db: Db) -> bool:
    return isinstance(db, PgConnection)


# What a failed store write raises: the OS's and SQLite's errors, or PostgreSQL's.
STORE_ERRORS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, StoreUnavailable)


@contextlib.contextmanager
def transaction(db: Db) -> Iterator[None]:
    """Several changes in one transaction (nested: the outer one's). A COMMIT that
    failed (SQLITE_FULL, a broken connection) may leave the transaction open: it is
    rolled back, so the next one starts clean."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(StoreUnavailable):
                db.execute("ROLLBACK")
        raise
