"""WebhookActor: delivers the event log to the webhook endpoints, in its own process.

A thin shell: on ``StartWorker`` it starts one delivery thread, which opens the endpoint
store (``data_dir/webhooks``, secrets sealed with the storage key), brings the declared
endpoints in line with the config file, and then finds the due endpoints and hands each
one's turn to ``delivery.ConcurrentDeliverer`` (``webhooks.concurrency`` worker threads,
one turn per endpoint at a time), waiting at most ``POLL_SECONDS`` between passes (the
time a new event may wait to be noticed). The actor's own thread stays free for the
API's operations (``WebhookCommand``, run by ``commands``) and is the only one that sends
Thespian messages: an endpoint the loop disables is queued here and audited
(``webhook.disabled``) through the supervisor by a timer.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.messages import AuditEvent, Failed, Ok, Routed, StartWorker, WebhookCommand
from actors.outbox.db import (
    STORE_RETRY_SECONDS,
    STORE_UNAVAILABLE,
    PgConnection,
    StoreUnavailable,
)
from actors.outbox.store import STORE_FILE
from actors.run_once import RunOnce
from actors.session.sealed_store import StoreError, StoreKeyError, load_key
from actors.webhooks.client import Channels, make_client
from actors.webhooks.commands import Command, CommandRefused, run
from actors.webhooks.declared import sync_declared
from actors.webhooks.delivery import (
    ConcurrentDeliverer,
    Deliverer,
    Stats,
    head_of,
    when_reachable,
)
from actors.webhooks.source import Event, EventSource, SqliteEventSource, event_of
from actors.webhooks.store import APPLICATION_NAME as STORE_APPLICATION
from actors.webhooks.store import Endpoint, EndpointStore
from actors.whoami import TellsItsProcess
from gateway.core.clock import SteadyClock
from gateway.core.config import Config, lease_mode
from gateway.core.disk import disk_full_details, is_disk_full, write_refused_text
from gateway.core.observability import setup_logging

log = structlog.get_logger("wagate.webhooks")

FLUSH_SECONDS = 1.0  # how often audit events of the delivery thread are passed on
METRICS_OP = "metrics"  # a WebhookCommand the actor answers itself: the counters
POLL_SECONDS = 0.5  # how long a new event may wait before the loop looks at the log
BUSY_POLL_SECONDS = 0.02  # while turns run: how soon a finished endpoint's next turn starts
# The event log (actors/outbox/events.py) lives in the outbox's database, so that an
# event commits with its change; this process only reads it (SQLite WAL: readers never
# block the outbox's writes).
EVENTS_FILE = Path("outbox") / STORE_FILE  # as the outbox opens it (outbox/actor.py)


class EventLogFile:
    """The event log's file, read only once it exists and has its table: the outbox
    creates both at its start, which may come after this thread's (an empty log until
    then; before, the thread died of "no such table" when it read first)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events_after(self, after_seq: int, limit: int) -> list[Event]:
        if not self.path.exists():
            return []
        try:
            return SqliteEventSource(self.path).events_after(after_seq, limit)
        except sqlite3.OperationalError as exc:
            if not _no_table(exc):
                raise
            return []

    def head(self) -> int:
        if not self.path.exists():
            return 0
        try:
            return SqliteEventSource(self.path).head()
        except sqlite3.OperationalError as exc:
            if not _no_table(exc):
                raise
            return 0


def _no_table(exc: sqlite3.OperationalError) -> bool:
    return str(exc).startswith("no such table")


