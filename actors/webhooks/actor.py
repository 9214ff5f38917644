"""WebhookActor: delivers the event log to the webhook endpoints, in its own process.

A thin shell: on ``StartWorker`` it opens the endpoint store (``data_dir/webhooks``,
secrets sealed with the storage key), brings the declared endpoints in line with the
config file, and starts one delivery thread running ``delivery.Deliverer``: a pass over
the due endpoints, then a wait until the next one is due (at most ``POLL_SECONDS``, the
time a new event may wait to be noticed). The thread owns its own SQLite connection and
HTTP client; the actor's own thread stays free for messages. An endpoint the loop
disables is audited (``webhook.disabled``) through the supervisor.

The HTTP requests of all endpoints are made one after the other on that thread: a
slow endpoint delays the others by up to ``webhooks.timeout_seconds`` per request.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.messages import AuditEvent, Failed, Ok, Routed, StartWorker, WebhookCommand
from actors.run_once import RunOnce
from actors.session.sealed_store import StoreError, StoreKeyError, load_key
from actors.webhooks.client import make_client
from actors.webhooks.commands import Command, CommandRefused, run
from actors.webhooks.declared import sync_declared
from actors.webhooks.delivery import Deliverer, Stats, head_of
from actors.webhooks.source import Event, EventSource, SqliteEventSource
from actors.webhooks.store import Endpoint, EndpointStore
from gateway.core.config import Config
from gateway.core.observability import setup_logging

log = structlog.get_logger("wagate.webhooks")

FLUSH_SECONDS = 1.0  # how often audit events of the delivery thread are passed on
METRICS_OP = "metrics"  # a WebhookCommand the actor answers itself: the counters
POLL_SECONDS = 0.5  # how long a new event may wait before the loop looks at the log
EVENTS_FILE = Path("events") / "events.sqlite3"  # the event log (actors/outbox/events.py)


class NoEvents:
    """The event source until the event log exists on disk."""

    def events_after(self, after_seq: int, limit: int) -> list[Event]:
        return []


def event_source(config: Config) -> EventSource:
    path = config.data_path / EVENTS_FILE
    return SqliteEventSource(path) if path.exists() else NoEvents()


class DeliveryThread(threading.Thread):
    def __init__(self, config: Config, audit: Any) -> None:
        super().__init__(name="wagate-webhooks", daemon=True)
        self.config, self.audit = config, audit
        self.stopping = threading.Event()
        self.stats = Stats()  # the delivery loop's counters, read at a scrape

    def run(self) -> None:
        hooks = self.config.webhooks
        store = EndpointStore(self.config.data_path / "webhooks",
                              load_key(self.config.encryption, self.config.data_path))
        client = make_client(hooks.connect_timeout_seconds, hooks.timeout_seconds)
        try:
            source = event_source(self.config)
            for problem in sync_declared(store, hooks.endpoints, os.environ, time.time(),
                                         head_of(source)):
                log.error("webhook endpoint skipped", problem=problem)
            loop = Deliverer(store, source, client, hooks, time.time,
                             on_disabled=self._disabled, stats=self.stats)
            while not self.stopping.is_set():
                try:
                    loop.run_due()
                except Exception:  # a bug must not end deliveries for good: log, go on
                    log.exception("webhook delivery pass failed")
                loop.source = event_source(self.config)
                due = loop.next_due()
                wait = POLL_SECONDS if due is None else due - time.time()
                self.stopping.wait(min(max(wait, 0.0), POLL_SECONDS))
        finally:
            client.close()
            store.close()

    def _disabled(self, endpoint: Endpoint, reason: str) -> None:
        log.warning("webhook endpoint disabled", endpoint=endpoint.id, reason=reason)
        self.audit(AuditEvent("webhook.disabled", {"endpoint": endpoint.id,
                                                   "reason": reason}))


class WebhookActor(RunOnce, ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.thread: DeliveryThread | None = None
        self.supervisor: Any = None
        self.commands: Deliverer | None = None  # the API's operations, on this thread
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
        hooks = msg.config.webhooks
        self.commands = Deliverer(
            EndpointStore(msg.config.data_path / "webhooks",
                          load_key(msg.config.encryption, msg.config.data_path)),
            event_source(msg.config),
            make_client(hooks.connect_timeout_seconds, hooks.timeout_seconds), hooks,
            time.time)
        self.commands_config = msg.config
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
        if self.commands is None:
            self.send(msg.reply_to, Failed("UNAVAILABLE", "webhooks are not running: the "
                                           "storage key could not be loaded (see the log)",
                                           request_id=request.request_id))
            return
        if request.op == METRICS_OP:
            self.send(msg.reply_to, Ok(self._metrics(), request_id=request.request_id))
            return
        self.commands.source = event_source(self.commands_config)
        try:
            value = run(self.commands, Command(request.op, dict(request.args)))
        except CommandRefused as exc:
            self.send(msg.reply_to, Failed(exc.code, exc.message,
                                           request_id=request.request_id))
            return
        self.send(msg.reply_to, Ok(value, request_id=request.request_id))

    def _metrics(self) -> dict[str, Any]:
        assert self.thread is not None and self.commands is not None
        found = self.thread.stats.snapshot()
        found["disabled_now"] = sum(not e.enabled for e in self.commands.store.all())
        return found

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.commands is not None:
            self.commands.client.close()
            self.commands.store.close()
        if self.thread is not None:
            self.thread.stopping.set()
            self.thread.join(timeout=self.thread.config.webhooks.timeout_seconds + 5)
