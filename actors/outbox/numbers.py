"""Is this number on WhatsApp? The durable answer cache, the lookup budget, and the
one rule that combines them with a lookup (``check_numbers``).

A lookup is a usync query that WhatsApp watches for abuse, so every answer is kept
(SQLite, shared by all sessions and every web worker, surviving restarts), misses
are looked up in one batch per call, at most one lookup runs per number at a time,
and each session may look up only so many numbers per minute and per day. A "no"
expires sooner than a "yes": numbers join WhatsApp every day, few leave.

Plain logic: no actor or Flask imports; the caller passes the lookup itself.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from actors.transport.base import NumberInfo
from gateway.core.errors import WagateError
from gateway.core.migrations import migrate

_DAY = 86400.0
_MINUTE = 60.0
# How often a caller whose number is being looked up by someone else looks for the
# answer in the cache (a cheap indexed read) while it waits, at most the lookup timeout.
_IN_FLIGHT_POLL_SECONDS = 0.02

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    phone TEXT PRIMARY KEY, on_whatsapp INTEGER NOT NULL, jid TEXT NOT NULL,
    lid TEXT NOT NULL, business INTEGER, checked_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS budget (session TEXT NOT NULL, at REAL NOT NULL, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS budget_by_session ON budget (session, at);
CREATE INDEX IF NOT EXISTS answers_by_expiry ON answers (expires_at);
CREATE TABLE IF NOT EXISTS in_flight (phone TEXT PRIMARY KEY, until REAL NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class NumberCheck:
    """The answer for one number. ``on_whatsapp`` None: unknown, and ``reason`` says
    why (``NOT_CONNECTED``, ``TIMEOUT``, ``RATE_LIMITED``, ``IN_FLIGHT`` ...)."""

    phone: str
    on_whatsapp: bool | None
    jid: str = ""
    lid: str = ""
    business: bool | None = None
    checked_at: float | None = None
    cached: bool = False
    reason: str = ""


class LookupBudgetExceeded(WagateError):
    """The session may not look up that many numbers now; ``scope`` is ``minute`` or
    ``day`` and ``left`` what it still may."""

    def __init__(self, scope: str, left: int, retry_after: float) -> None:
        super().__init__(f"lookup budget per {scope} exhausted ({left} left)")
        self.scope = scope
        self.left = left
        self.retry_after = retry_after  # seconds until the oldest lookup leaves the window


class LookupFailed(WagateError):
    """The lookup gave no answer; ``reason`` is a stable upper-case token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Budget:
    """Numbers a session may look up (cache misses) per minute and per day."""

    per_minute: int
    per_day: int