class PgEventLog:
    """The event log in PostgreSQL (multi-host mode with leases: the outbox's store, in
    the schema ``wagate_outbox``), over a connection of this reader's own, without the
    outbox's writer lock. ``seq`` is an identity: the outbox is the log's one writer, on
    one connection, so events commit in ``seq`` order and ``seq > cursor`` skips none.
    One lock for the threads that share it (a connection serves one call at a time).
    A database that does not answer raises ``StoreUnavailable``, which the delivery
    loop answers as for the endpoint store (``ConcurrentDeliverer``: a pause)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._db: PgConnection | None = None
        self._lock = threading.Lock()

    def events_after(self, after_seq: int, limit: int) -> list[Event]:
        rows = self._query("SELECT seq, id, type, session, created_at, data FROM events "
                           "WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        return [event_of(row) for row in rows]

    def head(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM events", ())
        return int(rows[0][0])

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _query(self, sql: str, params: tuple[int, ...]) -> list[Any]:
        with self._lock:
            if self._db is None:
                self._db = PgConnection(self._dsn, application_name=STORE_APPLICATION)
            return list(self._db.execute(sql, params).fetchall())


def endpoint_store(config: Config, key: Any, durable: bool) -> EndpointStore:
    """The endpoints: in data_dir/webhooks, or with leases in PostgreSQL beside the
    outbox's store, so a new leader continues each endpoint from its cursor."""
    return EndpointStore(config.data_path / "webhooks", key, durable=durable,
                         database_url=config.cluster.database_url if lease_mode(config)
                         else "")


def close_source(source: EventSource) -> None:
    if isinstance(source, PgEventLog):
        source.close()


def event_source(config: Config) -> EventSource:
    if lease_mode(config):  # the outbox's store, and its event log, are in PostgreSQL
        return PgEventLog(config.cluster.database_url)
    return EventLogFile(config.data_path / EVENTS_FILE)


class DeliveryThread(threading.Thread):
    def __init__(self, config: Config, audit: Any) -> None:
        super().__init__(name="wagate-webhooks", daemon=True)
        self.config, self.audit = config, audit
        self.stopping = threading.Event()
        self.stats = Stats()  # the delivery loop's counters, read at a scrape
        # Retry times and secret grace periods are durations: a wall-clock step must not
        # hold retries back an hour or fire them all at once (gateway/core/clock.py).
        self.clock = SteadyClock()

    def run(self) -> None:
        hooks, data = self.config.webhooks, self.config.data_path
        key = load_key(self.config.encryption, data)

        # One event source for every worker (in PostgreSQL: one connection, locked).
        source = event_source(self.config)

        def deliverer() -> Deliverer:  # one per worker thread: its own connection, client
            return Deliverer(endpoint_store(self.config, key, durable=False), source,
                             Channels(hooks.connect_timeout_seconds, hooks.timeout_seconds),
                             hooks, self.clock, on_disabled=self._disabled, stats=self.stats)

        def ready() -> Deliverer:
            """The loop's own deliverer, the declared endpoints in line with the config
            (a new one starts at the log's head, so the log must answer)."""
            made = deliverer()
            try:
                for problem in sync_declared(made.store, hooks.endpoints, os.environ,
                                             self.clock(), head_of(made.source)):
                    log.error("webhook endpoint skipped", problem=problem)
            except BaseException:
                made.client.close()
                made.store.close()
                raise
            return made

        # In PostgreSQL the store may not answer yet: the thread waits, never ends.
        overview = when_reachable(ready, self.stopping)
        if overview is None:
            close_source(source)
            return
        workers = ConcurrentDeliverer(overview, deliverer, hooks.concurrency, POLL_SECONDS)
        try:
            while not self.stopping.is_set():
                try:
                    workers.run_due()
                except Exception:  # a bug must not end deliveries for good: log, go on
                    log.exception("webhook delivery pass failed")
                due = workers.next_due()
                wait = POLL_SECONDS if due is None else due - self.clock()
                if workers.busy():  # a turn that ends may leave its endpoint due at once
                    wait = min(wait, BUSY_POLL_SECONDS)
                self.stopping.wait(min(max(wait, 0.0), POLL_SECONDS))
        finally:
            workers.close()
            overview.client.close()
            overview.store.close()
            close_source(source)

    def _disabled(self, endpoint: Endpoint, reason: str) -> None:
        log.warning("webhook endpoint disabled", endpoint=endpoint.id, reason=reason)
        self.audit(AuditEvent("webhook.disabled", {"endpoint": endpoint.id,
                                                   "reason": reason}))


