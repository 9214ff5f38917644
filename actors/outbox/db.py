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
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from gateway.core.errors import WagateError

if TYPE_CHECKING:
    import psycopg

# psycopg is imported where a PostgreSQL store is used, never at import: every process
# imports this module (actors.messages -> events), and psycopg with its types is about
# 90 modules and 6 MiB of every process's memory, which a single host never needs.

SCHEMA_NAME = "wagate_outbox"
# What pg_stat_activity shows for the store's connection (an operator, and the tests,
# tell the active leader's outbox by it).
APPLICATION_NAME = "wagate-outbox"
# Each statement's bound, and the connection's: the outbox answers on its one thread,
# so a partition must not hold it longer than this (plus the grace, for the answer to
# a statement the server ended at its timeout).
STATEMENT_TIMEOUT_SECONDS = 3.0
ANSWER_GRACE_SECONDS = 0.5

# pg_advisory_lock's key of the store's one writer ("wagate outbox writer")
WRITER_LOCK = 0x7761676174657772

# The ``reason`` of a refusal for want of the database, and when to retry.
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
STORE_RETRY_SECONDS = 5

_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+", re.IGNORECASE)


class StoreUnavailable(WagateError, RuntimeError):
    """PostgreSQL could not be reached, or refused the statement. ``outcome_unknown``:
    it was a COMMIT whose answer was lost, so the transaction may or may not have
    been committed."""

    code = "STORE_UNAVAILABLE"

    def __init__(self, message: str, outcome_unknown: bool = False,
                 broken: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown
        self.broken = broken  # the connection is gone (or was never made)


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


class _Hung(WagateError):
    """A call that did not come back within its bound (internal: the caller turns it
    into ``StoreUnavailable``)."""


class _Worker:
    """One daemon thread that runs a connection's calls, one at a time, so that the
    caller can stop waiting: a frozen server's kernel still acknowledges packets, so
    neither ``statement_timeout`` (the server is stopped) nor ``tcp_user_timeout`` ends
    the call (as ``actors.leases.bounded``). A worker whose call hangs is abandoned
    with its connection; daemon, so it never holds up the process's exit."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True, name="wagate-outbox-db").start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, done, box = item
            try:
                box.append((True, call()))
            except BaseException as exc:  # handed to the caller as it is
                box.append((False, exc))
            done.set()

    def run(self, call: Callable[[], Any], timeout: float) -> Any:
        done, box = threading.Event(), []  # type: ignore[var-annotated]
        self._calls.put((call, done, box))
        if not done.wait(timeout):
            raise _Hung
        ok, value = box[0]
        if ok:
            return value
        raise value

    def finish(self, conn: psycopg.Connection[Any] | None) -> None:
        """Close ``conn`` after the call in progress (if any), then end the thread."""
        if conn is not None:
            self._calls.put((conn.close, threading.Event(), []))
        self._calls.put(None)


class PgConnection:
    """The subset of ``sqlite3.Connection`` the outbox store uses, on PostgreSQL.

    Every call is bounded by ``timeout_seconds`` plus a moment, also against a frozen
    server. After a call found no database (no connection, or no answer in time),
    the next ones fail at once for ``STORE_RETRY_SECONDS``: the outbox answers on one
    thread, and must not spend every request waiting for the same dead server."""

    def __init__(self, dsn: str, timeout_seconds: float = STATEMENT_TIMEOUT_SECONDS,
                 exclusive: bool = False,
                 application_name: str = APPLICATION_NAME) -> None:
        """``exclusive``: every connection first takes the writer lock (``WRITER_LOCK``,
        a session-level advisory lock, held as long as the connection lives), and one
        that cannot is not used. So one outbox writes the store at a time: a leader's
        outbox that has not yet noticed the leadership moved cannot write next to the
        new leader's, whose start waits until the old one's connection is gone.
        ``application_name``: what pg_stat_activity shows (another user of the schema,
        the webhook worker, names itself, so the outbox's connection stays the one
        called ``APPLICATION_NAME``)."""
        self._dsn = dsn
        self.timeout_seconds = timeout_seconds
        self.exclusive = exclusive
        self.application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._worker: _Worker | None = None  # started with the first call
        self._lost_transaction = False  # the connection broke inside a transaction
        self._down_until = 0.0  # monotonic: fail at once until then
        try:
            self._connection()  # fail at open, not at the first write
        except BaseException:
            self.close()
            raise

    @property
    def in_transaction(self) -> bool:
        if self._lost_transaction:
            return True  # until the caller's ROLLBACK clears it
        conn = self._conn
        return conn is not None and not conn.closed and _busy(conn)

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
        """Close the connection and end the worker (a later call starts both again)."""
        conn, self._conn = self._conn, None
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.finish(conn)
        elif conn is not None:
            conn.close()

    # --------------------------------------------------------------------- helpers

    def _run(self, statement: str, call: Callable[[Any], Any]) -> Any:
        import psycopg

        conn = self._connection()
        in_transaction = _busy(conn)

        def work() -> Any:  # on the worker: touches only ``conn``
            cursor = conn.cursor()
            try:
                call(cursor)  # the rows are fetched with it: reading them waits on nothing
            except psycopg.IntegrityError as exc:
                # A constraint refused the row (a unique key): the store's callers see
                # the same error as on SQLite; the database is fine.
                raise sqlite3.IntegrityError(str(exc)) from exc
            except psycopg.Error as exc:
                broken = conn.closed or conn.broken
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}",
                                       outcome_unknown=broken and statement == "COMMIT",
                                       broken=broken) from exc
            return cursor

        try:
            return self._bounded(work, statement == "COMMIT")
        except StoreUnavailable as exc:
            if exc.broken or conn is not self._conn:
                # Gone (or abandoned): a transaction it held is lost with it, and must
                # not go on, half done, on a new connection.
                if conn is self._conn:
                    self.close()
                self._lost_transaction = in_transaction and statement not in (
                    "ROLLBACK", "COMMIT")
            raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            if time.monotonic() < self._down_until:
                raise StoreUnavailable("PostgreSQL did not answer a moment ago; not asked "
                                       f"again for {STORE_RETRY_SECONDS} s")
            dsn, timeout, exclusive = self._dsn, self.timeout_seconds, self.exclusive
            name = self.application_name
            self._conn = self._bounded(lambda: _open(dsn, timeout, exclusive, name), False,
                                       connecting=True)
        return self._conn

    def _bounded(self, work: Callable[[], Any], committing: bool,
                 connecting: bool = False) -> Any:
        """``work()`` on the worker, waited for at most the bound; on no answer the
        worker and its connection are abandoned (closed once the call returns). No
        answer, or no connection, pauses the next tries (a connection the server
        ended, as at its restart, is made again at once)."""
        if self._worker is None:
            self._worker = _Worker()
        try:
            return self._worker.run(work, self.timeout_seconds + ANSWER_GRACE_SECONDS)
        except _Hung:
            self.close()  # closed by the worker once the hung call returns
            self._down_until = time.monotonic() + STORE_RETRY_SECONDS
            raise StoreUnavailable(
                f"PostgreSQL did not answer within {self.timeout_seconds:g} s",
                outcome_unknown=committing, broken=True) from None
        except StoreUnavailable:
            if connecting:
                self._down_until = time.monotonic() + STORE_RETRY_SECONDS
            raise


def _busy(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` is inside a transaction."""
    from psycopg import pq

    return conn.info.transaction_status != pq.TransactionStatus.IDLE


def _open(dsn: str, timeout_seconds: float, exclusive: bool,
          application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    """A connection (``connect``), holding the writer lock when ``exclusive``."""
    import psycopg

    conn = connect(dsn, timeout_seconds, application_name)
    if not exclusive:
        return conn
    try:
        held = conn.execute(f"SELECT pg_try_advisory_lock({WRITER_LOCK})").fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}", broken=True) from exc
    if held is None or not held[0]:
        conn.close()
        raise StoreUnavailable("another outbox (the active leader's) writes the store now; "
                               "this one waits until its connection ends", broken=True)
    return conn


def connect(dsn: str, timeout_seconds: float,
            application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    """An autocommit connection with client-side binding, rows by index and key, the
    store's schema first on its search path, every wait bounded by ``timeout_seconds``
    and durable commits (checked, as the lease store does)."""
    import psycopg

    from actors.leases.store import SYNCHRONOUS_COMMIT_OPTION, check_durable

    millis = max(1, int(timeout_seconds * 1000))
    try:
        conn: psycopg.Connection[Any] = psycopg.connect(
            dsn, autocommit=True, cursor_factory=psycopg.ClientCursor,
            application_name=application_name,
            row_factory=_row_factory,
            connect_timeout=max(1, int(timeout_seconds + 0.999)), tcp_user_timeout=millis,
            keepalives=1, keepalives_idle=max(1, int(timeout_seconds)),
            keepalives_interval=1, keepalives_count=3,
            options=(f"-c statement_timeout={millis} -c lock_timeout={millis} "
                     f"-c search_path={SCHEMA_NAME} " + SYNCHRONOUS_COMMIT_OPTION))
    except psycopg.Error as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}", broken=True) from exc
    try:
        check_durable(conn)
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}", broken=True) from exc
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
