"""OutboxActor: every accepted message, on disk before the caller hears ``true``.

``MessageStore`` keeps the records (diskcache, one key per message); the actor keeps
per-session FIFO queues of message ids, knows from the supervisor which sessions can
send right now, and hands messages to session actors a bounded number at a time.
After a crash of this process (or the whole gateway) the queues are rebuilt from the
records: anything QUEUED or caught in SENDING is sent again.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import diskcache
import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.messages import (
    Accepted,
    CollectHealth,
    Deliver,
    DeliveryReceipt,
    DeliveryResult,
    Enqueue,
    Failed,
    Ok,
    SendText,
    SessionLink,
    SessionState,
    StartWorker,
)
from gateway.config import Config
from gateway.observability import setup_logging

log = structlog.get_logger("wagate.outbox")

MAX_IN_FLIGHT = 32  # per session: bounds what a reconnect dumps on a session at once
MAX_ATTEMPTS = 5  # transient failures before a message is FAILED
RETRY_PAUSE_SECONDS = 1.0  # after a transient failure, before the session is tried again
PENDING_STATES = ("QUEUED", "SENDING")
RECEIPT_ORDER = {"SENT": 0, "DELIVERED": 1, "READ": 2}


class MessageStore:
    """Message records on disk. Finished records expire after the retention period."""

    def __init__(self, directory: str, retention_seconds: float) -> None:
        self.cache = diskcache.Cache(directory)
        self.retention = retention_seconds

    def add(self, send: SendText, now: float) -> dict[str, Any]:
        record = {
            "id": uuid.uuid4().hex, "session": send.session, "phone": send.phone,
            "text": send.text, "state": "QUEUED", "accepted_at": now, "updated_at": now,
            "attempts": 0, "wa_message_id": "", "reason": "", "error": "",
            "request_id": send.request_id, "test": send.require_connected,
        }
        self.cache.set(_key(record["id"]), record)
        return record

    def get(self, message_id: str) -> dict[str, Any] | None:
        return self.cache.get(_key(message_id))

    def update(self, record: dict[str, Any], now: float, **changes: Any) -> dict[str, Any]:
        record = {**record, **changes, "updated_at": now}
        finished = record["state"] not in PENDING_STATES
        with self.cache.transact():
            self.cache.set(_key(record["id"]), record,
                           expire=self.retention if finished else None)
            if changes.get("wa_message_id"):
                self.cache.set(f"w:{record['wa_message_id']}", record["id"],
                               expire=self.retention)
        return record

    def by_wa_id(self, wa_message_id: str) -> dict[str, Any] | None:
        message_id = self.cache.get(f"w:{wa_message_id}")
        return self.get(message_id) if message_id else None

    def pending(self) -> list[dict[str, Any]]:
        """Every QUEUED or SENDING record, oldest first (start-up only)."""
        records = []
        for key in self.cache.iterkeys():
            if isinstance(key, str) and key.startswith("m:"):
                record = self.cache.get(key)
                if record is not None and record["state"] in PENDING_STATES:
                    records.append(record)
        records.sort(key=lambda r: r["accepted_at"])
        return records

    def close(self) -> None:
        self.cache.close()


def _key(message_id: str) -> str:
    return f"m:{message_id}"


@dataclass(frozen=True, slots=True)
class _AckTimeout:
    message_id: str


@dataclass(frozen=True, slots=True)
class _Resume:
    session: str


@dataclass
class _Waiter:
    reply_to: Any
    request_id: str


class OutboxActor(ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Config | None = None
        self.store: MessageStore | None = None
        self.links: dict[str, SessionLink] = {}
        self.queues: dict[str, deque[str]] = {}
        self.in_flight: dict[str, str] = {}  # message id -> session
        self.waiters: dict[str, _Waiter] = {}
        self.paused: set[str] = set()

    def receiveMsg_StartWorker(self, msg: StartWorker, sender: Any) -> None:
        if self.store is not None:
            return
        setup_logging(msg.config.logging)  # actor logs go to data_dir/logs
        self.config = msg.config
        directory = msg.config.data_path / "outbox"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = MessageStore(str(directory), msg.config.messages.retention_hours * 3600)
        recovered = 0
        for record in self.store.pending():
            self.queues.setdefault(record["session"], deque()).append(record["id"])
            recovered += 1
        if recovered:
            log.info("outbox recovered pending messages", count=recovered)

    # ---- accepting --------------------------------------------------------------------

    def receiveMsg_Enqueue(self, msg: Enqueue, sender: Any) -> None:
        assert self.store is not None and self.config is not None
        send, now = msg.send, time.time()
        record = self.store.add(send, now)
        connected = self._can_send(send.session)
        if send.require_connected and not connected:
            self.store.update(record, now, state="FAILED", reason="NOT_CONNECTED")
            self.send(msg.reply_to, Failed("NOT_CONNECTED", f"session '{send.session}' is not "
                                           "connected; test messages are not queued",
                                           {"session": send.session},
                                           request_id=send.request_id))
            return
        self.queues.setdefault(send.session, deque()).append(record["id"])
        if send.wait_for_ack and connected:
            self.waiters[record["id"]] = _Waiter(msg.reply_to, send.request_id)
            self.wakeupAfter(timedelta(seconds=self.config.messages.send_timeout_seconds),
                             payload=_AckTimeout(record["id"]))
        else:
            self.send(msg.reply_to, Accepted(record["id"], "QUEUED", now, send.request_id))
        self._dispatch(send.session)

    # ---- delivering ---------------------------------------------------------------------

    def receiveMsg_SessionLink(self, msg: SessionLink, sender: Any) -> None:
        old = self.links.get(msg.session)
        self.links[msg.session] = msg
        if old is not None and old.address is not None and old.address != msg.address:
            self._requeue_in_flight(msg.session)  # that process is gone with its sends
        self._dispatch(msg.session)

    def receiveMsg_DeliveryResult(self, msg: DeliveryResult, sender: Any) -> None:
        assert self.store is not None and self.config is not None
        session = self.in_flight.pop(msg.message_id, None)
        record = self.store.get(msg.message_id)
        if record is None or record["state"] not in PENDING_STATES:
            return
        now = time.time()
        session = session or record["session"]
        if msg.ok:
            record = self.store.update(record, now, state="SENT", wa_message_id=msg.wa_message_id,
                                       sent_at=msg.timestamp or now, reason="", error="")
            self._answer(record["id"], Accepted(record["id"], "SENT", record["accepted_at"]))
        elif msg.permanent or record["test"] or record["attempts"] >= MAX_ATTEMPTS:
            self.store.update(record, now, state="FAILED", reason=msg.reason, error=msg.error)
            code = "NOT_CONNECTED" if msg.reason == "NOT_CONNECTED" else "SEND_FAILED"
            self._answer(record["id"], Failed(code, f"WhatsApp did not accept the message: "
                                              f"{msg.error or msg.reason}",
                                              {"reason": msg.reason, "messageId": record["id"]}))
        else:
            self.store.update(record, now, state="QUEUED", reason=msg.reason, error=msg.error)
            self.queues.setdefault(session, deque()).appendleft(record["id"])
            self._answer(record["id"], Accepted(record["id"], "QUEUED", record["accepted_at"]))
            if session not in self.paused:
                self.paused.add(session)
                self.wakeupAfter(timedelta(seconds=RETRY_PAUSE_SECONDS), payload=_Resume(session))
        self._dispatch(session)

    def receiveMsg_DeliveryReceipt(self, msg: DeliveryReceipt, sender: Any) -> None:
        assert self.store is not None
        record = self.store.by_wa_id(msg.wa_message_id)
        state = msg.kind.upper()
        if record is None or state not in RECEIPT_ORDER:
            return
        if RECEIPT_ORDER.get(record["state"], -1) < RECEIPT_ORDER[state]:
            self.store.update(record, time.time(), state=state)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        payload = msg.payload
        if isinstance(payload, _Resume):
            self.paused.discard(payload.session)
            self._dispatch(payload.session)
        elif isinstance(payload, _AckTimeout) and payload.message_id in self.waiters:
            assert self.config is not None
            seconds = self.config.messages.send_timeout_seconds
            self._answer(payload.message_id, Failed(
                "SEND_FAILED",
                f"WhatsApp did not confirm the message within {seconds:g} s; it stays queued "
                f"as {payload.message_id} and may still be delivered",
                {"reason": "ACK_TIMEOUT", "messageId": payload.message_id}))

    def receiveMsg_CollectHealth(self, msg: CollectHealth, sender: Any) -> None:
        by_session = {s: len(q) for s, q in self.queues.items() if q}
        for session in self.in_flight.values():
            by_session[session] = by_session.get(session, 0) + 1
        report = replace(msg.report, queue_depth=sum(by_session.values()),
                         queue_by_session=by_session)
        self.send(msg.reply_to, Ok(report, request_id=msg.request_id))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.store is not None:
            self.store.close()

    # ---- helpers ---------------------------------------------------------------------------

    def _can_send(self, session: str) -> bool:
        link = self.links.get(session)
        return (link is not None and link.address is not None
                and link.state is SessionState.CONNECTED)

    def _dispatch(self, session: str) -> None:
        assert self.store is not None
        if session in self.paused or not self._can_send(session):
            return
        queue = self.queues.get(session)
        address = self.links[session].address
        busy = sum(1 for s in self.in_flight.values() if s == session)
        now = time.time()
        while queue and busy < MAX_IN_FLIGHT:
            record = self.store.get(queue.popleft())
            if record is None or record["state"] not in PENDING_STATES:
                continue
            record = self.store.update(record, now, state="SENDING",
                                       attempts=record["attempts"] + 1)
            self.in_flight[record["id"]] = session
            self.send(address, Deliver(record["id"], record["phone"], record["text"]))
            busy += 1

    def _requeue_in_flight(self, session: str) -> None:
        lost = [m for m, s in self.in_flight.items() if s == session]
        queue = self.queues.setdefault(session, deque())
        for message_id in reversed(lost):
            del self.in_flight[message_id]
            queue.appendleft(message_id)
            self._answer(message_id, Accepted(message_id, "QUEUED", time.time()))

    def _answer(self, message_id: str, reply: Accepted | Failed) -> None:
        waiter = self.waiters.pop(message_id, None)
        if waiter is not None:
            self.send(waiter.reply_to, replace(reply, request_id=waiter.request_id))