class NumberCache:
    """The answers, the per-session lookup budget and the in-flight claims, in one
    SQLite file. Safe across threads and processes.

    One connection per process, shared by its threads under a lock: a connection per
    thread made a web worker's memory grow with every request thread that ever
    checked a number (each connection keeps its own schema and page cache, about
    0.2 MiB), and a stall that makes more threads busy (a restarting outbox) added
    them late in a worker's life (the soak of issue 16). Every use is a short
    statement, so the threads hardly wait for each other."""

    def __init__(self, path: Path, positive_ttl: float, negative_ttl: float) -> None:
        self._path = Path(path)
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._lock = threading.RLock()
        self._db_conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        with self._locked() as db:
            db.executescript(_SCHEMA)  # idempotent; commits by itself
            try:
                migrate(db, "the number cache (data_dir/numbers.sqlite)", MIGRATIONS)
            except BaseException:
                self.close()
                raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, in autocommit, for this thread alone while the
        block runs (a fresh connection and lock after a fork: neither may cross
        processes)."""
        if self._pid != os.getpid():
            self._lock, self._db_conn, self._pid = threading.RLock(), None, os.getpid()
        with self._lock:
            if self._db_conn is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                with contextlib.suppress(OSError):
                    os.chmod(self._path, 0o600)  # who asked about whom is personal data
                self._db_conn = db
            yield self._db_conn

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A transaction that takes the write lock at once (check-then-write is atomic
        across processes, and across this process's threads by the lock)."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def get(self, phones: Sequence[str], now: float) -> dict[str, NumberCheck]:
        """The unexpired answers among ``phones``."""
        if not phones:
            return {}
        marks = ",".join("?" * len(phones))
        with self._locked() as db:
            rows = db.execute(
                f"SELECT phone, on_whatsapp, jid, lid, business, checked_at FROM answers "
                f"WHERE phone IN ({marks}) AND expires_at > ?", (*phones, now)).fetchall()
        return {row[0]: NumberCheck(row[0], bool(row[1]), row[2], row[3],
                                    None if row[4] is None else bool(row[4]), row[5],
                                    cached=True) for row in rows}

    def put(self, infos: Sequence[NumberInfo], now: float) -> None:
        """Remember answers, each with the TTL of its kind; expired ones go (every
        lookup any client asks for adds a row: none may outlive its use)."""
        with self._db() as db:
            db.execute("DELETE FROM answers WHERE expires_at <= ?", (now,))
            db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.phone, int(i.on_whatsapp), i.jid, i.lid,
                  None if i.business is None else int(i.business), now,
                  now + (self._positive_ttl if i.on_whatsapp else self._negative_ttl))
                 for i in infos])

    def confirm(self, phone: str) -> None:
        """A delivery receipt came from ``phone``: it is on WhatsApp, so a cached "no"
        is stale and goes (a "yes" stays, with the address WhatsApp gave)."""
        stale = "SELECT 1 FROM answers WHERE phone = ? AND on_whatsapp = 0"
        with self._locked() as db:
            if db.execute(stale, (phone,)).fetchone() is None:
                return  # the usual case: a plain read, no write lock per receipt
        with self._db() as db:
            db.execute("DELETE FROM answers WHERE phone = ? AND on_whatsapp = 0", (phone,))

    def close(self) -> None:
        """Close this process's connection (a later use opens it again)."""
        if self._pid != os.getpid():
            return  # a connection of the parent process: never touched here
        with self._lock:
            if self._db_conn is not None:
                self._db_conn.close()
                self._db_conn = None

    def spend(self, session: str, count: int, budget: Budget, now: float) -> None:
        """Take ``count`` lookups from the session's budget, all or none."""
        if count <= 0:
            return
        with self._db() as db:
            db.execute("DELETE FROM budget WHERE at <= ?", (now - _DAY,))
            for scope, window, limit in (("minute", _MINUTE, budget.per_minute),
                                         ("day", _DAY, budget.per_day)):
                used = db.execute("SELECT COALESCE(SUM(n), 0) FROM budget WHERE session = ? "
                                  "AND at > ?", (session, now - window)).fetchone()[0]
                if used + count > limit:
                    oldest = db.execute("SELECT MIN(at) FROM budget WHERE session = ? AND "
                                        "at > ?", (session, now - window)).fetchone()[0]
                    wait = window if oldest is None else oldest + window - now
                    raise LookupBudgetExceeded(scope, max(0, limit - used), max(1.0, wait))
            db.execute("INSERT INTO budget VALUES (?, ?, ?)", (session, now, count))

    def claim(self, phones: Sequence[str], now: float, lease: float) -> list[str]:
        """Claim the lookup of each of ``phones`` that nobody else is looking up; the
        claims lapse after ``lease`` (a caller that crashed holds none for long)."""
        with self._db() as db:
            db.execute("DELETE FROM in_flight WHERE until <= ?", (now,))
            mine = []
            for phone in phones:
                cursor = db.execute("INSERT OR IGNORE INTO in_flight VALUES (?, ?)",
                                    (phone, now + lease))
                if cursor.rowcount:
                    mine.append(phone)
            return mine

    def release(self, phones: Sequence[str]) -> None:
        if phones:
            with self._db() as db:
                db.executemany("DELETE FROM in_flight WHERE phone = ?", [(p,) for p in phones])


def _versioned(db: sqlite3.Connection) -> None:
    """Version 1 is the schema _SCHEMA makes (which version 0 already had): the step
    only stamps the number, so that a later change has a version to migrate from and
    an older wagate refuses a newer cache."""


