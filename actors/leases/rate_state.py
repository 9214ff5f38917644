"""The rate windows in PostgreSQL (multi-host mode): one table every leader shares.

The outbox runs on the active leader; a standby that takes over must continue with
the same per-recipient, global and warm-up windows, or a failover would forget them
and let a burst through (issue 22). This is ``actors.outbox.rate_state.RateState`` on
one table, ``wagate_rate_state(key, state jsonb, expires_at)``:

- ``get`` reads one key (expired rows read as absent until ``expire`` deletes them);
- ``write`` sets and deletes the keys of one send in one statement, so an admitted
  send costs one round trip and its keys change together or not at all;
- ``expire`` deletes what is past its expiry (the outbox's prune tick);
- ``clock_offset`` is the database's clock minus the leader's, read once per process:
  the windows' times are on the database's clock, the one every leader reads, so a
  standby on a host whose clock is off by some seconds still sees the windows as the
  old leader left them. Expiry times are the database's too.

Every call runs on a thread of the state's own (``StandingQuestion``): the outbox's
thread waits at most ``QUESTION_SECONDS`` (a frozen server acknowledges packets and
answers nothing, which no socket timeout notices), then hears ``RateStateUnavailable``
and refuses the send. One standing thread rather than ``BoundedQuestion``'s thread per
question: starting a thread cost a send 0.27 ms of CPU, more than the statement
(tests/perf/bench_rate_state.py). Commits are durable (``synchronous_commit = on``, as
every connection of ours).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.rows import TupleRow

from actors.leases.store import LeaseStoreUnavailable, connect
from actors.outbox.rate_state import RateStateConflict, RateStateUnavailable, Write

QUESTION_SECONDS = 1.0  # the outbox's thread waits at most this for the database

SCHEMA: LiteralString = """
CREATE TABLE IF NOT EXISTS wagate_rate_state (
    key        text PRIMARY KEY,
    state      jsonb NOT NULL,
    expires_at double precision,
    version    bigint NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS wagate_rate_state_expiry
    ON wagate_rate_state (expires_at) WHERE expires_at IS NOT NULL;
CREATE OR REPLACE FUNCTION wagate_rate_state_written(written bigint, wanted bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF written <> wanted THEN
        RAISE EXCEPTION 'a rate window changed since it was read'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END $$
"""

_DB_NOW: LiteralString = "extract(epoch FROM statement_timestamp())::float8"

_GET: LiteralString = ("SELECT state, version FROM wagate_rate_state WHERE key = %(key)s "
                       "AND (expires_at IS NULL OR expires_at > " + _DB_NOW + ")")

# One statement, one transaction: the deletes and the writes of one send. A key is
# written only over the version its writer read (an expired row counts as absent,
# version 0; NULL: write whatever is there); if any is not, the function raises and
# nothing of the statement is kept.
_WRITE: LiteralString = """
WITH input AS (
    SELECT k, s::jsonb AS s, CASE WHEN t IS NULL THEN NULL ELSE """ + _DB_NOW + """ + t END AS x, v
    FROM unnest(%(keys)s::text[], %(states)s::text[], %(ttls)s::float8[], %(versions)s::int8[])
        AS u(k, s, t, v)
), gone AS (
    DELETE FROM wagate_rate_state WHERE key = ANY(%(deletes)s::text[])
), updated AS (
    UPDATE wagate_rate_state AS r SET state = i.s, expires_at = i.x, version = r.version + 1
    FROM input AS i
    WHERE r.key = i.k AND (i.v IS NULL OR r.version = i.v
          OR (i.v = 0 AND r.expires_at <= """ + _DB_NOW + """))
    RETURNING r.key, r.version
), inserted AS (
    INSERT INTO wagate_rate_state (key, state, expires_at, version)
    SELECT i.k, i.s, i.x, 1 FROM input AS i
    WHERE NOT EXISTS (SELECT 1 FROM wagate_rate_state AS r WHERE r.key = i.k)
    ON CONFLICT (key) DO NOTHING
    RETURNING key, version
), written AS (
    SELECT key, version FROM updated UNION ALL SELECT key, version FROM inserted
)
SELECT wagate_rate_state_written((SELECT count(*) FROM written), %(wanted)s),
       (SELECT coalesce(jsonb_object_agg(key, version), '{}'::jsonb) FROM written)
"""

_DELETE_ONLY: LiteralString = "DELETE FROM wagate_rate_state WHERE key = ANY(%(deletes)s::text[])"

_EXPIRE: LiteralString = ("DELETE FROM wagate_rate_state WHERE expires_at <= " + _DB_NOW)

_CLOCK: LiteralString = "SELECT extract(epoch FROM clock_timestamp())::float8"

T = TypeVar("T")


class StandingQuestion:
    """``BoundedQuestion``'s promise on one thread that lives as long as this object:
    the caller waits at most ``timeout_seconds`` for each answer; while a question
    still hangs, the next caller hears so at once, and a late answer is thrown away.
    One caller thread at a time (the outbox's)."""

    def __init__(self, timeout_seconds: float, name: str) -> None:
        self.timeout_seconds = timeout_seconds
        self.name = name
        self._questions: queue.SimpleQueue[tuple[int, Callable[[], Any]] | None] = (
            queue.SimpleQueue())
        self._answers: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._asked = 0  # the number of the last question asked
        self._unanswered = False  # the last question's answer has not come back yet
        self._thread: threading.Thread | None = None

    @property
    def hanging(self) -> bool:
        self._collect_late()
        return self._unanswered

    def ask(self, question: Callable[[], T]) -> T | str:
        """``question()``'s answer, or why there is none (a short sentence)."""
        if self.hanging:
            return "an earlier question is still unanswered"
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True, name=self.name)
            self._thread.start()
        self._asked += 1
        self._unanswered = True
        self._questions.put((self._asked, question))
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                number, answer = self._answers.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return f"no answer within {self.timeout_seconds:g} s"
            if number == self._asked:
                self._unanswered = False
                result: T | str = answer
                return result

    def close(self) -> None:
        """End the thread once it is idle (a hung one ends with the process)."""
        if self._thread is not None:
            self._questions.put(None)
            self._thread = None

    def _collect_late(self) -> None:
        while self._unanswered:
            try:
                number, _ = self._answers.get_nowait()
            except queue.Empty:
                return
            if number == self._asked:
                self._unanswered = False

    def _serve(self) -> None:
        while (item := self._questions.get()) is not None:
            number, question = item
            try:
                answer: Any = question()
            except LeaseStoreUnavailable as exc:
                answer = (str(exc).splitlines() or [""])[0][:200]
            except Exception as exc:  # the thread serves on; the caller hears why
                answer = f"{type(exc).__name__}: {exc}"[:200]
            self._answers.put((number, answer))


class PgRateState:
    """The table, for the outbox of one leader process (each leader runs one)."""

    shared = True

    def __init__(self, dsn: str, timeout_seconds: float = QUESTION_SECONDS) -> None:
        self._dsn = dsn
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._schema_ready = False
        self._offset: float | None = None
        self._question = StandingQuestion(timeout_seconds, "rate-state")

    # ------------------------------------------------------------------ RateState

    def get(self, key: str) -> tuple[Any | None, int]:
        rows = self._ask(lambda: self._all(_GET, {"key": key}))
        return (rows[0][0], int(rows[0][1])) if rows else (None, 0)

    def write(self, sets: Sequence[Write], deletes: Sequence[str] = ()) -> dict[str, int]:
        """Raises ``RateStateConflict`` when a key's version is not the one named."""
        if not sets:
            if deletes:
                self._ask(lambda: self._run(_DELETE_ONLY, {"deletes": list(deletes)}))
            return {}
        params = {"deletes": list(deletes), "keys": [w[0] for w in sets],
                  "states": [json.dumps(w[1]) for w in sets], "ttls": [w[2] for w in sets],
                  "versions": [w[3] for w in sets], "wanted": len(sets)}
        answer = self._ask(lambda: self._written(params))
        if answer is None:
            raise RateStateConflict("a rate window changed since it was read (another "
                                    "leader's outbox wrote it)")
        return answer

    def clock_offset(self, local_now: float) -> float:
        """The database's clock minus ``local_now``, measured at the first call (the
        round trip's middle stands for the moment the database read its clock)."""
        if self._offset is None:
            started = time.monotonic()
            rows = self._ask(lambda: self._all(_CLOCK, {}))
            half_trip = (time.monotonic() - started) / 2
            self._offset = float(rows[0][0]) - (local_now + half_trip)
        return self._offset

    def expire(self) -> int:
        return int(self._ask(lambda: self._run(_EXPIRE, {})))

    def close(self) -> None:
        if self._question.hanging:
            return  # its thread holds the connection; the process's end closes it
        self._question.close()
        with self._lock:
            self._drop()

    # --------------------------------------------------------------------- helpers

    def _ask(self, question: Callable[[], T]) -> T:
        answer = self._question.ask(question)
        if isinstance(answer, str):
            raise RateStateUnavailable(f"the rate windows' database did not answer: {answer}")
        return answer

    def _written(self, params: dict[str, Any]) -> dict[str, int] | None:
        """The new versions, or None when a version did not match (nothing written)."""
        with self._lock:
            conn = self._ready()
            try:
                row = conn.execute(_WRITE, params).fetchone()
            except psycopg.errors.SerializationFailure:
                return None  # the statement's own check: the connection is fine
            except psycopg.Error as exc:
                self._drop()
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        assert row is not None
        return {str(k): int(v) for k, v in row[1].items()}

    def _all(self, statement: LiteralString, params: dict[str, Any]) -> list[TupleRow]:
        with self._lock:
            conn = self._ready()
            try:
                return conn.execute(statement, params).fetchall()
            except psycopg.Error as exc:
                self._drop()
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _run(self, statement: LiteralString, params: dict[str, Any]) -> int:
        with self._lock:
            conn = self._ready()
            try:
                return conn.execute(statement, params).rowcount
            except psycopg.Error as exc:
                self._drop()
                raise LeaseStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _ready(self) -> psycopg.Connection[TupleRow]:
        """The connection, the table made on first use (two leaders that race may see
        one error, and the table exists after)."""
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
