"""OutboxActor: every accepted message, on disk before the caller hears ``true``.

The records and the per-session queues live in ``MessageStore`` (SQLite on disk), so
memory does not grow with the backlog: the actor keeps only what is in flight, the
callers waiting for an ack, and one counter per session. It knows from the
supervisor which sessions can send right now and hands them a bounded number of
messages at a time.

A send travels: web tier -> ``SendText`` here (session state, idempotency key, queue
depth, rate limits, write: one handler, so two requests with one key can never both
pass) -> ``Deliver`` to the session -> ``DeliveryResult`` here -> answer.

Unknown fate (README: Message records and delivery guarantees;
``delivery.on_uncertain``): a message found in SENDING after
this process restarts, in flight in a session process that died, or whose send ended
without telling whether it reached WhatsApp (an ack that never came), may or may not
have been delivered. It is marked ``uncertain``, counted, and either sent again
("resend", the default: at-least-once) or FAILED ("fail": at-most-once). A caller
answered before WhatsApp confirmed its message (``SEND_UNCONFIRMED``) may send it
again itself: that message is flagged and counted too.

Answers of the engine that are neither success nor plain failure (docs/engine-behaviour.md):
WhatsApp's 429 on the recipient lookup before a send (``RATE_OVERLIMIT``) pauses the
whole session with backoff (``delivery.rate_overlimit_*``) and costs the message no
attempt; a number without an account (``NOT_ON_WHATSAPP``) fails the message with that
code and is remembered in the number cache.

A caller waiting for WhatsApp's ack is answered by the send's outcome: SENT, or
FAILED for good, or, when the session is not connected after all, QUEUED (as when a
send arrives while the session reconnects). A failed attempt that will be retried is
no answer; the retry's outcome is, or ``SEND_UNCONFIRMED`` after
``messages.send_timeout_seconds``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.media.store import MediaStoreError, file_key
from actors.media.store import load_private as load_media_private
from actors.messages import (
    Accepted,
    ChartMessageStates,
    CollectHealth,
    Deliver,
    DeliverBatch,
    DeliveryReceipt,
    DeliveryResult,
    DeliveryResults,
    EventPage,
    Failed,
    GetMessage,
    GetMessageByKey,
    HandedBack,
    IncomingPage,
    IncomingReceived,
    ListEvents,
    ListIncoming,
    ListMessages,
    MarkRead,
    MessagePage,
    MessageState,
    Offer,
    Ok,
    OpenMedia,
    OutboxReady,
    ReadIncoming,
    ReceivedCommitted,
    Routed,
    SendText,
    SessionForgotten,
    SessionLink,
    SessionState,
    StartWorker,
)
from actors.metrics import RefusalCounters
from actors.outbox import events
from actors.outbox import media as outbox_media
from actors.outbox.acks import CommitAcks
from actors.outbox.db import (
    STORE_ERRORS,
    STORE_RETRY_SECONDS,
    STORE_UNAVAILABLE,
    StoreUnavailable,
)
from actors.outbox.held import HeldWrites
from actors.outbox.incoming import IncomingStore
from actors.outbox.incoming import cursor_of as incoming_cursor
from actors.outbox.journal_check import JournalCheck
from actors.outbox.limits import Limits, rate_limited, rate_state_unavailable
from actors.outbox.numbers import NumberCache, open_cache
from actors.outbox.pacing import WARMUP_SCOPE, Pacer, PacingRules
from actors.outbox.rate_state import RateStateUnavailable, open_rate_state
from actors.outbox.receipts import EarlyReceipts, HeldReceipt, receipt_time
from actors.outbox.store import (
    PENDING,
    RECEIPT_RANK,
    MessageStore,
    NewMessage,
    content_text,
    cursor_of,
    key_verdict,
    media_of,
    public_record,
)
from actors.outbox.warmup import Warmup
from actors.run_once import RunOnce
from actors.session.links import ENDED_MESSAGES, SESSION_FORGOTTEN, SESSION_LOGGED_OUT, link_ended
from actors.session.machine import refuse_send
from actors.session.sealed_store import StoreError, load_key
from actors.supervisor.policy import rate_overlimit_pause, retry_delay
from actors.transport.base import NOT_ON_WHATSAPP, RATE_OVERLIMIT, NumberInfo
from actors.whoami import TellsItsProcess
from gateway.core.clock import SKEW_WORTH_A_LOG_SECONDS, SteadyClock
from gateway.core.config import Config, PacingConfig, lease_mode
from gateway.core.disk import (
    DISK_FULL,
    DISK_FULL_RETRY_SECONDS,
    MIB,
    is_disk_full,
    refusal_text,
    space,
)
from gateway.core.observability import setup_logging

log = structlog.get_logger("wagate.outbox")

MAX_IN_FLIGHT = 32  # per session: bounds what a reconnect dumps on a session at once
ACK_TIMER_MIN_SECONDS = 0.001  # a timer is never armed for 0 (Thespian's "no timeout")
NOT_CONNECTED_PAUSE_SECONDS = 1.0  # a session said "not connected": wait for its state
PRUNE_EVERY_SECONDS = 600.0
# The event log's size in health and /metrics is at most this old (a count reads the
# whole table). Not a delay anything waits on, so not a config key.
EVENT_SIZE_EVERY_SECONDS = 30.0
QUEUE_FULL_RETRY_SECONDS = 30


@dataclass(frozen=True, slots=True)
class _AckTimeout:
    """The oldest waiting caller's ``send_timeout`` is due: one timer for all of them."""


@dataclass(frozen=True, slots=True)
class _StartAgain:
    """Time to try opening the PostgreSQL store again (``OutboxActor._start``)."""


@dataclass(frozen=True, slots=True)
class _Tick:
    """Expiry, due retries and pruning: sparse, one timer for everything."""


@dataclass(frozen=True, slots=True)
class _PaceDue:
    """A paced session may send its next message now."""

    session: str


@dataclass(frozen=True, slots=True)
class _Handover:
    """Deliveries moved to SENDING in a transaction, to send once it committed."""

    session: str
    address: Any
    deliveries: tuple[Deliver, ...]
    now: float


@dataclass
class _Waiter:
    reply_to: Any
    request_id: str