MIGRATIONS = (_versioned,)  # gateway.core.migrations: step n makes version n
CACHE_FILE = "numbers.sqlite"  # in data_dir


def open_cache(data_dir: Path, positive_ttl_hours: float,
               negative_ttl_hours: float) -> NumberCache:
    """The gateway's one answer cache in ``data_dir`` (``numbers.*`` TTLs in hours)."""
    return NumberCache(Path(data_dir) / CACHE_FILE, positive_ttl_hours * 3600,
                       negative_ttl_hours * 3600)


Lookup = Callable[[list[str]], list[NumberInfo]]


def check_numbers(cache: NumberCache, session: str, phones: Sequence[str], lookup: Lookup,
                  budget: Budget, timeout: float, *, strict_budget: bool,
                  clock: Callable[[], float] = time.time) -> list[NumberCheck]:
    """Answer each of ``phones`` (normalised; duplicates allowed), from the cache where
    it can and with one ``lookup`` for the rest.

    A lookup that fails leaves its numbers unknown (never "no"). A number someone
    else is looking up right now is waited for (up to ``timeout``), not looked up
    twice. ``strict_budget``: an exhausted budget raises ``LookupBudgetExceeded``
    (an explicit check); otherwise the misses are unknown (a send goes ahead).
    """
    now = clock()
    wanted = list(dict.fromkeys(phones))
    answers: dict[str, NumberCheck] = dict(cache.get(wanted, now))
    misses = [phone for phone in wanted if phone not in answers]
    if misses:
        answers.update(_look_up(cache, session, misses, lookup, budget, timeout,
                                strict_budget, clock))
    return [answers[phone] for phone in phones]


def _look_up(cache: NumberCache, session: str, misses: list[str], lookup: Lookup,
             budget: Budget, timeout: float, strict_budget: bool,
             clock: Callable[[], float]) -> dict[str, NumberCheck]:
    now = clock()
    mine = cache.claim(misses, now, lease=timeout * 2)
    # Another caller may have answered and released a number between our cache read
    # and this claim: its answer is in the cache now, and asking again would spend
    # the budget twice for one number.
    answers: dict[str, NumberCheck] = dict(cache.get(mine, now))
    try:
        mine_to_ask = [phone for phone in mine if phone not in answers]
        if mine_to_ask:
            try:
                cache.spend(session, len(mine_to_ask), budget, now)
            except LookupBudgetExceeded:
                if strict_budget:
                    raise
                return {phone: NumberCheck(phone, None, reason="RATE_LIMITED")
                        for phone in misses}
            answers.update(_ask(cache, mine_to_ask, lookup, clock))
    finally:
        cache.release(mine)
    others = [phone for phone in misses if phone not in answers]
    answers.update(_await_others(cache, others, timeout, clock))
    return answers


def _ask(cache: NumberCache, phones: list[str], lookup: Lookup,
         clock: Callable[[], float]) -> dict[str, NumberCheck]:
    """One lookup; its answers are cached, a failure makes them all unknown."""
    try:
        infos = lookup(phones)
    except LookupFailed as exc:
        return {phone: NumberCheck(phone, None, reason=exc.reason) for phone in phones}
    now = clock()
    cache.put(infos, now)
    return {i.phone: NumberCheck(i.phone, i.on_whatsapp, i.jid, i.lid, i.business, now)
            for i in infos}


def _await_others(cache: NumberCache, phones: list[str], timeout: float,
                  clock: Callable[[], float]) -> dict[str, NumberCheck]:
    """Numbers another caller is looking up: their answer as it lands in the cache,
    unknown (``IN_FLIGHT``) if it has not within ``timeout``."""
    found: dict[str, NumberCheck] = {}
    deadline = clock() + timeout
    while phones:
        found.update(cache.get(phones, clock()))
        phones = [phone for phone in phones if phone not in found]
        if not phones or clock() >= deadline:
            break
        time.sleep(_IN_FLIGHT_POLL_SECONDS)
    found.update({phone: NumberCheck(phone, None, reason="IN_FLIGHT") for phone in phones})
    return found
