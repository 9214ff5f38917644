"""AuditActor: the single writer of the audit log while the gateway runs.

A thin shell around ``actors.audit.log``: it takes the audit lock for its whole life
(so a CLI can tell that the gateway writes, and sends its entries here instead of
writing beside it), opens the log (recovering the chain's tail) and appends every
``AuditEvent`` it is told. Writing a line is one ``write()`` to the page cache, so the
handler never blocks for long.

Refused requests (``auth.failure``) come in bursts when a client hammers the API: the
first of a kind (network, code, route template, token; never the path the client
chose) is written at once, the rest as counted summaries at growing intervals
(``actors.audit.bursts``), so a flood costs a trickle of lines; and the log keeps at
most ``audit.max_files`` files (``AuditLog.retire``), so nothing fills the disk.

Nothing is dropped silently: events that arrive while the log cannot be opened (the
lock is briefly held by a CLI, or the disk is full) wait in memory, up to
``MAX_PENDING``; beyond that, or when a write fails, they are counted and the next
entry that can be written is preceded by ``audit.lost`` with the count.

In multi-host mode with a database (``lease_mode``) the chain is the table of
``actors.audit.pg`` and only the active leader writes it. A standby leader's actor
(or one whose leader stepped down) queues its entries in the database instead
(``PgAuditQueue``), and looks every ``STANDBY_RETRY_SECONDS`` whether its leader took
the lock; the active leader chains the queued entries every ``DRAIN_SECONDS``
(``PgAuditLog.drain``). A new leader reads the head the old one left and goes on from
there. An append the database refuses (this leader lost the lock, or the chain moved
on) writes nothing: the entry goes back to the front of the memory queue (or is
refused to a caller that waits for the answer) and the log is opened again, as the
queue of a standby or at the new head. While the database cannot be reached, entries
wait in memory as above.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.audit.bursts import BurstCounter
from actors.audit.log import (
    TIME_PRECISION,
    AuditLock,
    AuditLog,
    AuditNotLeader,
    AuditRefused,
    AuditUnreachable,
    ChainWriter,
    audit_dir,
    lock_holder,
)
from actors.messages import (
    AuditBatch,
    AuditEvent,
    Failed,
    Ok,
    RecordAudit,
    Routed,
    StartWorker,
)
from actors.run_once import RunOnce
from actors.system import bind_address, host_name
from actors.whoami import TellsItsProcess
from gateway.core.config import Config, lease_mode
from gateway.core.disk import disk_full_details, is_disk_full, write_refused_text
from gateway.core.observability import setup_logging
from gateway.core.times import iso_time

log = structlog.get_logger("wagate.audit")

LOCK_RETRY_SECONDS = 0.2  # a CLI holds the lock for one entry: milliseconds
OPEN_RETRY_SECONDS = 5.0  # the log could not be opened (disk full, damaged tail)
LOCK_WARN_SECONDS = 5.0
STANDBY_RETRY_SECONDS = 1.0  # a standby leader looks this often whether it leads now
DRAIN_SECONDS = 1.0  # the active leader chains the entries standbys queued this often
MAX_PENDING = 10000
MEGABYTE = 1024 * 1024
AUTH_FAILURE = "auth.failure"


@dataclass(frozen=True, slots=True)
class _Retry:
    """Try again to take the lock / open the log."""


@dataclass(frozen=True, slots=True)
class _Drain:
    """Time to chain the entries other leaders queued in the database."""


@dataclass(frozen=True, slots=True)
class _BurstTick:
    """Time to write the counts of refused-request bursts whose window has passed."""


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    reply_to: Any = None
    request_id: str = ""


class AuditActor(TellsItsProcess, RunOnce, ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Config | None = None
        self.lock: AuditLock | None = None
        self.log: ChainWriter | None = None
        self.standby = False  # multi-host: this leader does not hold the leadership lock
        self.drain_armed = False
        self.pending: deque[_Pending] = deque()
        self.lost = 0
        self.retry_armed = False
        self.waiting_since: float | None = None
        self.warned_at = 0.0
        self.bursts: BurstCounter | None = None
        self.burst_tick_armed = False

    def receiveMsg_StartWorker(self, msg: StartWorker, sender: Any) -> None:
        if self.config is not None:
            return
        setup_logging(msg.config.logging)  # actor logs go to data_dir/logs
        self.config = msg.config
        self.bursts = BurstCounter(msg.config.audit.burst_seconds)
        self.lock = AuditLock(audit_dir(msg.config.data_path))
        self._open()

    def receiveMsg_AuditEvent(self, msg: AuditEvent, sender: Any) -> None:
        if msg.event == AUTH_FAILURE and self.bursts is not None and isinstance(
                msg.fields, Mapping):
            first = self.bursts.observe(msg.fields, time.time())
            self._arm_burst_tick()
            if first is None:
                return  # counted: written with its burst's summary
        self._record(_Pending(msg))

    def receiveMsg_AuditBatch(self, msg: AuditBatch, sender: Any) -> None:
        for event in msg.events:
            self.receiveMsg_AuditEvent(event, sender)

    def receiveMsg_RecordAudit(self, msg: RecordAudit, sender: Any) -> None:
        self._record(_Pending(msg.entry, sender, msg.request_id))

    def receiveMsg_Routed(self, msg: Routed, sender: Any) -> None:
        if isinstance(msg.request, RecordAudit):
            self._record(_Pending(msg.request.entry, msg.reply_to, msg.request.request_id))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if isinstance(msg.payload, _BurstTick):
            self.burst_tick_armed = False
            if self.bursts is not None:
                self._record_bursts(self.bursts.due(time.time()))
                if len(self.bursts):
                    self._arm_burst_tick()
            return
        if isinstance(msg.payload, _Retry):
            self.retry_armed = False
            self._open()
        elif isinstance(msg.payload, _Drain):
            self.drain_armed = False
            self._drain()

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.bursts is not None:
            self._record_bursts(self.bursts.flush())
        if self.pending:
            log.error("audit entries not written at exit", count=len(self.pending))
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.lock is not None:
            self.lock.release()

    # ---- internals ----------------------------------------------------------------------

    def _arm_burst_tick(self) -> None:
        if not self.burst_tick_armed and self.config is not None:
            self.burst_tick_armed = True
            self.wakeupAfter(timedelta(seconds=self.config.audit.burst_seconds),
                             payload=_BurstTick())

    def _record_bursts(self, summaries: list[dict[str, Any]]) -> None:
        for summary in summaries:
            fields = {**summary, "first": iso_time(summary["first"], TIME_PRECISION),
                      "last": iso_time(summary["last"], TIME_PRECISION)}
            self._record(_Pending(AuditEvent(AUTH_FAILURE, fields)))

    def _record(self, item: _Pending) -> None:
        # While a retry is armed, wait for it: no reopening (and error log) per event.
        if self.log is None and (self.retry_armed or not self._open()):
            if item.reply_to is not None:
                # A caller waits to act on the answer (an admin command records before
                # it reports success): refused now, so it undoes or retries its action,
                # and never written later behind its back.
                self._refuse(item, STANDBY_TEXT if self.standby else
                             "the audit log cannot be written right now (the disk "
                             "may be full, or another process holds the audit lock)")
                return
            if len(self.pending) >= MAX_PENDING:
                self.lost += 1
                self._refuse(item, "the audit log cannot be written right now")
            else:
                self.pending.append(item)
            return
        self._write(item)

    def _open(self) -> bool:
        """Take the lock and open the log; False (and a retry armed) when not possible.
        A standby's queue is open, but the chain is tried again."""
        if self.log is not None and not self.standby:
            return True
        if self.config is None or self.lock is None:
            return False
        config = self.config
        now = time.time()
        if not self.lock.held:
            info = {"pid": os.getpid(), "admin_port": config.actors.admin_port,
                    "writer": "gateway", "since": iso_time(now, TIME_PRECISION)}
            try:
                acquired = self.lock.acquire(info)
            except OSError as exc:  # the audit directory cannot be created or opened
                log.error("cannot take the audit lock; entries wait in memory",
                          error=str(exc))
                self._retry(OPEN_RETRY_SECONDS)
                return False
            if not acquired:
                self.waiting_since = self.waiting_since or now
                if now - self.waiting_since >= LOCK_WARN_SECONDS and \
                        now - self.warned_at >= LOCK_WARN_SECONDS:
                    self.warned_at = now
                    log.warning("the audit log is locked by another process; waiting",
                                holder=lock_holder(self.lock.directory),
                                waiting_seconds=round(now - self.waiting_since, 1))
                self._retry(LOCK_RETRY_SECONDS)
                return False
        self.waiting_since = None
        try:
            chain = open_writer(config, self.lock.directory)
        except AuditNotLeader:
            return self._open_queue()
        except Exception as exc:  # a damaged tail, a full disk: say so, keep trying
            log.error("cannot open the audit log; entries wait in memory", error=str(exc))
            self._retry(OPEN_RETRY_SECONDS)
            return self.log is not None
        if self.log is not None:  # the queue of the standby this leader was
            self.log.close()
        self.log = chain
        if self.standby:
            self.standby = False
            log.warning("this leader writes the audit chain now; it continues after the "
                        "last entry in the database", pending=len(self.pending))
        if self.log.torn is not None:
            log.warning("the audit log ended in a torn line; it was set aside",
                        saved_as=self.log.torn.saved_as, bytes=self.log.torn.size)
        opened: dict[str, Any] = {"pid": os.getpid(), "writer": "gateway"}
        if lease_mode(config):
            opened["host"] = host_name(config)
        self._write(_Pending(AuditEvent("audit.opened", opened)))
        while self.pending and self.log is not None:
            self._write(self.pending.popleft())
        if lease_mode(config):
            self._drain()
        return self.log is not None

    def _open_queue(self) -> bool:
        """This leader is a standby: its entries go to the database's queue, for the
        active leader to chain; whether it leads is asked again soon."""
        assert self.config is not None and self.lock is not None
        self._retry(STANDBY_RETRY_SECONDS)
        if not self.standby:
            self.standby = True
            log.info("this leader is a standby: only the active leader writes the audit "
                     "chain; this one's entries are queued in the database for it",
                     pending=len(self.pending))
        if self.log is None:
            try:
                self.log = open_queue(self.config, self.lock.directory)
            except Exception as exc:  # the database is unreachable: entries wait here
                log.error("cannot queue audit entries in the database; they wait in memory",
                          error=str(exc))
                return False
        while self.pending and self.log is not None:
            self._write(self.pending.popleft())
        return self.log is not None

    def _drain(self) -> None:
        """The active leader chains what other leaders queued (then again in a while)."""
        drain: Callable[[], int] | None = getattr(self.log, "drain", None)
        if drain is None or self.standby:
            return
        try:
            chained = drain()
        except AuditRefused as exc:
            log.error("chaining queued audit entries was refused; they stay queued",
                      error=str(exc))
            self._reopen(isinstance(exc, AuditNotLeader))
            return
        except Exception as exc:  # the database: the entries stay queued
            log.error("cannot chain queued audit entries; they stay queued", error=str(exc))
            self._reopen(False)  # opening again drains again
            return
        if chained:
            log.info("queued audit entries chained", count=chained)
        if not self.drain_armed:
            self.drain_armed = True
            self.wakeupAfter(timedelta(seconds=DRAIN_SECONDS), payload=_Drain())

    def _reopen(self, standby: bool) -> None:
        """The database refused this writer: open again, as a standby's queue or at the
        chain's new head."""
        if self.log is not None:
            self.log.close()
        self.log = None
        self.standby = standby
        self._retry(STANDBY_RETRY_SECONDS if standby else LOCK_RETRY_SECONDS)

    def _write(self, item: _Pending) -> None:
        assert self.log is not None
        event = item.event
        fields = event.fields if isinstance(event.fields, Mapping) else {"fields": event.fields}
        try:
            if self.lost:
                self.log.append("audit.lost", {"count": self.lost})
                self.lost = 0
            entry = self.log.append(event.event, fields, event.request_id)
        except AuditRefused as exc:
            self._refused(item, exc)
            return
        except AuditUnreachable as exc:
            self._unreachable(item, exc)
            return
        except Exception as exc:  # never raise: a raising handler runs twice
            self.lost += 1
            log.error("audit entry not written", audit_event=str(event.event)[:64],
                      error=str(exc))
            if self.log.broken:
                self.log.close()
                self.log = None
                self._retry(OPEN_RETRY_SECONDS)
            if is_disk_full(exc):
                self._refuse(item, write_refused_text("the audit entry"), disk_full_details())
            else:
                self._refuse(item, "the audit log could not be written; see the actor log")
            return
        if item.reply_to is not None:
            self.send(item.reply_to, Ok({"seq": entry["seq"], "hash": entry["hash"]},
                                        request_id=item.request_id))

    def _unreachable(self, item: _Pending, exc: AuditUnreachable) -> None:
        """The database could not be asked (a broken connection, a restart): the entry
        waits in memory, at the front, and the log is opened again in a while. (Should
        the lost answer have been a commit, the entry is chained twice, never lost.)"""
        log.error("the audit database cannot be reached; entries wait in memory",
                  audit_event=str(item.event.event)[:64], error=str(exc))
        if item.reply_to is not None:
            self._refuse(item, "the audit database cannot be reached right now")
        elif len(self.pending) >= MAX_PENDING:
            self.lost += 1
        else:
            self.pending.appendleft(item)
        if self.log is not None:
            self.log.close()
        self.log = None
        self._retry(STANDBY_RETRY_SECONDS)

    def _refused(self, item: _Pending, exc: AuditRefused) -> None:
        """The database refused the append (this leader lost the lock, or the chain
        moved on): nothing was written. The entry waits at the front of the queue (or
        is refused to its caller, who acts on the answer), and the log is opened again,
        which reads the head anew: as soon as this leader leads, or at once after a
        moved head."""
        assert self.log is not None
        standby = isinstance(exc, AuditNotLeader)
        log.error("audit entry refused by the database; it waits to be written again",
                  audit_event=str(item.event.event)[:64], error=str(exc),
                  pending=len(self.pending) + (item.reply_to is None))
        if item.reply_to is not None:
            self._refuse(item, STANDBY_TEXT if standby else
                         "the audit chain moved on under this writer")
        elif len(self.pending) >= MAX_PENDING:
            self.lost += 1
        else:
            self.pending.appendleft(item)
        self._reopen(standby)

    def _refuse(self, item: _Pending, message: str,
                details: dict[str, Any] | None = None) -> None:
        if item.reply_to is not None:
            text = message if details else message + "; retry shortly"
            self.send(item.reply_to, Failed("UNAVAILABLE", text, details or {},
                                            request_id=item.request_id))

    def _retry(self, seconds: float) -> None:
        if not self.retry_armed:
            self.retry_armed = True
            self.wakeupAfter(timedelta(seconds=seconds), payload=_Retry())