class WebhookActor(TellsItsProcess, RunOnce, ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.thread: DeliveryThread | None = None
        self.supervisor: Any = None
        self.commands: Deliverer | None = None  # the API's operations, on this thread
        self.config: Config | None = None
        self.queued: queue.SimpleQueue[AuditEvent] = queue.SimpleQueue()

    def receiveMsg_StartWorker(self, msg: StartWorker, sender: Any) -> None:
        if self.thread is not None:
            return
        setup_logging(msg.config.logging)
        try:
            load_key(msg.config.encryption, msg.config.data_path)
        except (StoreKeyError, StoreError) as exc:
            log.error("webhooks not delivered: the storage key cannot be loaded",
                      error=str(exc))
            return
        self.supervisor = msg.supervisor
        self.config = msg.config
        # Only this actor's own thread may send (Thespian's sends are not thread-safe):
        # the delivery thread queues its audit events, a timer here forwards them.
        self.thread = DeliveryThread(msg.config, self.queued.put)
        self.thread.start()
        self.wakeupAfter(timedelta(seconds=FLUSH_SECONDS))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        while not self.queued.empty():
            self.send(self.supervisor, self.queued.get_nowait())
        if self.thread is not None and self.thread.is_alive():
            self.wakeupAfter(timedelta(seconds=FLUSH_SECONDS))

    def receiveMsg_Routed(self, msg: Routed, sender: Any) -> None:
        request = msg.request
        if not isinstance(request, WebhookCommand):
            return
        if self.thread is None:
            self.send(msg.reply_to, Failed("UNAVAILABLE", "webhooks are not running: the "
                                           "storage key could not be loaded (see the log)",
                                           request_id=request.request_id))
            return
        try:
            commands = self._commands()
            value = (self._metrics(commands) if request.op == METRICS_OP
                     else run(commands, Command(request.op, dict(request.args))))
        except CommandRefused as exc:
            self.send(msg.reply_to, Failed(exc.code, exc.message,
                                           request_id=request.request_id))
            return
        except (OSError, sqlite3.Error) as exc:
            if not is_disk_full(exc):
                raise
            # Rolled back whole by SQLite: refused with the code a send gets, not an
            # "actor system not answering" from a failed handler.
            log.error("a webhook change was refused: the disk is full", op=request.op)
            self.send(msg.reply_to, Failed("UNAVAILABLE", write_refused_text(
                "the webhook change"), disk_full_details(), request_id=request.request_id))
            return
        except StoreUnavailable as exc:  # PostgreSQL (multi-host): answered now
            log.error("a webhook operation found the endpoint store unreachable",
                      op=request.op, error=str(exc))
            self.send(msg.reply_to, store_unavailable(request.request_id))
            return
        self.send(msg.reply_to, Ok(value, request_id=request.request_id))

    def _commands(self) -> Deliverer:
        """The API's operations, opened at their first use: in PostgreSQL the store may
        not answer yet (``StoreUnavailable``, answered UNAVAILABLE). They count into the
        loop's (locked) Stats: a sendTestWebhook is an outcome of /metrics too ("test"),
        not lost in a counter no scrape reads."""
        if self.commands is None:
            assert self.config is not None and self.thread is not None
            config, hooks = self.config, self.config.webhooks
            key = load_key(config.encryption, config.data_path)
            self.commands = Deliverer(
                endpoint_store(config, key, durable=True), event_source(config),
                make_client(hooks.connect_timeout_seconds, hooks.timeout_seconds), hooks,
                self.thread.clock, stats=self.thread.stats)
        return self.commands

    def _metrics(self, commands: Deliverer) -> dict[str, Any]:
        assert self.thread is not None
        found = self.thread.stats.snapshot()
        found["disabled_now"] = sum(not e.enabled for e in commands.store.all())
        return found

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.commands is not None:
            self.commands.client.close()
            self.commands.store.close()
            close_source(self.commands.source)
        if self.thread is not None:
            self.thread.stopping.set()
            self.thread.join(timeout=self.thread.config.webhooks.timeout_seconds + 5)


def store_unavailable(request_id: str) -> Failed:
    """The endpoint store's database (PostgreSQL) did not answer. A change may or may
    not have been made (an answer lost after the write): the caller looks before it
    repeats one that is not safe to repeat (``createWebhook``)."""
    return Failed("UNAVAILABLE", "the webhook store (PostgreSQL, cluster.database_url) "
                  "cannot be reached; a change may not have been made: check with the "
                  "`webhooks` query, then retry in a few seconds",
                  {"reason": STORE_UNAVAILABLE, "retryAfterSeconds": STORE_RETRY_SECONDS},
                  request_id=request_id)