class OutboxActor(TellsItsProcess, RunOnce, ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Config | None = None
        self.data_path = Path()  # msg.config.data_path, from StartWorker
        self.store: MessageStore | None = None
        self.starting: StartWorker | None = None  # the StartWorker being acted on
        self.links: dict[str, SessionLink] = {}
        self.in_flight: dict[str, str] = {}  # message id -> session
        self.busy: dict[str, int] = {}  # session -> messages in flight
        self.depth: dict[str, int] = {}  # session -> QUEUED + SENDING
        self.waiters: dict[str, _Waiter] = {}  # message id -> caller waiting for the ack
        # (monotonic deadline, message id) of the waiters, oldest first (_ack_deadline)
        self.ack_deadlines: deque[tuple[float, str]] = deque()
        self.ack_timer_armed = False
        self.limits: Limits | None = None
        self.paused_until: dict[str, float] = {}  # monotonic, like rate_pauses
        # WhatsApp's 429 on a recipient lookup: session -> (paused until, strikes in a
        # row), on the monotonic clock
        self.rate_pauses: dict[str, tuple[float, int]] = {}
        self.uncertain_total = 0
        self.last_prune = 0.0
        self.media_private: Any = None  # the media store's private key, opened at first use
        self.media_received: dict[str, int] = {}  # kind -> media messages received
        # session -> the state of its last session.status event (read from the log once)
        self.session_states: dict[str, str | None] = {}
        self.event_size: tuple[float, int, int] | None = None  # (counted at, rows, bytes)
        self.refusals = RefusalCounters()  # for /metrics
        # The message a SendText handler stored, until that handler is done: when it
        # fails after the write, its caller is told the message is unconfirmed.
        self.accepting: tuple[dict[str, Any], Any, str] | None = None
        # Answers held until the records they report are committed (None: send at once).
        self.held_replies: list[tuple[str, Accepted | Failed]] | None = None
        self.early_receipts = EarlyReceipts()  # receipts that overtook their send's result
        # Those taken by results not committed yet: held again if the commit fails.
        self.early_taken: list[tuple[str, str, HeldReceipt]] | None = None
        self.pacer = Pacer(PacingRules())  # [pacing]: when each session may send next
        self.warmup: Warmup | None = None  # the warm-up cap of newly linked devices
        self.pace_armed: set[str] = set()  # sessions with a _PaceDue timer running
        # In flight when their link ended: message id -> reason, to fail if they return.
        self.ended_in_flight: dict[str, str] = {}
        self.numbers: NumberCache | None = None  # number lookups; a receipt corrects them
        self.incoming: IncomingStore | None = None  # messages written to the accounts
        self.disk_low = False  # data_dir under storage.min_free_mb at the last send
        self.store_down = False  # PostgreSQL's store failed the last tick (logged once)
        # Received messages and receipts whose write found the disk full, written again
        # in order once there is space (actors/outbox/held.py), and the sessions whose
        # session.status event could not be written (the current state is, later).
        self.held = HeldWrites()
        # What each session process is told, at the next tick, that is committed: it
        # keeps those until then (actors/session/unacked.py).
        self.acks = CommitAcks()
        self.status_unwritten: set[str] = set()
        self.supervisor: Any = None  # gets back what is held when this process stops
        # Every time this actor writes or compares: wall time that does not jump when the
        # wall clock is stepped (gateway/core/clock.py), so validity, retries, rate
        # windows and pacing keep their length across an NTP step or a VM resume.
        self.clock = SteadyClock()
        self.skew_logged = 0.0  # the wall clock's step last logged
        # Multi-host mode with leases: the sent journal, asked before an in-flight
        # message of an ended session process is sent again (actors/outbox/journal_check.py).
        self.journal: JournalCheck | None = None

    # ---- start ----------------------------------------------------------------------

    def receiveMsg_StartWorker(self, msg: StartWorker, sender: Any) -> None:
        if self.store is not None or self.starting is not None:
            return
        setup_logging(msg.config.logging)  # actor logs go to data_dir/logs
        self.config = msg.config
        # Resolved once: Config.data_path resolves symlinks at every call (a realpath per
        # send was 2.5 % of the outbox's time under load).
        self.data_path = msg.config.data_path
        self.supervisor = msg.supervisor
        self.links = {link.session: link for link in msg.links}
        self.starting = msg
        self._start(msg)

    def _start(self, msg: StartWorker) -> None:
        """Open the store and recover; with PostgreSQL, again every STORE_RETRY_SECONDS
        while it cannot be opened (the database is down, or the outbox of a leader that
        has not yet noticed it lost the lock still holds it): answering "starting"
        meanwhile, not crashing into the restart budget."""
        # Multi-host mode with a database: the store is in PostgreSQL, where a standby
        # leader that takes over finds every accepted message (actors/outbox/db.py);
        # this outbox is then its one writer (``exclusive``).
        try:
            self.store = MessageStore(msg.config.data_path / "outbox",
                                      msg.config.delivery.synchronous,
                                      msg.config.delivery.keep_text,
                                      database_url=msg.config.cluster.database_url
                                      if lease_mode(msg.config) else "", exclusive=True)
        except StoreUnavailable as exc:
            log.error("the message store (PostgreSQL) cannot be opened yet; trying again",
                      error=str(exc), retry_seconds=STORE_RETRY_SECONDS)
            self.wakeupAfter(timedelta(seconds=STORE_RETRY_SECONDS), payload=_StartAgain())
            return
        self.incoming = IncomingStore(self.store.db, msg.config.delivery.keep_text,
                                      msg.config.messages.opt_out_keywords)
        # The rate windows: data_dir/limits, or PostgreSQL shared by the leaders.
        self.limits = Limits(open_rate_state(msg.config), msg.config.limits)
        rules = PacingRules.from_config(msg.config.pacing)
        self.pacer = Pacer(rules)
        self.warmup = Warmup(self.limits.state, rules)
        self.numbers = open_cache(msg.config.data_path, msg.config.numbers.positive_ttl_hours,
                                  msg.config.numbers.negative_ttl_hours)
        if lease_mode(msg.config):
            self.journal = JournalCheck(msg.config.cluster.database_url,
                                        msg.config.cluster.journal_retention_hours)
        now = self.clock()
        for link in list(self.links.values()):
            self._session_event(link)  # the changes made while no outbox ran
        self._settle_unknown(self.store.in_state(MessageState.SENDING), now,
                             "the outbox restarted while it was being sent")
        self.depth = self.store.pending_counts()
        self._end_stale_queues()
        if self.depth:
            log.info("outbox recovered pending messages", count=sum(self.depth.values()))
        self._arm_tick()
        self.send(self.supervisor, OutboxReady())  # last: the start cannot fail after it

    # ---- accepting ----------------------------------------------------------------------

    def receiveMsg_SendText(self, msg: SendText, sender: Any) -> None:
        self._accept_or_refuse(msg, sender)

    def receiveMsg_Offer(self, msg: Offer, sender: Any) -> None:
        self._accept_or_refuse(msg.send, msg.reply_to)

    def _accept_or_refuse(self, send: SendText, reply_to: Any) -> None:
        """``_accept``; a PostgreSQL store that does not answer one of the checks before
        the write (an idempotency key, the media bound) refuses the send: nothing was
        written. Once written (``accepting``), a failure is ``handler_failed``'s."""
        try:
            self._accept(send, reply_to)
        except StoreUnavailable as exc:
            if self.accepting is not None:
                raise
            log.error("a send's checks found the message store unreachable; refused",
                      error=str(exc))
            self.send(reply_to, _store_unavailable(send.request_id))

    def _accept(self, send: SendText, reply_to: Any) -> None:
        """Every check, then the write, then the answer (or the wait for the ack)."""
        if self.store is None:
            self.send(reply_to, _not_started(send.request_id))
            return
        assert self.config is not None and self.limits is not None
        now = self.clock()
        link = self.links.get(send.session)
        refusal = refuse_send(send.session, link.state if link else SessionState.NEW,
                              link.paired if link else False, send.require_connected,
                              send.request_id, link.last_error if link else None)
        if refusal is not None:
            self.send(reply_to, refusal)
            return
        stale_key: str | None = None  # the record whose expired key the new one takes
        if send.idempotency_key is not None:
            earlier = self.store.by_idempotency_key(send.requester, send.session,
                                                    send.idempotency_key)
            if earlier is not None and self._key_fresh(earlier):
                verdict = key_verdict(earlier, send.requester, send.phone,
                                      content_text(send.text, send.media))
                if verdict == "duplicate":
                    self.send(reply_to, _accepted(earlier, send.request_id, duplicate=True))
                    return
                if verdict == "reused":
                    self.send(reply_to, _key_reused(send, earlier["id"]))
                    return
            elif earlier is not None and earlier["requester"] == send.requester:
                stale_key = earlier["id"]  # an old key: free it for the new message
        full = self._disk_full(send.request_id)
        if full is not None:
            self.send(reply_to, full)
            return
        if send.media is not None:
            media_refused = outbox_media.refusal(
                self.store, self.config.media_path, send.media,
                int(self.config.media.max_total_mb * 1024 * 1024), send.request_id)
            if media_refused is not None:
                if media_refused.code == "RATE_LIMITED":
                    self.refusals.refused("media_store")
                self.send(reply_to, media_refused)
                return
        limit = self.config.delivery.max_queue_per_session
        if self.depth.get(send.session, 0) >= limit:
            self.refusals.refused("queue")
            self.send(reply_to, Failed(
                "RATE_LIMITED", f"session '{send.session}' already has {limit} messages "
                "waiting; retry later or raise delivery.max_queue_per_session",
                {"reason": "QUEUE_FULL", "retryAfterSeconds": QUEUE_FULL_RETRY_SECONDS,
                 "scope": "queue"}, request_id=send.request_id))
            return
        try:
            rate_refusal = self._rate_refusal(send, now)
            if rate_refusal is not None:
                self.send(reply_to, rate_refusal)
                return
            self.held_replies = []  # nobody hears of a state that is not committed yet
            record: dict[str, Any] | None = None
            depth_before = dict(self.depth)
            # The message and, when its session can take it now, its SENDING: one commit
            # (the pages of both changes written once), and the hand-over after it.
            with self.store.batch():
                record = self._store_new(send, link, stale_key, now)
                self.depth[send.session] = self.depth.get(send.session, 0) + 1
                handover = self._take(send.session)
            replies = self.held_replies
        except STORE_ERRORS as exc:
            if not _cannot_write(exc):
                raise
            # The transaction was rolled back: nothing of this message was kept (unless
            # PostgreSQL's answer to the COMMIT itself was lost: then it may have been).
            log.error("a send's write failed; refused", error=str(exc))
            if isinstance(exc, StoreUnavailable):
                self.depth = depth_before  # the rolled-back change undone (no read now)
            else:
                self.depth = self.store.pending_counts()  # the rolled-back changes undone
            self.send(reply_to, _write_failure(exc, send, record, self._min_free()))
            return
        finally:
            self.held_replies = None
        assert record is not None
        self.accepting = (record, reply_to, send.request_id)
        if self._can_send(send.session):  # answer after the server acked (or send_timeout)
            self.waiters[record["id"]] = _Waiter(reply_to, send.request_id)
            self._ack_deadline(record["id"])
        else:
            self.send(reply_to, _accepted(record, send.request_id))
        for message_id, reply in replies:
            self._answer(message_id, reply)
        self._hand_over(handover)
        self.accepting = None

    def _rate_refusal(self, send: SendText, now: float) -> Failed | None:
        """The warm-up cap and the rate windows; a send that passes is counted in both.
        A rate state that cannot answer (multi-host: the database) refuses the send as
        ``UNAVAILABLE``, as a full disk does: nothing is stored, the caller retries."""
        assert self.config is not None and self.limits is not None
        assert self.warmup is not None
        try:
            warm, warm_wait = self.warmup.allows(send.session, now)
            if not warm:
                log.info("send refused: the session's device is warming up",
                         session=send.session)
                self.refusals.refused(WARMUP_SCOPE)
                return _warming_up(send.session, warm_wait, self.config.pacing,
                                   send.request_id)
            allowed, retry_after, scope = self.limits.check(send.phone, now)
            if not allowed:
                log.info("send rate limited", scope=scope, session=send.session)
                self.refusals.refused(scope)
                return rate_limited(retry_after, scope, send.request_id)
            self.warmup.record(send.session, now)
        except RateStateUnavailable as exc:
            log.error("the rate windows could not be read or written; send refused",
                      session=send.session, error=str(exc))
            return rate_state_unavailable(send.request_id)
        return None

    def _store_new(self, send: SendText, link: SessionLink | None, stale_key: str | None,
                   now: float) -> dict[str, Any]:
        """Write the accepted message (and free the expired key it takes over), in one
        transaction: both, or neither."""
        assert self.store is not None
        valid_until = now + send.valid_for if send.valid_for is not None else None
        with self.store.batch():
            if stale_key is not None:
                self.store.forget_key(stale_key)
            return self.store.add(NewMessage(
                session=send.session, phone=send.phone, text=send.text,
                request_id=send.request_id, requester=send.requester,
                idempotency_key=send.idempotency_key, valid_until=valid_until,
                is_test=send.require_connected, account=link.phone if link else None,
                link_epoch=link.epoch if link else 0,
                note=f"RECIPIENT_UNKNOWN_{send.recipient_unknown}" if send.recipient_unknown
                else "", media=send.media), now)

    def _min_free(self) -> int:
        assert self.config is not None
        return self.config.storage.min_free_mb * MIB

    def _disk_full(self, request_id: str) -> Failed | None:
        """The refusal of a send while data_dir's file system has less free space than
        storage.min_free_mb (logged once per episode), or None."""
        assert self.config is not None
        try:
            free = space(self.data_path, self.config.storage.min_free_mb)
        except OSError:
            return None  # cannot tell: the write itself will say
        if free.low != self.disk_low:
            self.disk_low = free.low
            if free.low:
                log.error("data_dir's disk is (nearly) full: refusing sends until space is "
                          "freed", free_bytes=free.free_bytes, min_free_mb=
                          self.config.storage.min_free_mb)
            else:
                log.info("data_dir has free space again: accepting sends",
                         free_bytes=free.free_bytes)
        if not free.low:
            return None
        return _disk_full_failure(free.free_bytes, free.min_free_bytes, request_id)

    # ---- delivering -------------------------------------------------------------------------

    def receiveMsg_SessionLink(self, msg: SessionLink, sender: Any) -> None:
        if self.store is None:
            # Before StartWorker (a standby leader's outbox waits for the leadership
            # lock), which brings every session's link; or while the store cannot be
            # opened yet: kept for the start.
            if self.starting is not None:
                self.links[msg.session] = msg
            return
        old = self.links.get(msg.session)
        self.links[msg.session] = msg
        self._session_event(msg)
        self._observe_warmup(old, msg)
        if old is not None and old.address is not None and old.address != msg.address:
            self._requeue_in_flight(msg.session)  # that process is gone with its sends
        if old is None or msg.epoch > old.epoch:
            self._end_link_queue(msg.session, msg.epoch, SESSION_LOGGED_OUT)
        self._dispatch(msg.session)

    def receiveMsg_SessionForgotten(self, msg: SessionForgotten, sender: Any) -> None:
        if self.store is None:
            return  # StartWorker will not list it: its queue ends there
        self._end_link_queue(msg.session, None, SESSION_FORGOTTEN)
        for per_session in (self.links, self.paused_until, self.rate_pauses):
            per_session.pop(msg.session, None)
        if not self.depth.get(msg.session):
            self.depth.pop(msg.session, None)
        if not self.busy.get(msg.session):
            self.busy.pop(msg.session, None)

    def receiveMsg_DeliveryResults(self, msg: DeliveryResults, sender: Any) -> None:
        self._write_or_hold(msg)  # WhatsApp's answer, told once: like a receipt

    def _store_results(self, msg: DeliveryResults) -> None:
        """Record what came back together, and hand each session what it may send next.
        A write that finds the disk full leaves memory as it was before (the messages
        still in flight, SENDING on disk) and raises: the results wait in ``held``."""
        assert self.store is not None
        sessions: set[str] = set()
        before = _Memory.of(self)
        self.early_taken = []
        self.held_replies = []  # nobody hears of a state that is not committed yet
        try:
            # One commit for everything that came back together and for what each
            # session may send next (handed over after the commit).
            with self.store.batch():
                for result in msg.results:
                    session = self._on_result(result)
                    if session is not None:
                        sessions.add(session)
                self._settle_ended(r.message_id for r in msg.results)
                handovers = [self._take(session) for session in sorted(sessions)]
            replies = self.held_replies
        except STORE_ERRORS as exc:
            if _cannot_write(exc):
                before.restore(self)
            raise
        finally:
            self.held_replies = None
            self.early_taken = None
        for message_id, reply in replies:
            self._answer(message_id, reply)
        for handover in handovers:
            self._hand_over(handover)

    def _on_result(self, msg: DeliveryResult) -> str | None:
        """Record how one send ended and answer its caller; returns its session."""
        assert self.store is not None and self.config is not None
        session = self._landed(msg.message_id)
        record = self.store.get(msg.message_id)
        if record is None or record["state"] not in PENDING:
            return session
        now = self.clock()
        session = session or record["session"]
        delivery = self.config.delivery
        if msg.ok:
            self.rate_pauses.pop(session, None)  # lookups pass again: the strikes start over
            record = self._finish(record, MessageState.SENT, now, "",
                                  wa_message_id=msg.wa_message_id,
                                  attempts=record["attempts"] + 1)
            self._answer(record["id"], _accepted(record, ""))
            taken = self.early_receipts.take(session, msg.wa_message_id, now)
            if self.early_taken is not None:
                self.early_taken.extend((session, msg.wa_message_id, r) for r in taken)
            for early in taken:
                record = self._receipt(record, early.kind, early.phone, now, early.sent_at)
        elif msg.uncertain:
            self._uncertain(record, now, f"WhatsApp did not say whether it took the message "
                            f"({msg.error or msg.reason})", reason=msg.reason or "UNCERTAIN",
                            attempts=record["attempts"] + 1, error=msg.error)
        elif msg.reason == RATE_OVERLIMIT:
            self._rate_overlimited(record, session, now, msg)
        elif msg.reason == NOT_ON_WHATSAPP:
            self._not_on_whatsapp(record, now, msg)
        elif msg.reason == "NOT_CONNECTED" and not record["is_test"]:
            # It never left: not an attempt. Wait for the session's next state; the
            # caller hears QUEUED, as any send made while the session reconnects.
            record = self.store.transition(record, MessageState.QUEUED, now, msg.reason,
                                           error=msg.error)
            self.paused_until[session] = time.monotonic() + NOT_CONNECTED_PAUSE_SECONDS
            self._answer(record["id"], _accepted(record, ""))
        else:
            attempts = record["attempts"] + 1
            if msg.permanent or record["is_test"] or attempts >= delivery.max_attempts:
                record = self._finish(record, MessageState.FAILED, now, msg.reason or "REJECTED",
                                      attempts=attempts, error=msg.error)
                code = "NOT_CONNECTED" if msg.reason == "NOT_CONNECTED" else "SEND_FAILED"
                self._answer(record["id"], Failed(
                    code, f"WhatsApp did not accept the message: {msg.error or msg.reason}",
                    {"reason": msg.reason, "messageId": record["id"]}))
            else:
                # A retry is due: no answer yet. A caller waiting for the ack hears the
                # retry's outcome, or SEND_UNCONFIRMED when the wait runs out first.
                delay = retry_delay(attempts, delivery.retry_base_seconds,
                                    delivery.retry_max_seconds, random.random())
                self.store.transition(record, MessageState.QUEUED, now, msg.reason, error=msg.error,
                                      attempts=attempts, next_attempt_at=now + delay)
        return session

    def _rate_overlimited(self, record: dict[str, Any], session: str, now: float,
                          msg: DeliveryResult) -> None:
        """WhatsApp answered the send's recipient lookup with 429 rate-overlimit: nothing
        was sent. Every further send would ask again, so the whole session pauses
        (``delivery.rate_overlimit_*``, longer for a 429 right after a pause) and the
        message waits, with no attempt counted. A test message is not sent later: it
        fails with RATE_LIMITED."""
        assert self.store is not None and self.config is not None
        # The pause lives in this process only: on the monotonic clock, so a wall clock
        # stepped back (NTP, a resumed VM) does not stretch it by the step.
        clock = time.monotonic()
        until, strikes = self.rate_pauses.get(session, (0.0, 0))
        delivery = self.config.delivery
        if until <= clock:  # not one of the burst that was already paused for
            cap = max(delivery.rate_overlimit_pause_seconds,
                      delivery.rate_overlimit_max_pause_seconds)
            strikes = strikes + 1 if clock - until < cap else 1
            until = clock + rate_overlimit_pause(strikes, delivery.rate_overlimit_pause_seconds,
                                                 delivery.rate_overlimit_max_pause_seconds)
            self.rate_pauses[session] = (until, strikes)
            self.refusals.refused("whatsapp")  # /metrics: one per pause WhatsApp caused
            log.warning("WhatsApp rate-limits this session's lookups; its sends pause",
                        session=session, pause_seconds=round(until - clock, 1),
                        strikes=strikes)
        retry_after = max(1, math.ceil(until - clock))
        if record["is_test"]:
            record = self._finish(record, MessageState.FAILED, now, RATE_OVERLIMIT, error=msg.error)
            self._answer(record["id"], Failed(
                "RATE_LIMITED", "WhatsApp is rate-limiting this account's recipient lookups "
                f"(429 rate-overlimit); the test message was not sent: retry in {retry_after} s",
                {"reason": RATE_OVERLIMIT, "retryAfterSeconds": retry_after,
                 "scope": "whatsapp", "messageId": record["id"]}))
            return
        record = self.store.transition(record, MessageState.QUEUED, now, RATE_OVERLIMIT,
                                       error=msg.error)
        self._answer(record["id"], _accepted(record, ""))

    def _not_on_whatsapp(self, record: dict[str, Any], now: float,
                         msg: DeliveryResult) -> None:
        """WhatsApp knows no account for the number (the engine's lookup before the send
        said so): the message fails, and the number cache learns it, so the next send
        to it is refused before it is stored (``delivery.check_recipient``)."""
        assert self.store is not None
        phone = record["phone"]
        record = self._finish(record, MessageState.FAILED, now, NOT_ON_WHATSAPP,
                              attempts=record["attempts"] + 1, error=msg.error)
        if self.numbers is not None:
            try:
                self.numbers.put([NumberInfo(phone, False)], now)
            except Exception:  # the verdict stands; only the cache misses it
                log.exception("could not remember a number without WhatsApp")
        self._answer(record["id"], Failed(
            "NOT_ON_WHATSAPP", f"+{phone} has no WhatsApp account (WhatsApp said so when the "
            "message was sent); nothing was sent: fall back to SMS or another channel",
            {"reason": NOT_ON_WHATSAPP, "messageId": record["id"], "phoneNumber": phone}))

    def receiveMsg_DeliveryReceipt(self, msg: DeliveryReceipt, sender: Any) -> None:
        self._write_or_hold(msg)

    def _store_receipt(self, msg: DeliveryReceipt) -> None:
        """A receipt counts for the message its session sent under that WhatsApp id; one
        that overtook its send's result waits for the id (``actors.outbox.receipts``)."""
        assert self.store is not None
        now = self.clock()
        record = self.store.by_wa_id(msg.wa_message_id, msg.session)
        if record is None:
            self.early_receipts.hold(msg.session, msg.wa_message_id, msg.kind, msg.phone, now,
                                     msg.at)
            return
        self._receipt(record, msg.kind, msg.phone, now, msg.at)

    def _receipt(self, record: dict[str, Any], kind: str, phone: str, now: float,
                 sent_at: float = 0.0) -> dict[str, Any]:
        """Apply a receipt from ``phone`` to ``record``: only its recipient confirms a
        message (a LID the session could not map to a number confirms nothing). The
        state change carries the receipt's own time (``receipt_time``)."""
        assert self.store is not None
        if kind.upper() not in RECEIPT_RANK:
            return record
        state = MessageState(kind.upper())
        if phone != record["phone"]:
            log.warning("ignored a receipt that does not come from the message's recipient",
                        message_id=record["id"], kind=kind,
                        sender="unknown (a LID without a number)" if not phone else "another")
            return record
        if self.numbers is not None:
            self.numbers.confirm(phone)
        if RECEIPT_RANK.get(record["state"], -1) < RECEIPT_RANK[state]:
            # The history says when the device confirmed it; updated_at stays the
            # moment the record changed (what retention counts from).
            last_change = record["history"][-1][1] if record["history"] else now
            return self.store.transition(record, state, receipt_time(sent_at, last_change, now),
                                         updated_at=now)
        return record

    # ---- incoming messages ------------------------------------------------------------

    def receiveMsg_IncomingReceived(self, msg: IncomingReceived, sender: Any) -> None:
        self._write_or_hold(msg)

    def _store_incoming(self, msg: IncomingReceived) -> None:
        """Store a message written to a session's account (once per WhatsApp id)."""
        assert self.incoming is not None
        record = self.incoming.add(msg, self.clock())
        if record is not None and self.store is not None:  # its event, for /metrics
            self.store.events_written[events.MESSAGE_RECEIVED] += 1
            if msg.media is not None:
                self.media_received[msg.media.kind] = self.media_received.get(
                    msg.media.kind, 0) + 1
        if record is not None:  # never the text or the sender's number in a log line
            log.info("message received", session=msg.session, incoming_id=record["id"],
                     kind=msg.kind, opt_out=record["opt_out"])

    # ---- what WhatsApp told us once: never dropped for want of disk space --------------

    def _write_or_hold(self, msg: IncomingReceived | DeliveryReceipt | DeliveryResults
                       ) -> None:
        """Write ``msg`` now, or keep it for when there is disk space: when its write
        finds the disk full (rolled back whole: no row without its event), or others
        wait already (they go first), or the outbox has no store (a start that failed:
        they go back to the supervisor at the exit). WhatsApp sends it no more; its
        session process sends it again until the commit is acknowledged (``acks``,
        at the next tick), and a copy is a no-op (actors/outbox/held.py). Send results
        too (not kept by the session): a result dropped would leave its message SENDING,
        resent as uncertain at the next start though WhatsApp has it."""
        if not self.held and self.store is not None and self.incoming is not None:
            try:
                self._write_received(msg)
                self._acknowledge(msg)
                return
            except STORE_ERRORS as exc:
                self._rolled_back()
                if not _cannot_write(exc):
                    # Not for want of space: a copy would fail alike, so its session
                    # need not send it again (as a held one that fails so is dropped).
                    self._acknowledge(msg)
                    raise
                log.error("the disk is full: received messages, receipts and send results "
                          "wait in memory (received messages and receipts in their "
                          "session's process too) and are written once there is space; "
                          "free disk space on data_dir",
                          what=type(msg).__name__, session=_session_of(msg))
        if not self.held.hold(msg):
            log.error("the disk is full and too many writes wait in memory: a received "
                      "message, receipt or send result was lost", what=type(msg).__name__,
                      session=_session_of(msg), lost=self.held.lost)
            if isinstance(msg, DeliveryResults):  # its messages' fate is unknown now
                for result in msg.results:
                    self._landed(result.message_id)

    def _acknowledge(self, msg: IncomingReceived | DeliveryReceipt | DeliveryResults) -> None:
        """The session that keeps ``msg`` until it is committed may drop it (a send's
        results are not kept there: its record is SENDING on disk)."""
        if not isinstance(msg, DeliveryResults):
            self.acks.committed(msg.session, msg.origin, msg.seq)

    def _write_received(self, msg: IncomingReceived | DeliveryReceipt | DeliveryResults
                        ) -> None:
        if isinstance(msg, IncomingReceived):
            self._store_incoming(msg)
        elif isinstance(msg, DeliveryResults):
            self._store_results(msg)
        else:
            self._store_receipt(msg)

    def _write_held(self) -> None:
        """What waited for disk space, oldest first, until the disk is full again; then
        the session states whose event could not be written."""
        written = 0
        while (msg := self.held.oldest()) is not None:
            try:
                self._write_received(msg)
            except STORE_ERRORS as exc:
                self._rolled_back()
                if _cannot_write(exc):
                    return
                log.exception("a held write failed for another reason than disk space; "
                              "it is dropped", what=type(msg).__name__,
                              session=_session_of(msg))
                if isinstance(msg, DeliveryResults):
                    self.held.written()
                    self._reconcile()  # its messages' fate is unknown now: uncertain
                    continue
            self.held.written()
            self._acknowledge(msg)  # or never will be
            written += 1
        if written:
            log.info("the received messages and receipts held for disk space are written",
                     count=written)
        for session in list(self.status_unwritten):
            link = self.links.get(session)
            self.status_unwritten.discard(session)
            if link is not None:
                self._session_event(link)

    def _send_acks(self) -> None:
        """One ``ReceivedCommitted`` per session process with writes committed since the
        last tick. A session without a process now has nobody waiting for it."""
        for session, origin, seqs in self.acks.take():
            link = self.links.get(session)
            if link is not None and link.address is not None:
                self.send(link.address, ReceivedCommitted(origin, seqs))

    def _rolled_back(self) -> None:
        """A failed write (a COMMIT refused for want of space) may leave its transaction
        open: roll it back, so the next write starts clean."""
        if self.store is not None and self.store.db.in_transaction:
            with contextlib.suppress(StoreUnavailable):  # a broken connection: gone anyway
                self.store.db.execute("ROLLBACK")

    def receiveMsg_ListIncoming(self, msg: ListIncoming, sender: Any) -> None:
        if self.incoming is None:
            self.send(sender, _not_started(msg.request_id))
            return
        try:
            records, more = self.incoming.page(session=msg.session, first=msg.first,
                                               after=msg.after)
        except (ValueError, OverflowError) as exc:  # a cursor past SQLite's INTEGER too
            self.send(sender, Failed("GRAPHQL_VALIDATION_FAILED", f"{exc}; use a cursor from "
                                     "a previous page", {"field": "after"}, msg.request_id))
            return
        page = IncomingPage(tuple(records), tuple(incoming_cursor(r) for r in records), more)
        self.send(sender, Ok(page, msg.request_id))

    def receiveMsg_MarkRead(self, msg: MarkRead, sender: Any) -> None:
        """Ask the message's session to send its read receipt; it answers the caller."""
        if self.incoming is None:
            self.send(sender, _not_started(msg.request_id))
            return
        record = self.incoming.get(msg.incoming_id)
        if record is None or (msg.sessions is not None and record["session"] not in msg.sessions):
            self.send(sender, Ok(False, msg.request_id))  # another session's is as absent
            return
        link = self.links.get(record["session"])
        if link is None or link.address is None or link.state is not SessionState.CONNECTED:
            state = link.state.value if link is not None else "UNKNOWN"
            self.send(sender, Failed(
                "NOT_CONNECTED", f"session {record['session']!r} is {state}, not CONNECTED; "
                "a read receipt goes out over a live connection: try again once it is "
                "connected", {"state": state, "session": record["session"]}, msg.request_id))
            return
        self.incoming.mark_read(record["id"], self.clock())
        self.send(link.address, ReadIncoming(record["chat"], record["sender_jid"],
                                             (record["wa_message_id"],), sender,
                                             msg.request_id))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        payload = msg.payload
        if isinstance(payload, _Tick):
            self._tick()
        elif isinstance(payload, _StartAgain):
            if self.store is None and self.starting is not None:
                self._start(self.starting)
        elif isinstance(payload, _PaceDue):
            self.pace_armed.discard(payload.session)
            self._dispatch(payload.session)
        elif isinstance(payload, _AckTimeout):
            self.ack_timer_armed = False
            self._ack_timeouts()

    # ---- queries --------------------------------------------------------------------------------

    def receiveMsg_Routed(self, msg: Routed, sender: Any) -> None:
        request = msg.request
        if self.store is None:
            self.send(msg.reply_to, _not_started(getattr(request, "request_id", "")))
            return
        try:
            reply = self._query(request)
        except StoreUnavailable as exc:  # PostgreSQL: answered now, not after a timeout
            log.error("a query found the message store unreachable", error=str(exc))
            reply = _store_unavailable(getattr(request, "request_id", ""))
        if reply is not None:
            self.send(msg.reply_to, reply)

    def _query(self, request: Any) -> Ok | Failed | None:
        """The answer to a routed query (None: not one of the outbox's)."""
        assert self.store is not None
        reply: Ok | Failed
        if isinstance(request, GetMessage):
            record = self.store.get(request.message_id)
            reply = Ok(public_record(record) if record is not None else None,
                       request.request_id)
        elif isinstance(request, GetMessageByKey):
            record = self.store.by_idempotency_key(request.requester, request.session,
                                                   request.idempotency_key)
            reply = Ok(public_record(record) if record is not None else None,
                       request.request_id)
        elif isinstance(request, ListMessages):
            try:
                records, more = self.store.page(session=request.session, state=request.state,
                                                phone=request.phone, first=request.first,
                                                after=request.after)
            except (ValueError, OverflowError) as exc:
                reply = Failed("GRAPHQL_VALIDATION_FAILED", f"{exc}; use a cursor from a "
                               "previous page", {"field": "after"}, request.request_id)
            else:
                page = MessagePage(tuple(public_record(r) for r in records),
                                   tuple(cursor_of(r) for r in records), more)
                reply = Ok(page, request.request_id)
        elif isinstance(request, OpenMedia):
            reply = Ok(self._open_media(request.media_id), request.request_id)
        elif isinstance(request, ChartMessageStates):
            reply = Ok(tuple(events.message_state_chart(self.store.db, self.clock(),
                                                        request.hours, request.sessions)),
                       request.request_id)
        elif isinstance(request, ListEvents):
            try:
                reply = Ok(self._event_page(request), request.request_id)
            except OverflowError as exc:  # a sequence past SQLite's INTEGER: not ours
                reply = Failed("GRAPHQL_VALIDATION_FAILED", f"{exc}; pass the endCursor of "
                               "a previous whatsAppEvents page", {"field": "after"},
                               request.request_id)
        else:
            return None
        return reply

    def _open_media(self, media_id: str) -> dict[str, Any] | None:
        """A reference and its file's key (None: unknown, pruned, or its file is gone
        or damaged, which the log says)."""
        assert self.store is not None and self.config is not None
        ref = self.store.media_ref(media_id)
        if ref is None:
            return None
        root = self.config.media_path
        try:
            if self.media_private is None:
                self.media_private = load_media_private(
                    root, load_key(self.config.encryption, self.config.data_path))
            ref["key"] = file_key(root, ref["sha256"], self.media_private)
        except (OSError, StoreError, MediaStoreError) as exc:
            log.error("a media file cannot be opened", media_id=media_id, error=str(exc))
            return None
        return ref

    def _event_page(self, request: ListEvents) -> EventPage:
        """One page of the log, oldest first."""
        assert self.store is not None
        found, more = events.page_of_events(self.store.db, request.after_seq,
                                            types=request.types, sessions=request.sessions,
                                            first=request.first)
        return EventPage(tuple(found), more, events.last_seq(self.store.db))

    def receiveMsg_CollectHealth(self, msg: CollectHealth, sender: Any) -> None:
        by_session = {s: n for s, n in self.depth.items() if n}
        now = self.clock()
        usage = self.limits.usage(now) if self.limits is not None else {}
        metrics = self.refusals.snapshot(
            self.store.reached if self.store is not None else {},
            self.limits.usage_ratios(now) if self.limits is not None else {},
            self.uncertain_total)
        unconfirmed: dict[str, int] = {}
        try:
            if self.store is not None:
                rows, size = self._event_log_size(now)
                metrics = replace(metrics, events_written=dict(self.store.events_written),
                                  event_rows=rows, event_bytes=size,
                                  media_bytes=outbox_media.stored_bytes(self.store),
                                  media_received=dict(self.media_received),
                                  held_writes=len(self.held), held_lost=self.held.lost)
            if self.store is not None and self.config is not None:
                unconfirmed = self.store.unconfirmed(
                    now - self.config.delivery.unconfirmed_after_seconds)
        except StoreUnavailable as exc:  # the report without the store's figures
            log.warning("health without the message store's figures", error=str(exc))
        # Only sessions that still exist: a forgotten session's SENT records stay until
        # retention, and a warning about a session no one can see helps no one.
        known = {status.session for status in msg.report.sessions}
        unconfirmed = {name: count for name, count in unconfirmed.items() if name in known}
        report = replace(msg.report, queue_depth=sum(by_session.values()), limiter=usage,
                         queue_by_session=by_session, uncertain_total=self.uncertain_total,
                         unconfirmed_by_session=unconfirmed,
                         worker_pids={**msg.report.worker_pids, "outbox": os.getpid()},
                         outbox_metrics=metrics)
        self.send(msg.reply_to, Ok(report, request_id=msg.request_id))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.held and self.supervisor is not None:
            # Back to the supervisor, which keeps them for the next outbox process (a
            # start that failed on a full disk ends here too).
            log.warning("the outbox stops with received messages or receipts not written; "
                        "they go to its next process", count=len(self.held))
            items = []
            while (held := self.held.oldest()) is not None:
                if not isinstance(held, DeliveryResults):  # SENDING: uncertain at next start
                    items.append(held)
                self.held.written()
            self.send(self.supervisor, HandedBack(tuple(items)))
        if self.store is not None:
            self.store.close()
        if self.limits is not None:
            self.limits.close()
        if self.numbers is not None:
            self.numbers.close()
        if self.journal is not None:
            self.journal.close()

    # ---- helpers ---------------------------------------------------------------------------

    def _event_log_size(self, now: float) -> tuple[int, int]:
        """The log's rows and bytes, counted at most every EVENT_SIZE_EVERY_SECONDS:
        counting reads the whole table, and health and /metrics may ask every second."""
        assert self.store is not None
        if self.event_size is None or now - self.event_size[0] > EVENT_SIZE_EVERY_SECONDS:
            self.event_size = (now, *events.event_log_size(self.store.db))
        return self.event_size[1], self.event_size[2]

    def _session_event(self, link: SessionLink) -> None:
        """A session.status event when the session's state differs from the last one
        logged. Session state lives in the supervisor, not in this database, so this is
        not the change's own transaction: the event follows the change (at most one
        actor message later); states that came and went while no outbox ran are
        coalesced into the one seen next (README: Events)."""
        if self.store is None:
            return
        db = self.store.db
        if link.session not in self.session_states:
            try:
                self.session_states[link.session] = events.last_session_state(db,
                                                                              link.session)
            except StoreUnavailable:  # written at a later tick (_write_held)
                self.status_unwritten.add(link.session)
                return
        previous = self.session_states[link.session]
        error = link.last_error.code if link.last_error is not None else None
        nested = db.in_transaction  # then the failure is the enclosing write's to handle
        try:
            with self.store.batch():
                if events.record_session_state(db, link.session, str(link.state), previous,
                                               {"paired": link.paired, "error": error},
                                               self.clock()) is not None:
                    self.store.events_written[events.SESSION_STATUS] += 1
        except STORE_ERRORS as exc:
            if nested or not _cannot_write(exc):
                raise
            # The state is the supervisor's, not lost: written once there is space
            # (states in between coalesce, as while no outbox runs).
            log.error("the disk is full: a session.status event waits for space",
                      session=link.session)
            self.status_unwritten.add(link.session)
            return
        self.status_unwritten.discard(link.session)
        self.session_states[link.session] = str(link.state)

    def _observe_warmup(self, old: SessionLink | None, link: SessionLink) -> None:
        """Start the warm-up of a newly linked device. A linking time that could not be
        written is written before the next send passes (``Warmup.observe``): logged."""
        if self.warmup is None:
            return
        try:
            started = self.warmup.observe(link.session, old.state if old else None,
                                          old.paired if old else None, link.paired,
                                          self.clock())
        except RateStateUnavailable as exc:
            log.error("a new device's warm-up could not be written yet; no send passes "
                      "until it is", session=link.session, error=str(exc))
            return
        if started:
            log.info("session linked a new device; it is in warm-up", session=link.session,
                     days=self.warmup.rules.warmup_seconds / 86400)

    def _can_send(self, session: str) -> bool:
        link = self.links.get(session)
        return (link is not None and link.address is not None
                and link.state is SessionState.CONNECTED)

    def _dispatch(self, session: str) -> None:
        """Hand the session what it may send now (``_take``), once that is committed."""
        assert self.store is not None
        with self.store.batch():
            handover = self._take(session)
        self._hand_over(handover)

    def _take(self, session: str) -> _Handover | None:
        """What the session may send now, moved to SENDING in the caller's transaction:
        unpaced, its next messages, as many as fit in flight; paced, one when its next
        send time has come (then a timer for the one after), and only a recipient's
        oldest pending message, so a slow or retried message is never overtaken by a
        later one to the same person. Handed over only after the commit (``_hand_over``):
        a message is SENDING on disk before it can leave."""
        assert self.store is not None and self.config is not None
        now = self.clock()
        clock = time.monotonic()  # the pauses' clock (see _rate_overlimited)
        if (not self._can_send(session) or self.paused_until.get(session, 0.0) > clock
                or self.rate_pauses.get(session, (0.0, 0))[0] > clock):
            return None
        room = MAX_IN_FLIGHT - self.busy.get(session, 0)
        if room <= 0:
            return None
        wait = self.pacer.wait(session, now)
        if wait > 0:
            self._pace_later(session, wait)
            return None
        typing = self.config.pacing.typing_seconds
        # Unpaced (the simulator, benchmarks) one recipient's messages may be in flight
        # together: a rule of one at a time would serialise a single-recipient load.
        pick = self.store.next_in_order if self.pacer.rules.paced else self.store.next_queued
        deliveries = []
        for record in pick(session, now, self.pacer.batch(room)):
            if record["valid_until"] is not None and record["valid_until"] < now:
                self._finish(record, MessageState.EXPIRED, now, "VALIDITY_PASSED")
                continue
            if link_ended(record["link_epoch"], self.links[session].epoch):
                self._fail_ended(record, now, SESSION_LOGGED_OUT)  # never to a new device
                continue
            self.store.transition(record, MessageState.SENDING, now)
            deliveries.append(Deliver(record["id"], record["phone"], record["text"] or "",
                                      typing, account=record["account"],
                                      media=media_of(record)))
        return _Handover(session, self.links[session].address, tuple(deliveries), now)

    def _hand_over(self, handover: _Handover | None) -> None:
        """Send what ``_take`` moved to SENDING (committed now) and pace the next."""
        if handover is None:
            return
        session, deliveries, now = handover.session, handover.deliveries, handover.now
        for delivery in deliveries:
            self.in_flight[delivery.message_id] = session
        self.busy[session] = self.busy.get(session, 0) + len(deliveries)
        if deliveries:
            self.send(handover.address, DeliverBatch(deliveries))
            next_at = self.pacer.sent(session, now, random.random())
            if self.depth.get(session, 0) > self.busy[session]:  # more are waiting
                self._pace_later(session, next_at - now)

    def _ack_deadline(self, message_id: str) -> None:
        """The caller of ``message_id`` hears SEND_UNCONFIRMED after ``send_timeout``
        unless the ack came first. Deadlines queue in the order they were set (the
        timeout is one number), so one timer, for the oldest, serves them all: a timer
        per send cost the actor's transport a wakeup entry to sort per message."""
        assert self.config is not None
        seconds = self.config.messages.send_timeout_seconds
        self.ack_deadlines.append((time.monotonic() + seconds, message_id))
        if not self.ack_timer_armed:
            self.ack_timer_armed = True
            self.wakeupAfter(timedelta(seconds=seconds), payload=_AckTimeout())

    def _ack_timeouts(self) -> None:
        """Answer every caller whose deadline passed, then wait for the next one."""
        assert self.config is not None
        seconds = self.config.messages.send_timeout_seconds
        now = time.monotonic()
        while self.ack_deadlines and self.ack_deadlines[0][0] <= now:
            _, message_id = self.ack_deadlines.popleft()
            if message_id in self.waiters:  # not answered by its ack meanwhile
                self._unconfirmed(message_id, "ACK_TIMEOUT",
                                  f"WhatsApp has not confirmed it within {seconds:g} s")
        if self.ack_deadlines and not self.ack_timer_armed:
            self.ack_timer_armed = True
            wait = max(ACK_TIMER_MIN_SECONDS, self.ack_deadlines[0][0] - now)
            self.wakeupAfter(timedelta(seconds=wait), payload=_AckTimeout())

    def _pace_later(self, session: str, wait: float) -> None:
        """One timer per waiting paced session (timers cannot be cancelled, so never
        more: an actor flooded with wakeups starves)."""
        if wait > 0 and session not in self.pace_armed:
            self.pace_armed.add(session)
            self.wakeupAfter(timedelta(seconds=wait), payload=_PaceDue(session))

    def _landed(self, message_id: str) -> str | None:
        session = self.in_flight.pop(message_id, None)
        if session is not None:
            self.busy[session] -= 1
        return session

    def _requeue_in_flight(self, session: str) -> None:
        assert self.store is not None
        now = self.clock()
        landed = [m for m, s in self.in_flight.items() if s == session]
        sending = []
        for message_id in landed:
            self._landed(message_id)
            record = self.store.get(message_id)
            if record is not None and record["state"] == MessageState.SENDING:
                sending.append(record)
        self._settle_unknown(sending, now, "its session process ended while sending it")
        self._settle_ended(landed)

    def _settle_unknown(self, records: list[dict[str, Any]], now: float, why: str) -> None:
        """Messages in SENDING whose result will never come: those the sent journal
        shows WhatsApp took are SENT (multi-host mode with leases), the rest uncertain."""
        found = self.journal.found([r["id"] for r in records]) if self.journal else {}
        for record in records:
            sent = found.get(record["id"])
            if sent is None:
                self._uncertain(record, now, why)
                continue
            log.info("in-flight message found in the sent journal: sent, not sent again",
                     message_id=record["id"], why=why)
            self._on_result(DeliveryResult(record["id"], ok=True,
                                           wa_message_id=sent.wa_message_id,
                                           timestamp=sent.sent_at))

    # ---- the end of a linked device: its queue ends with it (actors.session.links) -----------

    def _end_stale_queues(self) -> None:
        """At start: the queues of forgotten sessions, and of devices logged out while
        this process was not there to hear it, end now."""
        assert self.store is not None
        for session in list(self.depth):
            link = self.links.get(session)
            if link is None:
                self._end_link_queue(session, None, SESSION_FORGOTTEN)
            else:
                self._end_link_queue(session, link.epoch, SESSION_LOGGED_OUT)

    def _end_link_queue(self, session: str, epoch: int | None, reason: str) -> None:
        """Fail the waiting messages of ``session`` accepted for an earlier linked
        device (every one when ``epoch`` is None). Those in flight may still be sent
        from that device (they were handed to it); if they come back unsent, they fail."""
        assert self.store is not None
        now = self.clock()
        ended = self.store.queued_of_ended_link(session, epoch)
        with self.store.batch():
            for record in ended:
                self._fail_ended(record, now, reason)
        if ended:
            log.warning("queue of an ended link failed", session=session, reason=reason,
                        count=len(ended))
        for message_id, owner in self.in_flight.items():
            if owner == session:
                self.ended_in_flight[message_id] = reason

    def _settle_ended(self, message_ids: Iterable[str]) -> None:
        """Messages in flight when their link ended, back in the queue now: fail them."""
        if not self.ended_in_flight:
            return
        assert self.store is not None
        now = self.clock()
        for message_id in message_ids:
            reason = self.ended_in_flight.pop(message_id, None)
            if reason is None:
                continue
            record = self.store.get(message_id)
            if record is not None and record["state"] == MessageState.QUEUED:
                self._fail_ended(record, now, reason)

    def _fail_ended(self, record: dict[str, Any], now: float, reason: str) -> None:
        assert self.store is not None
        message = ENDED_MESSAGES[reason]
        record = self._finish(record, MessageState.FAILED, now, reason, error=message)
        self._answer(record["id"], Failed("SEND_FAILED", message,
                                          {"reason": reason, "messageId": record["id"]}))

    def _uncertain(self, record: dict[str, Any], now: float, why: str,
                   reason: str = "UNCERTAIN", attempts: int | None = None,
                   error: str = "") -> None:
        """A send whose fate nobody knows (a crash hid it, or WhatsApp never said):
        flag and count it, then resend or fail by ``delivery.on_uncertain``. A test
        message, or one out of attempts, is never sent again."""
        assert self.store is not None and self.config is not None
        self._count_uncertain(record)
        delivery = self.config.delivery
        attempts = record["attempts"] if attempts is None else attempts
        resend = (delivery.on_uncertain == "resend" and not record["is_test"]
                  and attempts < delivery.max_attempts)
        log.warning("message outcome uncertain", message_id=record["id"], why=why,
                    reason=reason, resend=resend)
        if resend:
            # The caller, if one waits, hears the resend's outcome (or SEND_UNCONFIRMED).
            self.store.transition(record, MessageState.QUEUED, now, reason, uncertain=True,
                                  attempts=attempts, error=error)
            return
        record = self._finish(record, MessageState.FAILED, now, reason, uncertain=True,
                              attempts=attempts, error=error)
        not_again = ("delivery.on_uncertain = \"fail\"" if delivery.on_uncertain == "fail"
                     else "a test message" if record["is_test"]
                     else f"after {attempts} attempts")
        self._answer(record["id"], Failed(
            "SEND_FAILED", f"{why}: the message may or may not have been delivered, and it is "
            f"not sent again ({not_again}); ask the recipient before sending it once more",
            {"reason": reason, "messageId": record["id"], "uncertain": True}))

    def _count_uncertain(self, record: dict[str, Any]) -> None:
        """Each message counts once in ``uncertain_total``, however often it is flagged."""
        if not record["uncertain"]:
            self.uncertain_total += 1

    def _unconfirmed(self, message_id: str, reason: str, why: str) -> None:
        """Answer a waiting caller before WhatsApp confirmed its message: the message
        stays and will be sent, so the answer says not to send it again, and the record
        is flagged (a caller that sends it again anyway makes it arrive twice)."""
        assert self.store is not None
        record = self.store.get(message_id)
        if record is None:
            return
        if not record["uncertain"]:
            self._count_uncertain(record)
            try:
                self.store.mark_uncertain(message_id)
            except STORE_ERRORS as exc:
                self._rolled_back()
                if not _cannot_write(exc):
                    raise
                # The caller is told all the same: the flag only warns a later reader.
                log.error("the disk is full: a message answered as unconfirmed is not "
                          "flagged uncertain on disk", message_id=message_id)
        self._answer(message_id, Failed(
            "SEND_UNCONFIRMED",
            f"message {message_id} is stored and will be sent, but {why}. Do not send it "
            "again (a retry with the same idempotencyKey is safe); follow it with "
            f"whatsAppMessage(id: \"{message_id}\")",
            {"reason": reason, "messageId": message_id, "state": record["state"],
             "uncertain": True}))

    # ---- a handler that failed half-way (RunOnce) ---------------------------------------

    def handler_failed(self, msg: Any) -> None:
        """Memory back in line with disk; a message already stored for the failed
        request is answered as unconfirmed; a failed start ends this process, and the
        supervisor starts a fresh one."""
        accepting, self.accepting = self.accepting, None
        self.held_replies = None  # their records were rolled back
        if isinstance(msg, StartWorker):
            self.send(self.myAddress, ActorExitRequest())
            return
        if self.store is None:
            return
        if accepting is not None:
            record, reply_to, request_id = accepting
            self.waiters.setdefault(record["id"], _Waiter(reply_to, request_id))
            self._unconfirmed(record["id"], "GATEWAY_ERROR",
                              "the gateway failed while answering the request")
        self._reconcile()

    def _reconcile(self) -> None:
        """The queue depths from disk, and every SENDING record in flight and the other
        way round: a SENDING record nobody waits for lost its result in the failed
        handler (its commit was rolled back), so its fate is unknown."""
        assert self.store is not None
        self.depth = self.store.pending_counts()
        sending = {r["id"]: r for r in self.store.in_state(MessageState.SENDING)}
        for message_id in [m for m in self.in_flight if m not in sending]:
            self._landed(message_id)
        now = self.clock()
        for message_id, record in sending.items():
            if message_id not in self.in_flight:
                self._uncertain(record, now, "its result was lost in a failed handler")

    def _finish(self, record: dict[str, Any], state: MessageState, now: float, reason: str,
                **fields: Any) -> dict[str, Any]:
        """Into a final state (the store erases the text there when keep_text is off)."""
        assert self.store is not None
        updated = self.store.transition(record, state, now, reason, **fields)
        session = record["session"]
        self.depth[session] = max(0, self.depth.get(session, 0) - 1)
        return updated

    def _key_fresh(self, record: dict[str, Any]) -> bool:
        assert self.config is not None
        return self.clock() - record["accepted_at"] < self.config.delivery.idempotency_hours * 3600

    def _answer(self, message_id: str, reply: Accepted | Failed) -> None:
        if self.held_replies is not None:
            self.held_replies.append((message_id, reply))  # after the commit
            return
        waiter = self.waiters.pop(message_id, None)
        if waiter is not None:
            self.send(waiter.reply_to, replace(reply, request_id=waiter.request_id))

    def _log_clock_step(self) -> None:
        """Say once per step that the wall clock jumped: nothing here follows it, so
        the dates the outbox writes are off by that much until it restarts."""
        skew = self.clock.skew()
        if abs(skew - self.skew_logged) > SKEW_WORTH_A_LOG_SECONDS:
            self.skew_logged = skew
            log.warning("the wall clock stepped; validity, retries and rate limits keep "
                        "their length (the outbox's dates keep the old clock until it "
                        "restarts)", seconds=round(skew, 1))

    def _tick(self) -> None:
        self._arm_tick()  # first: a tick that fails is not run again, the next one is due
        try:
            self._tick_work()
        except StoreUnavailable as exc:  # PostgreSQL: the next tick tries again
            if not self.store_down:
                log.error("the message store (PostgreSQL, cluster.database_url) cannot be "
                          "reached: sends are refused, results and receipts wait in memory",
                          error=str(exc))
            self.store_down = True
            return
        if self.store_down:
            log.info("the message store (PostgreSQL) answers again")
            self.store_down = False

    def _tick_work(self) -> None:
        assert self.store is not None and self.config is not None
        now = self.clock()
        self._log_clock_step()
        if self.held or self.status_unwritten:
            self._write_held()
        if self.acks:
            self._send_acks()
        for record in self.store.expire_due(now):
            self.depth[record["session"]] = max(0, self.depth.get(record["session"], 0) - 1)
        if now - self.last_prune > PRUNE_EVERY_SECONDS:
            self.last_prune = now
            pruned = self.store.prune(now - self.config.messages.retention_hours * 3600)
            if pruned:
                log.info("pruned finished message records", count=pruned)
            kept = self.config.events
            pruned = events.prune_old_events(self.store.db, now - kept.retention_days * 86400,
                                             kept.prune_batch, kept.prune_max_batches)
            if pruned:
                log.info("pruned old events", count=pruned)
            self._prune_incoming(now)
            self._prune_media(now)
            if self.journal is not None:
                self.journal.prune()
            if self.limits is not None:
                self._expire_rate_state()
        for session in list(self.links):
            self._dispatch(session)

    def _expire_rate_state(self) -> None:
        assert self.limits is not None
        try:
            self.limits.expire()
        except RateStateUnavailable as exc:
            log.info("expired rate windows were not removed this time", why=str(exc))

    def _prune_incoming(self, now: float) -> None:
        assert self.config is not None
        if self.incoming is None:
            return
        pruned = self.incoming.prune(now - self.config.messages.incoming_retention_hours * 3600)
        if pruned:
            log.info("pruned received messages", count=pruned)

    def _prune_media(self, now: float) -> None:
        """After the message records and received messages: their references go first."""
        assert self.store is not None and self.config is not None
        deleted = outbox_media.prune(self.store, self.config.media_path, now,
                                     self.config.media.retention_days * 86400)
        if deleted:
            log.info("deleted media files past retention", count=deleted)

    def _arm_tick(self) -> None:
        assert self.config is not None
        self.wakeupAfter(timedelta(seconds=self.config.delivery.tick_seconds), payload=_Tick())


def _warming_up(session: str, retry_after: float, pacing: PacingConfig,
                request_id: str) -> Failed:
    seconds = max(1, int(retry_after + 0.999))
    return Failed(
        "RATE_LIMITED", f"session '{session}' linked its device less than "
        f"{pacing.warmup_days:g} days ago and sends at most {pacing.warmup_daily_cap} "
        f"messages per 24 h while it warms up (pacing.warmup_daily_cap); retry in "
        f"{seconds} s", {"retryAfterSeconds": seconds, "scope": WARMUP_SCOPE},
        request_id=request_id)


def _session_of(msg: IncomingReceived | DeliveryReceipt | DeliveryResults) -> str | None:
    """For a log line (results do not say their session)."""
    return None if isinstance(msg, DeliveryResults) else msg.session


@dataclass(frozen=True, slots=True)
class _Memory:
    """What handling send results changes in the outbox's memory before its commit: put
    back as it was when the commit finds the disk full, so the results can be handled
    again later as if they had just arrived (the messages are still in flight)."""

    in_flight: dict[str, str]
    busy: dict[str, int]
    depth: dict[str, int]
    paused_until: dict[str, float]
    rate_pauses: dict[str, tuple[float, int]]
    ended_in_flight: dict[str, str]
    uncertain_total: int
    events_written: Counter[str]

    @classmethod
    def of(cls, outbox: OutboxActor) -> _Memory:
        assert outbox.store is not None
        return cls(dict(outbox.in_flight), dict(outbox.busy), dict(outbox.depth),
                   dict(outbox.paused_until), dict(outbox.rate_pauses),
                   dict(outbox.ended_in_flight), outbox.uncertain_total,
                   Counter(outbox.store.events_written))

    def restore(self, outbox: OutboxActor) -> None:
        assert outbox.store is not None
        outbox.in_flight, outbox.busy, outbox.depth = self.in_flight, self.busy, self.depth
        outbox.paused_until, outbox.rate_pauses = self.paused_until, self.rate_pauses
        outbox.ended_in_flight, outbox.uncertain_total = (self.ended_in_flight,
                                                          self.uncertain_total)
        outbox.store.events_written = self.events_written
        for session, wa_id, early in outbox.early_taken or ():
            outbox.early_receipts.hold(session, wa_id, early.kind, early.phone, early.at,
                                       early.sent_at)


def _disk_full_failure(free: int, min_free: int, request_id: str) -> Failed:
    """Nothing was written: the caller retries later, when the operator freed space."""
    return Failed("UNAVAILABLE", refusal_text(free, min_free),
                  {"reason": DISK_FULL, "retryAfterSeconds": DISK_FULL_RETRY_SECONDS},
                  request_id=request_id)


def _cannot_write(exc: BaseException) -> bool:
    """A write that could not be made now, and may be made later: the disk is full, or
    the PostgreSQL store (multi-host mode) cannot be reached. Anything else is a bug."""
    return is_disk_full(exc) or isinstance(exc, StoreUnavailable)


def _write_failure(exc: BaseException, send: SendText, record: dict[str, Any] | None,
                   min_free: int) -> Failed:
    """The answer to a send whose write failed. Nothing acknowledged that was not
    committed: a full disk or an unreachable database refused it (retry later), except
    a COMMIT whose answer was lost, which may have been committed: that caller hears
    UNCERTAIN, with what to look it up by, never a plain "retry"."""
    if not isinstance(exc, StoreUnavailable):
        return _disk_full_failure(0, min_free, send.request_id)
    if exc.outcome_unknown:
        return Failed("UNCERTAIN", "the message store (PostgreSQL) lost the connection "
                      "while committing this message: it may have been accepted; do not "
                      "send it blindly again: look it up with whatsAppMessageByKey("
                      "idempotencyKey, session), or send again with the same "
                      "idempotencyKey (it is never sent twice)",
                      {"reason": STORE_UNAVAILABLE, "idempotencyKey": send.idempotency_key,
                       "session": send.session,
                       "messageId": record["id"] if record is not None else None},
                      request_id=send.request_id)
    return _store_unavailable(send.request_id)


def _store_unavailable(request_id: str) -> Failed:
    """The PostgreSQL store cannot be reached: nothing was written or read."""
    return Failed("UNAVAILABLE", "the message store (PostgreSQL, cluster.database_url) "
                  "cannot be reached; nothing was written; retry in a few seconds",
                  {"reason": STORE_UNAVAILABLE, "retryAfterSeconds": STORE_RETRY_SECONDS},
                  request_id=request_id)


def _not_started(request_id: str) -> Failed:
    """A request that overtook StartWorker: a restarted outbox's address is given out
    (GetRoutes) as soon as the process exists, and a web process's message can arrive
    before the supervisor's. Nothing was written: the caller may simply retry."""
    return Failed("UNAVAILABLE", "the message store is starting; retry in a few seconds",
                  request_id=request_id)


def _accepted(record: dict[str, Any], request_id: str, duplicate: bool = False) -> Accepted:
    return Accepted(record["id"], MessageState(record["state"]), record["accepted_at"],
                    request_id,
                    duplicate=duplicate, record=public_record(record))


def _key_reused(send: SendText, message_id: str) -> Failed:
    return Failed(
        "IDEMPOTENCY_KEY_REUSED",
        f"idempotency key {send.idempotency_key!r} was already used on session "
        f"'{send.session}' for a different message ({message_id}: another recipient or "
        "text); nothing was sent. Use a new key for a new message, or send exactly the "
        "same recipient and text to retry the first one",
        {"field": "idempotencyKey", "messageId": message_id}, request_id=send.request_id)
