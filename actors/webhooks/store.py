"""The webhook endpoints: in SQLite under ``data_dir/webhooks`` on one host, in
PostgreSQL in multi-host mode with a database.

An endpoint row holds its url, its filters (event types, sessions; empty = all), its
state (enabled, or disabled with a reason), its cursor (the seq of the last event it
acknowledged, or skipped by its filters), the failures of the event it is stuck on, when
to try next, and its last delivery's status. Its signing secret is stored sealed with
the storage key (``actors.session.sealed_store``, bound to the endpoint's id, so a secret
copied onto another row does not open); without a key (the demo) it is stored as is. A
rotation keeps the previous secret until ``old_until``: both sign meanwhile.
One connection per store object (one thread at a time).

Why PostgreSQL: the webhook worker runs on the active leader only. With its endpoints
in each leader's own file, a new leader after a failover knew neither the endpoints
made through the API on the old one nor how far each was delivered. With a
``database_url`` the table ``endpoints`` is in the outbox's schema (``wagate_outbox``,
``actors.outbox.db.PgConnection``, not exclusive: the outbox's connection holds the
writer lock), so every leader reads the same rows and cursors, and every leader has the
same storage key to open the secrets. The table is made by a versioned step of
``actors.outbox.pg_schema`` (version 2), not by a ``CREATE TABLE`` here: one version
number says what a database holds, ``ensure`` refuses a newer one, runs under its
advisory lock (two leaders starting at once never both migrate), and a database
made by version 1 gets the table on upgrade. The SQL text is one for both backends
(``?`` is translated); where they differ (``MAX(a, b)`` is SQLite's ``GREATEST``) the
store asks ``is_postgres``. A database error is ``StoreUnavailable``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from actors.outbox import pg_schema
from actors.outbox.db import Db, PgConnection, is_postgres, transaction
from actors.session.sealed_store import StoreId, StoreKey, is_sealed, seal, unseal
from gateway.core.errors import WagateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL DEFAULT '[]',
    sessions TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT 'api',
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT NOT NULL DEFAULT '',
    cursor INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    last_delivery_at REAL,
    secret BLOB NOT NULL,
    old_secret BLOB,
    old_until REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0
);
"""
# What pg_stat_activity shows for the webhook worker's connections (not the outbox's).
APPLICATION_NAME = "wagate-webhooks"
OPENED_MAX = 256  # unsealed secrets kept by one store (EndpointStore._opened)
COLUMNS = ("id, url, events, sessions, description, origin, enabled, disabled_reason, "
           "cursor, failures, next_attempt_at, last_status, last_error, last_delivery_at, "
           "created_at, replays")


class UnknownEndpoint(WagateError, KeyError):
    """No endpoint with that id."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint as shown and as the loop uses it: never its secret."""

    id: str
    url: str
    events: tuple[str, ...]
    sessions: tuple[str, ...]
    description: str
    origin: str
    enabled: bool
    disabled_reason: str
    cursor: int
    failures: int
    next_attempt_at: float
    last_status: int | None
    last_error: str
    last_delivery_at: float | None
    created_at: float
    replays: int = 0  # set_cursor calls so far: a 2xx of an older request must not undo one

    def wants(self, event_type: str, session: str) -> bool:
        """Whether an event passes this endpoint's filters (an empty filter passes all)."""
        return ((not self.events or event_type in self.events)
                and (not self.sessions or session in self.sessions))


def new_endpoint_id() -> str:
    return "wh_" + os.urandom(12).hex()