STANDBY_TEXT = ("this leader is a standby: only the active leader writes the audit chain "
                "(multi-host mode)")


def open_queue(config: Config, directory: Any) -> ChainWriter:
    """A standby leader's writer: the database's queue of entries for the active leader
    (multi-host mode with a database only)."""
    from actors.audit.pg import PgAuditQueue

    return PgAuditQueue.open(config.cluster.database_url, host_name(config),
                             config.audit.recipients, secret_dir=directory,
                             timeout_seconds=config.cluster.lease_renew_seconds)


def open_writer(config: Config, directory: Any) -> ChainWriter:
    """The chain's writer: the files in ``directory``, or in multi-host mode with a
    database the table there, fenced by this leader's hold on the leadership lock
    (its address as the supervisor publishes it). psycopg is imported only then."""
    if not lease_mode(config):
        return AuditLog.open(directory, int(config.audit.max_file_mb * MEGABYTE),
                             config.audit.recipients, keep_files=config.audit.max_files)
    from actors.audit.pg import PgAuditLog

    return PgAuditLog.open(config.cluster.database_url, config.audit.recipients,
                           secret_dir=directory,
                           leader_address=f"{bind_address(config)}:{config.actors.admin_port}",
                           leader_host=host_name(config),
                           timeout_seconds=config.cluster.lease_renew_seconds)