class EndpointStore:
    def __init__(self, directory: Path, key: StoreKey | None, *, durable: bool = True,
                 database_url: str = "") -> None:
        """``durable=False``: each commit survives a crash of the process (SIGKILL) but
        maybe not of the machine (WAL with ``synchronous=NORMAL``: no fsync per
        commit). That is what the delivery loop's writes need: a cursor move lost to a
        power cut only sends those events again (delivery is at least once), and an fsync
        per delivered event halved the rate. The API's writes (a new endpoint, a
        rotated secret) keep the default, fsynced before the caller hears of them.

        ``database_url`` (multi-host mode with a database): the endpoints are in
        PostgreSQL, where a new leader finds them; ``directory`` is then not used and
        ``durable`` means nothing (PostgreSQL's commits are durable). Raises
        ``StoreUnavailable`` when the database cannot be reached (within its bound)."""
        self._db: Db = (_open_postgres(database_url) if database_url
                        else _open_sqlite(directory, durable))
        # MAX(a, b) of two values is GREATEST on PostgreSQL (its MAX is the aggregate).
        self._greatest = "GREATEST" if is_postgres(self._db) else "MAX"
        self._key = key
        # (endpoint, sealed secret) -> secret: unsealing on every request was a tenth of
        # its CPU. A blob names one secret for good (its nonce is new at every seal) and
        # was checked for that endpoint when it was unsealed; the map is cleared when it
        # grows past OPENED_MAX (endpoints are few).
        self._opened: dict[tuple[str, bytes], str] = {}

    def close(self) -> None:
        self._db.close()

    # -------------------------------------------------------------- secrets

    def _seal(self, endpoint_id: str, secret: str) -> bytes:
        if self._key is None:
            return secret.encode("utf-8")
        return seal(self._key, secret.encode("utf-8"), StoreId("webhooks", endpoint_id))

    def _open(self, endpoint_id: str, blob: bytes) -> str:
        entry = (endpoint_id, bytes(blob))
        known = self._opened.get(entry)
        if known is None:
            if len(self._opened) >= OPENED_MAX:
                self._opened.clear()
            known = self._opened[entry] = self._unseal(endpoint_id, entry[1])
        return known

    def _unseal(self, endpoint_id: str, blob: bytes) -> str:
        if not is_sealed(blob):
            return bytes(blob).decode("utf-8")
        if self._key is None:
            raise ValueError(f"webhook {endpoint_id}'s secret is encrypted and no storage "
                             "key is configured; configure the key it was stored with")
        what = f"the secret of webhook {endpoint_id}"
        return unseal(self._key, bytes(blob), what, StoreId("webhooks", endpoint_id)
                      ).decode("utf-8")

    def secrets(self, endpoint_id: str, now: float) -> list[str]:
        """The secrets that sign now: the current one, and the previous one while the
        rotation's overlap lasts."""
        row = self._db.execute("SELECT secret, old_secret, old_until FROM endpoints "
                               "WHERE id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise UnknownEndpoint(endpoint_id)
        found = [self._open(endpoint_id, row[0])]
        if row[1] is not None and now < float(row[2]):
            found.append(self._open(endpoint_id, row[1]))
        return found

    # -------------------------------------------------------------- rows

    def create(self, url: str, events: Sequence[str], sessions: Sequence[str],
               description: str, secret: str, now: float, cursor: int = 0,
               endpoint_id: str | None = None, origin: str = "api") -> Endpoint:
        """A new enabled endpoint starting after ``cursor`` (the log's head: it hears
        what happens from now on, a replay reaches back)."""
        new_id = endpoint_id or new_endpoint_id()
        self._db.execute(
            "INSERT INTO endpoints (id, url, events, sessions, description, origin, cursor, "
            "next_attempt_at, secret, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (new_id, url, json.dumps(list(events)), json.dumps(list(sessions)),
             description, origin, cursor, now, self._seal(new_id, secret), now))
        return self.get(new_id)

    def get(self, endpoint_id: str) -> Endpoint:
        row = self._db.execute(f"SELECT {COLUMNS} FROM endpoints WHERE id = ?",
                               (endpoint_id,)).fetchone()
        if row is None:
            raise UnknownEndpoint(endpoint_id)
        return _endpoint(row)

    def all(self) -> list[Endpoint]:
        rows = self._db.execute(f"SELECT {COLUMNS} FROM endpoints ORDER BY created_at, id")
        return [_endpoint(r) for r in rows.fetchall()]

    def update(self, endpoint_id: str, *, url: str | None = None,
               events: Sequence[str] | None = None, sessions: Sequence[str] | None = None,
               description: str | None = None) -> Endpoint:
        self.get(endpoint_id)
        changes = {"url": url, "description": description,
                   "events": None if events is None else json.dumps(list(events)),
                   "sessions": None if sessions is None else json.dumps(list(sessions))}
        with transaction(self._db):  # all of the change or none (a lost connection)
            for column, value in changes.items():
                if value is not None:
                    self._db.execute(f"UPDATE endpoints SET {column} = ? WHERE id = ?",
                                     (value, endpoint_id))
        return self.get(endpoint_id)

    def set_enabled(self, endpoint_id: str, enabled: bool, reason: str, now: float
                    ) -> Endpoint:
        """Disable with a reason, or enable: it resumes at once from its cursor, the
        event it was stuck on first, with a fresh schedule."""
        self.get(endpoint_id)
        if enabled:
            self._db.execute("UPDATE endpoints SET enabled = 1, disabled_reason = '', "
                             "failures = 0, next_attempt_at = ? WHERE id = ?",
                             (now, endpoint_id))
        else:
            self._db.execute("UPDATE endpoints SET enabled = 0, disabled_reason = ? "
                             "WHERE id = ?", (reason, endpoint_id))
        return self.get(endpoint_id)

    def rotate(self, endpoint_id: str, secret: str, now: float, overlap: float) -> None:
        """``secret`` signs from now on; the current one also signs for ``overlap`` s."""
        self.get(endpoint_id)
        self._db.execute("UPDATE endpoints SET old_secret = secret, secret = ?, "
                         "old_until = ? WHERE id = ?",
                         (self._seal(endpoint_id, secret), now + overlap, endpoint_id))

    def delete(self, endpoint_id: str) -> None:
        if self._db.execute("DELETE FROM endpoints WHERE id = ?",
                            (endpoint_id,)).rowcount == 0:
            raise UnknownEndpoint(endpoint_id)

    def set_cursor(self, endpoint_id: str, cursor: int, now: float) -> Endpoint:
        """Replay: deliver again every event after ``cursor``, starting now."""
        self.get(endpoint_id)
        self._db.execute("UPDATE endpoints SET cursor = ?, failures = 0, next_attempt_at = ?,"
                         " replays = replays + 1 WHERE id = ?",
                         (max(0, cursor), now, endpoint_id))
        return self.get(endpoint_id)

    def skipped(self, endpoint_id: str, seq: int, replays: int) -> None:
        """Events up to ``seq`` are not for this endpoint (its filters); as ``delivered``,
        a replay since the endpoint was read wins."""
        self._db.execute(f"UPDATE endpoints SET cursor = {self._greatest}(cursor, ?) "
                         "WHERE id = ? AND replays = ?", (seq, endpoint_id, replays))

    def delivered(self, endpoint_id: str, seq: int, status: int, now: float,
                  replays: int) -> None:
        """Event ``seq`` was acknowledged: the cursor moves to it, unless a replay
        (``set_cursor``) happened since the endpoint was read as of ``replays``: the
        replay wins, and the event is sent again."""
        self._db.execute(
            f"UPDATE endpoints SET cursor = CASE WHEN replays = ? THEN {self._greatest}"
            "(cursor, ?) ELSE cursor END, failures = 0, last_status = ?, last_error = '', "
            "last_delivery_at = ?, next_attempt_at = ? WHERE id = ?",
            (replays, seq, status, now, now, endpoint_id))

    def failed(self, endpoint_id: str, status: int | None, error: str, now: float,
               next_attempt_at: float) -> None:
        self._db.execute(
            "UPDATE endpoints SET failures = failures + 1, last_status = ?, last_error = ?, "
            "last_delivery_at = ?, next_attempt_at = ? WHERE id = ?",
            (status, error, now, next_attempt_at, endpoint_id))


def _open_sqlite(directory: Path, durable: bool) -> sqlite3.Connection:
    """The store's file in ``directory`` (made owner-only), its table made."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One thread uses a store at a time; the one that closes it may be another (a
    # worker's store is closed after its pool has stopped), hence no thread check.
    db = sqlite3.connect(directory / "endpoints.sqlite3", timeout=30,
                         isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    if not durable:
        db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def _open_postgres(database_url: str) -> PgConnection:
    """A connection to the shared schema (not exclusive: the outbox holds the writer
    lock), its tables made or migrated (``pg_schema.ensure``)."""
    db = PgConnection(database_url, application_name=APPLICATION_NAME)
    try:
        pg_schema.ensure(db, "the webhook endpoints (PostgreSQL)")
    except BaseException:
        db.close()
        raise
    return db


def _endpoint(row: tuple[object, ...]) -> Endpoint:
    return Endpoint(
        id=str(row[0]), url=str(row[1]), events=tuple(json.loads(str(row[2]))),
        sessions=tuple(json.loads(str(row[3]))), description=str(row[4]),
        origin=str(row[5]), enabled=bool(row[6]), disabled_reason=str(row[7]),
        cursor=int(str(row[8])), failures=int(str(row[9])),
        next_attempt_at=float(str(row[10])),
        last_status=None if row[11] is None else int(str(row[11])),
        last_error=str(row[12]),
        last_delivery_at=None if row[13] is None else float(str(row[13])),
        created_at=float(str(row[14])), replays=int(str(row[15])))
