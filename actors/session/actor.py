"""SessionActor: one WhatsApp session in its own process.

A thin shell: the state machine decides, the transport talks to WhatsApp, and this
actor wires them together without ever blocking its own thread. Transport calls
that can block (connect, send, logout, close) run on worker threads; everything
they report comes back through the thread bridge, tagged with the generation of
the client that produced it so late events from a closed client are ignored.

With a storage key the transport works on a decrypted working copy of the session's
stores (``actors.session.working_copy``) and this actor writes encrypted checkpoints back on
a store thread: on pairing, on every connect (before CONNECTED is reported, so a
session that says it is connected survives any crash), every
``encryption.checkpoint_seconds`` while changed, and on exit.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from thespian.actors import ActorExitRequest, WakeupMessage

from actors.messages import (
    FENCE_LEASE_LOST,
    FENCE_STORE_WRITE,
    Deliver,
    DeliverBatch,
    DeliveryReceipt,
    DeliveryResult,
    DeliveryResults,
    Failed,
    IncomingReceived,
    MediaSpec,
    NumberLookup,
    Ok,
    PairingCodeRequest,
    ReadIncoming,
    ReceivedCommitted,
    ReceivedUnkept,
    ResendReceived,
    RetireSession,
    SessionCommand,
    SessionState,
    StartSession,
    StatusChanged,
    StoreWriteFenced,
)
from actors.session.links import ACCOUNT_CHANGED, not_connected_yet, wrong_account
from actors.session.machine import (
    Action,
    ArmConnectTimeout,
    ArmWatchdog,
    LogoutClient,
    ScheduleReconnect,
    SessionMachine,
    StartClient,
    StopClient,
)
from actors.session.states import ACTIVE_STATES
from actors.session.unacked import Unacknowledged, new_origin
from actors.supervisor.policy import ReconnectPolicy
from actors.system import host_config, host_name, on_required_host
from actors.threadbridge import BridgedActor
from actors.transport import parallel_sends
from actors.transport.base import (
    RATE_OVERLIMIT,
    Connected,
    EngineSetupError,
    IncomingMessage,
    LoggedOut,
    OutgoingMedia,
    PairingClosed,
    Receipt,
    SendError,
    SentMessage,
    Transport,
    TransportEvent,
)
from actors.whoami import TellsItsProcess
from gateway.core.collector import freeze_long_lived
from gateway.core.config import MessagesConfig, lease_mode
from gateway.core.disk import is_disk_full
from gateway.core.errors import WagateError
from gateway.core.observability import setup_logging
from gateway.core.threads import started_executor
from gateway.core.validation import bounded_text

if TYPE_CHECKING:  # loaded in the session process only: it brings in the cipher library
    from actors.leases.keeper import LeaseKeeper
    from actors.session.journaling import SendJournaling
    from actors.session.working_copy import FencedWrite, WorkingCopy

log = structlog.get_logger("wagate.session")

# Typing indicators, pairing codes and logouts: apart from the send workers, so none
# waits behind a slow send (how many sends run at once is the engine's: PARALLEL_SENDS).
AUX_WORKERS = 4
LOGOUT_GRACE_SECONDS = 15.0
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # lastError code: the stores cannot be decrypted
# Multi-host mode: how long an exit (ActorExitRequest, also what SIGTERM becomes) waits
# for running sends to come back and be journaled (actors.session.journaling).
EXIT_JOURNAL_SECONDS = 3.0
JOURNAL_TIMEOUT_SECONDS = 1.0  # each journal write's bound (connect, statement)


def _logout_and_close(client: Transport) -> None:
    """Worker thread: unlink the device, then release the client."""
    try:
        client.logout()
    except Exception as exc:
        log.warning("logout failed; credentials removed locally", error=repr(exc))
    finally:
        try:
            client.close()
        except Exception as exc:
            log.warning("closing the client after logout failed", error=repr(exc))


class EngineUnavailable(WagateError):
    """The configured transport engine cannot be loaded in this process (or the
    session's stored credentials cannot be opened: ``code`` tells which)."""

    def __init__(self, message: str, code: str = "ENGINE_UNAVAILABLE") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class _Event:
    generation: int
    event: TransportEvent


@dataclass(frozen=True, slots=True)
class _Timer:
    kind: str  # "reconnect" | "connect-timeout" | "watchdog"
    generation: int
    arm: int | None = None  # connect-timeout: which arming (only the latest counts)


@dataclass(frozen=True, slots=True)
class _SendDone:
    """A worker thread's answer, to be sent from the actor's own thread."""

    result: DeliveryResult | Ok | Failed
    reply_to: Any


@dataclass(frozen=True, slots=True)
class _BatchDone:
    """A worker thread's results of one ``send_texts`` batch: one bridge post for all."""

    results: tuple[DeliveryResult, ...]
    reply_to: Any


@dataclass(frozen=True, slots=True)
class _Typed:
    """A delivery's "typing..." time is over: send it now (if the client is the same)."""

    delivery: Deliver
    reply_to: Any
    generation: int


@dataclass(frozen=True, slots=True)
class _CheckpointTick:
    """Time for the periodic checkpoint of the encrypted stores (skipped if unchanged)."""


@dataclass(frozen=True, slots=True)
class _ResendTick:
    """Time to send again what the outbox has not acknowledged
    (``delivery.received_resend_seconds``)."""


@dataclass(frozen=True, slots=True)
class _StoreSaved:
    """The connect checkpoint is on disk: the events held for it may go on."""


@dataclass(frozen=True, slots=True)
class _StoreOutcome:
    """Store thread -> actor: the checkpoints started failing (``error``) or succeed
    again (None); the session's status carries it to health (``STORE_UNSAVED``)."""

    error: str | None


@dataclass(frozen=True, slots=True)
class _LeaseGranted:
    """The lease keeper holds the session's lease (multi-host mode): a client may start."""

    epoch: int


@dataclass(frozen=True, slots=True)
class _LeaseLost:
    """The lease keeper let the lease go: close the client now, ask for a fresh process."""

    reason: str


@dataclass(frozen=True, slots=True)
class _StoreFenced:
    """Store thread -> actor: a store write was refused by the lease fence
    (``actors.leases.fencing``); this process stops as a fenced one does."""

    reason: str


def keep_inherited_pages_shared() -> None:
    """Keep the memory this process inherited from the supervisor's fork shared.

    A session process starts as a copy-on-write fork of the supervisor: every page of
    the supervisor's Python heap is shared until this process writes to it. The
    cyclic garbage collector writes to every object it examines (its ``gc_refs``),
    so the first full collection here would copy every inherited page. Frozen
    objects are never examined: measured with ``tests/perf/bench_memory.py``, this
    takes about 15 MiB off each real-engine session process (issue 17). Most inherited
    objects are modules, classes and configuration that live as long as the process;
    the supervisor's own state that this process never uses costs nothing while its
    pages stay shared, and collecting it would copy them: nothing is collected before
    the freeze, only what is left after it (``gateway.core.collector``).
    """
    freeze_long_lived(collect_first=False)


class SessionActor(TellsItsProcess, BridgedActor):
    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict, requirements: dict | None = None
                                   ) -> bool:
        """In a cluster the supervisor names the host (``wagate_host``) it chose."""
        return on_required_host(capabilities, requirements)

    def __init__(self, capabilities: dict | None = None) -> None:
        # Thespian passes ``capabilities`` only to constructors that name it.
        super().__init__(capabilities)
        keep_inherited_pages_shared()
        # The configuration of the host this process runs on (its paths, storage key,
        # engine, credentials), inherited from its launcher: in a cluster the leader's
        # StartSession carries the leader's, without its credentials.
        self.host_config: Any = host_config()
        self.session = ""
        self.parent: Any = None
        self.transport: Transport | None = None  # the current client; None between clients
        self.config: Any = None
        self.machine: SessionMachine | None = None
        self.generation = 0
        self.executor: ThreadPoolExecutor | None = None  # typing, pairing codes, logouts
        self.send_executor: ThreadPoolExecutor | None = None  # sends, as many as the engine takes
        # Worker threads only: until then (monotonic) sends are answered RATE_OVERLIMIT
        # without asking the engine, after WhatsApp answered one with 429.
        self.send_hold_until = 0.0
        self.outbox: Any = None
        # Received messages and receipts until the outbox committed them (unacked.py).
        self.unacked: Unacknowledged | None = None
        self.unkept_reported = 0  # of unacked.unkept, told the supervisor (/metrics)
        self.logouts: list[Future[None]] = []  # an exit waits for these (bounded)
        # While the bridge is drained: results to send as one DeliveryResults per outbox.
        self.ready_results: list[tuple[Any, DeliveryResult]] | None = None
        self.store: WorkingCopy | None = None  # decrypted stores; None: stores in clear text
        self.store_problem: str | None = None  # why the stores cannot be opened (FAILED)
        self.store_executor: ThreadPoolExecutor | None = None  # checkpoints, one at a time
        # Number lookups, one at a time and apart from sends: a hanging lookup must
        # never hold up a send (nor a burst of lookups look like a bot).
        self.lookup_executor: ThreadPoolExecutor | None = None
        self.media_private: Any = None  # the media store's private key, opened at first use
        self.held: list[_Event] | None = None  # events waiting for the connect checkpoint
        self.store_error: str | None = None  # the store thread's last checkpoint failure
        self.store_failures = 0  # the store thread's checkpoints failed in a row
        # A store write was refused by the lease fence: this process writes its stores
        # no more (the store thread sets it; the exit reads it after that thread ended).
        self.store_fenced = False
        self.retiring = False  # asked the supervisor for a fresh process (RetireSession)
        # Multi-host mode with a lease database: no client runs without the lease.
        self.keeper: LeaseKeeper | None = None
        self.awaiting_lease = False  # a StartClient waits for _LeaseGranted
        self.journaling: SendJournaling | None = None  # the sent journal, with the lease

    # ---- lifecycle ---------------------------------------------------------------

    def receiveMsg_StartSession(self, msg: StartSession, sender: Any) -> None:
        if self.machine is not None:
            return  # a duplicate start (re-sent after a restart race) changes nothing
        config = self.host_config if self.host_config is not None else msg.config
        setup_logging(config.logging)  # actor logs go to data_dir/logs
        self.config = config
        self.session, self.parent = msg.session, sender
        structlog.contextvars.bind_contextvars(session=msg.session)
        self.unacked = Unacknowledged(new_origin(), config.delivery.max_unacknowledged_received,
                                      config.delivery.received_resend_seconds)
        self._arm_resend()
        self._open_store()
        self._start_keeper()
        # Every pool's threads start now, not at a fault's burst (gateway.core.threads).
        self.executor = started_executor(AUX_WORKERS, f"aux-{msg.session}")
        self.send_executor = started_executor(parallel_sends(config.transport.engine),
                                              f"send-{msg.session}")
        self.lookup_executor = started_executor(1, f"lookup-{msg.session}")
        policy = ReconnectPolicy(config.reconnect.attempts, config.reconnect.delay_seconds,
                                 config.reconnect.first_delay_seconds)
        self.machine = SessionMachine(msg.session, policy, config.reconnect.connect_timeout_seconds,
                                      paired=self._paired())
        if self.store_problem is not None:  # never pair anew over credentials we cannot read
            self._run(self.machine.engine_failed(time.time(), self.store_problem,
                                                 STORE_UNAVAILABLE))
        elif msg.connect:  # one report, already CONNECTING: never a passing NEW to the outbox
            self._run(self.machine.connect(time.time(), self._paired(), msg.attempt))
        else:
            self._report()

    def receiveMsg_SessionCommand(self, msg: SessionCommand, sender: Any) -> None:
        # No client between reconnect attempts (transport is None) is fine: every
        # action makes or skips one as needed, and a disconnect must work right then.
        if self.machine is None:
            return
        now = time.time()
        if msg.action == "connect":
            # The machine knows once a device has connected (or been logged out); the
            # store is looked at only before that. Opening the engine's SQLite store
            # with Python's own SQLite while the Go client has it open can drop the Go
            # side's POSIX locks (they are per process), so never while it may run.
            if self.machine.status.state in ACTIVE_STATES:
                actions = []  # already connecting or connected: connect is a no-op
            else:
                actions = self.machine.connect(now, self.machine.status.paired
                                               or self._paired())
        elif msg.action == "disconnect":
            actions = self.machine.disconnect(now)
        elif msg.action == "logout":
            actions = self.machine.logout(now)
        else:
            log.warning("unknown session command", action=msg.action)
            return
        self._run(actions)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.journaling is not None:
            # Sends WhatsApp may be answering right now: journaled before the client
            # closes, or the outbox would send them again (their results die with us).
            self.journaling.drain(EXIT_JOURNAL_SECONDS)
        self.generation += 1
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:
                log.exception("closing the transport failed")
        # A logout in progress must finish (or the phone keeps the device linked), but
        # the exit must not hang on a dead network either.
        futures.wait(self.logouts, timeout=LOGOUT_GRACE_SECONDS)
        for executor in (self.executor, self.send_executor, self.lookup_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        self._close_store()
        if self.journaling is not None:
            self.journaling.close()
        if self.keeper is not None:  # the client is closed: the next owner need not wait
            self.keeper.stop(release=True)
            from actors.leases.local import marks_dir, unmark

            unmark(marks_dir(self.config.data_path))
        if self.bridge is not None:
            self.bridge.close()

    # ---- the session's lease (multi-host mode) -------------------------------------

    def _start_keeper(self) -> None:
        """In multi-host mode with ``cluster.database_url``, hold the session's lease
        on threads of its own (``actors.leases.keeper``): no client starts before the
        grant, and the keeper makes this process let go in time by itself."""
        if not lease_mode(self.config):
            return
        from actors.leases.keeper import LeaseKeeper, exit_hard
        from actors.leases.local import mark, marks_dir
        from actors.leases.store import LeaseStore
        from actors.leases.timing import LeaseTiming

        bridge = self.bridge
        if bridge is None:
            return
        config = self.config
        store = LeaseStore(config.cluster.database_url, LeaseTiming.of(config.cluster),
                           host=host_name(config), pid=os.getpid())
        marks = marks_dir(config.data_path)
        session = self.session

        def granted(epoch: int) -> None:
            # Marked before the client may start: the host's agent checks every marked
            # process against the leases, and stops one that holds none (local.py).
            mark(marks, session, epoch)
            bridge.post(_LeaseGranted(epoch))

        def exit_fenced() -> None:
            # Its actor thread did not stop the process in time (stuck in a call): said
            # in its mark first, so the host's lease check reports this end as a fenced
            # stop, not a crash (actors.leases.local), then the kernel ends it.
            epoch = self._last_epoch()
            if epoch is not None:
                with contextlib.suppress(OSError):
                    mark(marks, session, epoch, lost=FENCE_LEASE_LOST)
            exit_hard()

        self.keeper = LeaseKeeper(store, self.session, on_granted=granted,
                                  on_lost=lambda reason: bridge.post(_LeaseLost(reason)),
                                  exit_hard=exit_fenced)
        self.keeper.start()
        self.journaling = _journaling(config, session, self.keeper)

    def receiveMsg__LeaseGranted(self, msg: _LeaseGranted, sender: Any) -> None:
        log.info("holding the session's lease", epoch=msg.epoch)
        if self.awaiting_lease and self.machine is not None and not self.retiring:
            self.awaiting_lease = False
            self._run([StartClient()])

    def receiveMsg__LeaseLost(self, msg: _LeaseLost, sender: Any) -> None:
        """Close the client at once (no new one starts without a lease), then ask the
        supervisor for a fresh process, which waits for the lease before connecting.
        Should this thread be stuck, the keeper ends the process half a margin later."""
        log.error("the session's lease is lost: disconnecting", reason=msg.reason)
        self._stop_fenced(FENCE_LEASE_LOST)

    def receiveMsg__StoreFenced(self, msg: _StoreFenced, sender: Any) -> None:
        """A store write was refused: counted, and this process goes as a fenced one
        does (its successor owns the store now)."""
        self.send(self.parent, StoreWriteFenced(self.session))
        self._stop_fenced(FENCE_STORE_WRITE)

    def _stop_fenced(self, reason: str) -> None:
        """Close the client now and ask the supervisor for a fresh process (once),
        saying why: a fenced stop, recorded as such, which spends no restart budget."""
        self.generation += 1
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:
                log.exception("closing the transport failed")
            self.transport = None
        if self.machine is not None and not self.retiring:
            self.retiring = True
            self.send(self.parent, RetireSession(self.session, self.machine.attempt,
                                                 fenced=reason))

    # ---- encrypted stores -------------------------------------------------------------

    def _open_store(self) -> None:
        """Decrypt the session's stores into a private working copy, or (no key
        configured: ``--demo`` only) make sure none of them is encrypted. A problem
        fails the session with ``STORE_UNAVAILABLE``, never a new QR code."""
        from actors.session.sealed_store import StoreError, StoreKeyError, load_key
        from actors.session.working_copy import WorkingCopy, sealed_store_names

        config = self.config
        try:
            key = load_key(config.encryption, config.data_path)
            if key is None:
                if sealed_store_names(config.data_path, self.session, config.sessions_path):
                    raise StoreError(
                        f"the stores of session '{self.session}' are encrypted but no storage "
                        f"key is configured (environment variable {config.encryption.key_env} "
                        "or encryption.key_file)")
                return
            # With leases every write of the shared stores is fenced by this
            # process's lease (actors.leases.fencing), asked on the store thread.
            fence = self._epoch_held if lease_mode(config) else None
            self.store = WorkingCopy(config.data_path, self.session, key, config.encryption,
                                     config.sessions_path, fence)
        except (StoreKeyError, StoreError, OSError) as exc:
            log.error("the session's stored credentials cannot be opened", error=str(exc))
            self.store_problem = (f"cannot open the stored credentials: {exc}; configure the "
                                  "key they were encrypted with and restart wagate")
            return
        if self.store.recovered:
            log.warning("sealed the state a crashed session process left after its last "
                        "checkpoint", stores=self.store.recovered)
        if self.store.cleared:
            log.warning("removed working copies left by a crashed session process",
                        count=len(self.store.cleared))
        self.store_executor = started_executor(1, f"store-{self.session}")
        self._arm_checkpoint()

    def _epoch_held(self) -> int | None:
        """Any thread: the lease epoch this process may write the stores under now."""
        keeper = self.keeper
        return None if keeper is None else keeper.epoch_held()

    def _store_fenced(self, exc: FencedWrite) -> None:
        """Any thread: a refused store write, logged with both epochs; never raised
        into a send or the exit. The actor stops this process (``_StoreFenced``)."""
        why = exc.refusal
        self.store_fenced = True  # one refusal is enough: no write of this process follows
        log.warning("store write refused: this process no longer owns the session's "
                    "shared credential store, which stays as its owner wrote it",
                    session=self.session, store=exc.name, pid=os.getpid(),
                    writer_epoch=self._last_epoch() if why.writer_epoch is None
                    else why.writer_epoch, holds_lease=why.writer_epoch is not None,
                    store_epoch=why.store_epoch, reason=why.reason)
        if self.bridge is not None:
            self.bridge.post(_StoreFenced(why.reason))

    def _last_epoch(self) -> int | None:
        """The epoch this process was last granted (held or not)."""
        keeper = self.keeper
        holding = None if keeper is None else keeper.holding
        return None if holding is None else holding.epoch

    def _arm_checkpoint(self) -> None:
        seconds = self.config.encryption.checkpoint_seconds
        self.wakeupAfter(timedelta(seconds=seconds), payload=_CheckpointTick())

    def _checkpoint_soon(self) -> None:
        if self.store_executor is not None:
            with contextlib.suppress(RuntimeError):  # shut down: the exit checkpoints anyway
                self.store_executor.submit(self._checkpoint)

    def _checkpoint(self, release: bool = False) -> None:
        """Store thread: seal what changed. Touches no actor state; ``release`` posts
        ``_StoreSaved`` when done, whatever the outcome."""
        from actors.session.working_copy import FencedWrite

        error: str | None = None
        try:
            if self.store is not None and not self.store_fenced:
                changed = self.store.checkpoint()
                if changed:
                    log.info("encrypted session store written", session=self.session,
                             files=changed)
        except FencedWrite as exc:
            self._store_fenced(exc)
        except Exception as exc:
            error = checkpoint_problem(exc)
            # Retried at every checkpoint tick: what changed is compared with the last
            # store written, not with this attempt.
            log.error("session store checkpoint failed; the previous one stays and it is "
                      "tried again", session=self.session, error=repr(exc),
                      retry_seconds=self.config.encryption.checkpoint_seconds)
        finally:
            self._store_outcome(error)
            if release and self.bridge is not None:
                self.bridge.post(_StoreSaved())

    def _store_outcome(self, error: str | None) -> None:
        """Store thread: tell the actor when checkpoints start failing or succeed again.
        The failures' log lines are lost when the log is on the full disk too, so the
        success after them says how many there were (README: A full disk)."""
        if error is not None:
            self.store_failures += 1
        elif self.store_failures:
            log.warning("session store checkpoint written again after failing",
                        session=self.session, failures=self.store_failures)
            self.store_failures = 0
        if error != self.store_error and self.bridge is not None:
            self.store_error = error  # only this thread runs checkpoints
            self.bridge.post(_StoreOutcome(error))

    def receiveMsg__StoreOutcome(self, msg: _StoreOutcome, sender: Any) -> None:
        if self.machine is not None:
            self.machine.status = replace(self.machine.status, store_unsaved=msg.error)
            self._report()

    def _logout(self, client: Transport) -> None:
        """Worker thread: unlink and close the client, then delete the stores (the
        sealed ones too, so no restart resumes the unlinked device)."""
        from actors.session.sealed_store import StoreError
        from actors.session.working_copy import FencedWrite

        _logout_and_close(client)
        if self.store is not None:
            try:
                self.store.forget()
            except FencedWrite as exc:
                self._store_fenced(exc)
            except (OSError, StoreError) as exc:
                log.error("deleting the session's stores failed", session=self.session,
                          error=repr(exc))

    def _forget_locally(self) -> None:
        """A logout with no client to unlink the device (the engine cannot start, or
        the stores cannot be decrypted): the phone may still list the device, but the
        credentials are deleted, as after a logout without a network, so no later
        start resumes them."""
        from actors.session.sealed_store import StoreError
        from actors.session.store_generations import open_ledger
        from actors.session.working_copy import FencedWrite, remove_stores

        config = self.config
        if lease_mode(config) and self.store is None and self._epoch_held() is None:
            log.warning("store write refused: the stored credentials were not deleted, this "
                        "process does not hold the session's lease", session=self.session,
                        pid=os.getpid(), writer_epoch=None, holds_lease=False)
            return
        try:
            if self.store is not None:
                self.store.forget()
            else:
                ledger = open_ledger(config.encryption.generations_file, config.data_path)
                remove_stores(config.data_path, self.session, config.sessions_path, ledger)
        except FencedWrite as exc:
            self._store_fenced(exc)
            return
        except (OSError, StoreError) as exc:
            log.error("deleting the session's stores failed", session=self.session,
                      error=repr(exc))
            return
        log.warning("logged out without a client: the stored credentials were deleted, "
                    "the phone may still list the device (remove it there)")

    def receiveMsg__StoreSaved(self, msg: _StoreSaved, sender: Any) -> None:
        held, self.held = self.held or [], None
        if not held:
            return
        first, rest = held[0], held[1:]
        if self.machine is not None and first.generation == self.generation:
            self._dispatch(first)
        for event in rest:
            self.receiveMsg__Event(event, sender)

    def _close_store(self) -> None:
        """The last checkpoint, then the working copy goes: clear text must not
        outlive the process."""
        if self.store_executor is not None:
            self.store_executor.shutdown(wait=True, cancel_futures=True)
        if self.store is None:
            return
        from actors.session.working_copy import FencedWrite

        try:
            if self.store_fenced:
                return  # its successor owns the store: the working copy just goes
            if not all(logout.done() for logout in self.logouts):
                self.store.forget()  # a logout the network held up: delete anyway
            changed = self.store.checkpoint()
            if changed:
                log.info("encrypted session store written", files=changed)
        except FencedWrite as exc:
            self._store_fenced(exc)
            self.send(self.parent, StoreWriteFenced(self.session))  # no actor turn is left
        except Exception:
            log.exception("the last session store checkpoint failed")
        finally:
            self.store.discard()

    # ---- transport events ---------------------------------------------------------

    def receiveMsg__Event(self, msg: _Event, sender: Any) -> None:
        if self.machine is None or msg.generation != self.generation:
            return
        if isinstance(msg.event, Receipt | IncomingMessage):
            self._received(msg.event)
            return
        if self.held is not None:  # keep the order behind a Connected being sealed
            self.held.append(msg)
            return
        if isinstance(msg.event, Connected) and self.store_executor is not None:
            # Sealed before CONNECTED is reported (on the store thread, never here).
            self.held = [msg]
            self.store_executor.submit(self._checkpoint, True)
            return
        self._dispatch(msg)

    def _received(self, event: Receipt | IncomingMessage) -> None:
        """To the outbox, kept until it says the write is committed. Until this process
        has heard from the outbox (it restarted after sending the message, say), the
        supervisor knows where the outbox is."""
        assert self.unacked is not None
        now = time.monotonic()
        seq = self.unacked.next_seq()
        message: DeliveryReceipt | IncomingReceived
        if isinstance(event, Receipt):
            message = DeliveryReceipt(event.message_id, event.kind, self.session, event.phone,
                                      event.at, self.unacked.origin, seq)
        else:
            media, missing = self._store_incoming_media(event)
            message = replace(incoming_received(
                self.session, event, self.config.messages.max_incoming_text_chars,
                media, missing), origin=self.unacked.origin, seq=seq)
        self.send(self.outbox if self.outbox is not None else self.parent, message)
        if (self.unacked.keep(seq, message, now) is not None
                and self.unacked.unkept - self.unkept_reported == 1):  # the rest: per period
            log.error("too many received messages and receipts wait for the outbox to "
                      "commit them: the oldest is no longer kept for a resend (it is lost "
                      "if the outbox lost it); free disk space on data_dir or raise "
                      "delivery.max_unacknowledged_received", unkept=self.unacked.unkept)

    def receiveMsg_ReceivedCommitted(self, msg: ReceivedCommitted, sender: Any) -> None:
        """The outbox committed these: keep them no longer (its address is the one to use)."""
        self.outbox = sender
        if self.unacked is not None:
            self.unacked.acknowledged(msg.origin, msg.seqs)

    def receiveMsg_ResendReceived(self, msg: ResendReceived, sender: Any) -> None:
        """A new outbox process is ready: everything not acknowledged goes to it now,
        oldest first (the supervisor does not keep what this process keeps)."""
        self.outbox = msg.outbox
        if self.unacked is not None and len(self.unacked):
            items = self.unacked.all(time.monotonic())
            log.info("sending the received messages and receipts not yet committed to the "
                     "new outbox", count=len(items))
            for item in items:
                self.send(msg.outbox, item)

    def _resend_due(self) -> None:
        """What the outbox has not acknowledged for a resend period goes again (a copy
        is a no-op there); a count of what was kept no longer goes to the supervisor."""
        assert self.unacked is not None
        target = self.outbox if self.outbox is not None else self.parent
        for item in self.unacked.due(time.monotonic()):
            self.send(target, item)
        unkept = self.unacked.unkept - self.unkept_reported
        if unkept and self.parent is not None:
            log.error("received messages and receipts no longer kept for a resend since the "
                      "last period (delivery.max_unacknowledged_received reached)",
                      count=unkept, total=self.unacked.unkept)
            self.send(self.parent, ReceivedUnkept(self.session, unkept))
            self.unkept_reported = self.unacked.unkept

    def _arm_resend(self) -> None:
        seconds = self.config.delivery.received_resend_seconds
        self.wakeupAfter(timedelta(seconds=seconds), payload=_ResendTick())

    def _dispatch(self, msg: _Event) -> None:
        assert self.machine is not None
        if isinstance(msg.event, PairingClosed | LoggedOut):
            self._checkpoint_soon()  # a new device, or one the engine deleted
        self._run(self.machine.on_event(msg.event, time.time()))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        timer = msg.payload
        if isinstance(timer, _CheckpointTick):
            self._checkpoint_soon()
            self._arm_checkpoint()
            return
        if isinstance(timer, _Typed):
            self._typed(timer)
            return
        if isinstance(timer, _ResendTick):
            self._arm_resend()  # first: a resend that fails must not end the timer
            self._resend_due()
            return
        if self.machine is None or not isinstance(timer, _Timer):
            return
        if timer.generation != self.generation:
            return  # there is no cancel: a timer of an older client is stale
        now = time.time()
        if timer.kind == "reconnect":
            self._run(self.machine.reconnect_due(now))
        elif timer.kind == "connect-timeout":
            self._run(self.machine.connect_timed_out(now, timer.arm))
        elif timer.kind == "watchdog":
            self._run(self.machine.watchdog_expired(now))

    # ---- sending --------------------------------------------------------------------

    def receiveMsg_DeliverBatch(self, msg: DeliverBatch, sender: Any) -> None:
        self.outbox = sender
        if (self.executor is None or self.send_executor is None
                or self.transport is None):  # no client: not connected
            self.send(sender, DeliveryResults(tuple(
                DeliveryResult(d.message_id, ok=False, reason="NOT_CONNECTED",
                               error="the session has no live connection") for d in msg.items)))
            return
        if not_connected_yet(self.machine.status if self.machine is not None else None):
            self.send(sender, DeliveryResults(tuple(
                DeliveryResult(d.message_id, ok=False, reason="NOT_CONNECTED",
                               error="the session's connection is not up yet")
                for d in msg.items)))
            return
        answered: list[DeliveryResult] = []
        quick: list[Deliver] = []  # texts for an engine that sends a batch at once
        for delivery in msg.items:
            problem = self._account_problem(delivery)
            if problem is not None:
                answered.append(DeliveryResult(delivery.message_id, ok=False,
                                               reason=ACCOUNT_CHANGED, error=problem,
                                               permanent=True))
                continue
            if delivery.typing > 0:  # "typing..." first; a timer, never a sleep
                self.executor.submit(self._typing, self.transport, delivery.phone)
                self.wakeupAfter(timedelta(seconds=delivery.typing),
                                 payload=_Typed(delivery, sender, self.generation))
            elif delivery.media is None and self.transport.sends_quickly():
                quick.append(delivery)
            else:
                self._submit_send(self._send, self.transport, delivery, sender)
        if quick:
            self._submit_send(self._send_batch, self.transport, quick, sender)
        if answered:
            self.send(sender, DeliveryResults(tuple(answered)))

    def _typed(self, msg: _Typed) -> None:
        """Send a delivery whose typing time is over, on the client that typed it."""
        if (msg.generation != self.generation or self.transport is None
                or self.send_executor is None):
            self.send(msg.reply_to, DeliveryResults((DeliveryResult(
                msg.delivery.message_id, ok=False, reason="NOT_CONNECTED",
                error="the connection changed while typing"),)))
            return
        self._submit_send(self._send, self.transport, msg.delivery, msg.reply_to)

    def _submit_send(self, send: Any, *args: Any) -> None:
        """Hand a send to a worker, counted while it runs (an exit waits for its
        journal write: ``EXIT_JOURNAL_SECONDS``)."""
        assert self.send_executor is not None
        journaling = self.journaling
        if journaling is None:
            self.send_executor.submit(send, *args)
            return

        def counted() -> None:
            try:
                send(*args)
            finally:
                journaling.finished()

        journaling.started()
        try:
            self.send_executor.submit(counted)
        except RuntimeError:  # shut down: it never runs
            journaling.finished()
            raise

    @staticmethod
    def _typing(transport: Transport, phone: str) -> None:
        """Worker thread: the typing indicator is best effort."""
        try:
            transport.send_typing(phone)
        except Exception as exc:
            log.info("typing indicator failed", error=repr(exc))

    def _account_problem(self, delivery: Deliver) -> str | None:
        """A message goes out only from the account it was accepted for: this process
        knows which account its live connection belongs to (the last ``Connected``)."""
        live = self.machine.status.phone if self.machine is not None else None
        problem = wrong_account(delivery.account, live)
        if problem is not None:
            log.error("refused to send a message from another account than it was "
                      "accepted for", message_id=delivery.message_id,
                      accepted_for=delivery.account, live=live)
        return problem

    def _send(self, transport: Transport, msg: Deliver, reply_to: Any) -> None:
        """Worker thread: touches no actor state (only ``send_hold_until``, which only
        sends use), posts the outcome."""
        held = time.monotonic() < self.send_hold_until
        try:
            if held:
                raise _held()
            if msg.media is not None:
                sent = transport.send_media(msg.phone, self._outgoing_media(msg))
            else:
                sent = transport.send_text(msg.phone, msg.text)
            result = self._result(msg, sent, held)
        except SendError as exc:
            result = self._result(msg, exc, held)
        except Exception as exc:  # a transport bug must not lose the message
            result = _transport_failed(msg, exc)
        if self.journaling is not None:  # before the result leaves (one row)
            self.journaling.record((result,))
        if self.bridge is not None:
            self.bridge.post(_SendDone(result, reply_to))

    def _send_batch(self, transport: Transport, batch: list[Deliver], reply_to: Any) -> None:
        """Worker thread, for an engine whose sends never wait (``sends_quickly``: the
        simulator without a delay): the batch in one call and one bridge post back.

        Not on the actor's thread, although it could be: answered at once, each
        ``DeliverBatch`` came back as its own ``DeliveryResults``, the outbox then
        dispatched and committed for every small batch, and the closed-loop benchmark's
        throughput halved (28 against 79 sends/s, same machine, same minute). Through
        a worker, results that finish together leave as one message (the bridge's drain)."""
        results = self._send_texts(transport, batch)
        if self.journaling is not None:  # before the results leave (one statement)
            self.journaling.record(results)
        if self.bridge is not None:
            self.bridge.post(_BatchDone(tuple(results), reply_to))

    def _send_texts(self, transport: Transport, batch: list[Deliver]) -> list[DeliveryResult]:
        """Worker thread: ``send_texts`` for ``batch``, one result per delivery."""
        held = time.monotonic() < self.send_hold_until
        outcomes: list[SentMessage | SendError] = []
        if not held:
            try:
                outcomes = transport.send_texts([(d.phone, d.text) for d in batch])
            except Exception as exc:
                return [_transport_failed(d, exc) for d in batch]
        tried = batch[:len(outcomes)]  # shorter after a RATE_OVERLIMIT (``send_texts``)
        results = [self._result(d, outcome, held)
                   for d, outcome in zip(tried, outcomes, strict=True)]
        # Not tried: held, or after WhatsApp answered RATE_OVERLIMIT in this batch.
        return results + [self._result(d, _held(), True) for d in batch[len(outcomes):]]

    def _result(self, msg: Deliver, outcome: SentMessage | SendError,
                held: bool) -> DeliveryResult:
        """The outbox's answer for one send; WhatsApp's RATE_OVERLIMIT holds the next
        sends of this session (``send_hold_until``)."""
        if isinstance(outcome, SentMessage):
            return DeliveryResult(msg.message_id, ok=True, wa_message_id=outcome.message_id,
                                  timestamp=outcome.timestamp)
        if outcome.reason == RATE_OVERLIMIT and not held:  # the ones queued here would ask
            # again; held from WhatsApp's answer only, so it never outlasts the
            # outbox's own pause (which starts then and is at least as long)
            self.send_hold_until = (time.monotonic()
                                    + self.config.delivery.rate_overlimit_pause_seconds)
        return DeliveryResult(msg.message_id, ok=False, reason=outcome.reason,
                              error=str(outcome), permanent=outcome.permanent,
                              uncertain=outcome.uncertain)

    def _store_incoming_media(self, event: IncomingMessage
                              ) -> tuple[MediaSpec | None, tuple[str, str] | None]:
        """A received file goes into the encrypted media store before the outbox hears
        of the message (writing needs only the store's public key). One that cannot be
        written (a full disk) is not kept: the message goes on without it, marked
        missing with the reason and the kind its bytes show (README: A full disk)."""
        if event.media_data is None:
            return None, None
        from actors.media import incoming

        try:
            return incoming.store_incoming(self.config.media_path, self.config.host_label,
                                           event.media_data,
                                           event.kind, event.file_name), None
        except (OSError, WagateError) as exc:
            reason = (incoming.MISSING_DISK_FULL if is_disk_full(exc)
                      else incoming.MISSING_STORE_FAILED)
            log.error("a received file could not be stored; its message is stored "
                      "without it", reason=reason, error=str(exc))
            return None, (reason, incoming.kind_of_bytes(event.media_data, event.kind))

    def _outgoing_media(self, msg: Deliver) -> OutgoingMedia:
        """Worker thread: the file's bytes from the media store, decrypted here (the
        session holds the storage key); a file that cannot be read fails the message
        for good: sending it again cannot bring it back."""
        from actors.media import store as media_files
        from actors.session.sealed_store import StoreError, load_key

        assert msg.media is not None
        root = self.config.media_path
        try:
            if self.media_private is None:
                self.media_private = media_files.load_private(
                    root, load_key(self.config.encryption, self.config.data_path))
            key = media_files.file_key(root, msg.media.sha256, self.media_private)
            data = media_files.read_all(root, msg.media.sha256, key)
        except (OSError, StoreError, media_files.MediaStoreError) as exc:
            log.error("a media file cannot be read", message_id=msg.message_id, error=str(exc))
            raise SendError("MEDIA_UNREADABLE", f"the stored file cannot be read: {exc}",
                            permanent=True) from None
        return OutgoingMedia(kind=msg.media.kind, mime=msg.media.mime, data=data,
                             caption=msg.text, file_name=msg.media.file_name)

    def receiveMsg_PairingCodeRequest(self, msg: PairingCodeRequest, sender: Any) -> None:
        if (self.machine is None or self.transport is None or self.executor is None
                or self.machine.status.state is not SessionState.QR_PENDING):
            state = self.machine.status.state.value if self.machine else "NEW"
            self.send(msg.reply_to, Failed(
                "NOT_CONNECTED", "a pairing code can only be requested while the session "
                f"shows a QR code (state QR_PENDING, now {state}); call whatsAppConnect first",
                {"state": state}, request_id=msg.request_id))
            return
        self.executor.submit(self._pairing_code, self.transport, msg)

    def _pairing_code(self, transport: Transport, msg: PairingCodeRequest) -> None:
        """Worker thread: PairPhone needs a live socket and may take seconds."""
        reply: Ok | Failed
        try:
            reply = Ok(transport.request_pairing_code(msg.phone), request_id=msg.request_id)
        except SendError as exc:
            reply = Failed("PAIRING_FAILED", f"WhatsApp did not issue a pairing code: {exc}",
                           {"reason": exc.reason}, request_id=msg.request_id)
        except Exception as exc:
            reply = Failed("PAIRING_FAILED", f"WhatsApp did not issue a pairing code: {exc!r}",
                           {"reason": "TRANSPORT_ERROR"}, request_id=msg.request_id)
        if self.bridge is not None:
            self.bridge.post(_SendDone(reply, msg.reply_to))

    def receiveMsg_ReadIncoming(self, msg: ReadIncoming, sender: Any) -> None:
        if (self.machine is None or self.transport is None or self.executor is None
                or self.machine.status.state is not SessionState.CONNECTED):
            state = self.machine.status.state.value if self.machine else "NEW"
            self.send(msg.reply_to, Failed(
                "NOT_CONNECTED", f"the session is {state}, not CONNECTED; a read receipt "
                "goes out over a live connection: try again once it is connected",
                {"state": state, "session": self.session}, request_id=msg.request_id))
            return
        self.executor.submit(self._mark_read, self.transport, msg)

    def _mark_read(self, transport: Transport, msg: ReadIncoming) -> None:
        """Worker thread: a read receipt is a message to the server."""
        reply: Ok | Failed
        try:
            transport.mark_read(msg.chat, msg.sender_jid, list(msg.message_ids))
            reply = Ok(True, request_id=msg.request_id)
        except SendError as exc:
            reply = Failed("SEND_FAILED", f"WhatsApp did not take the read receipt: {exc}; "
                           "try again later", {"reason": exc.reason}, request_id=msg.request_id)
        except Exception as exc:
            log.error("the transport failed while sending a read receipt", exc_info=True)
            reply = Failed("SEND_FAILED", f"WhatsApp did not take the read receipt: {exc!r}",
                           {"reason": "TRANSPORT_ERROR"}, request_id=msg.request_id)
        if self.bridge is not None:
            self.bridge.post(_SendDone(reply, msg.reply_to))

    def receiveMsg_NumberLookup(self, msg: NumberLookup, sender: Any) -> None:
        if (self.machine is None or self.transport is None or self.lookup_executor is None
                or self.machine.status.state is not SessionState.CONNECTED):
            state = self.machine.status.state.value if self.machine else "NEW"
            self.send(msg.reply_to, Failed(
                "NOT_CONNECTED", f"the session is {state}, not CONNECTED; numbers are "
                "looked up over a live connection", {"state": state},
                request_id=msg.request_id))
            return
        self.lookup_executor.submit(self._lookup, self.transport, msg)

    def _lookup(self, transport: Transport, msg: NumberLookup) -> None:
        """Worker thread: a lookup is a server round trip (a usync query)."""
        reply: Ok | Failed
        try:
            reply = Ok(transport.check_numbers(list(msg.phones)), request_id=msg.request_id)
        except SendError as exc:
            reply = Failed("UNAVAILABLE", f"WhatsApp did not answer the lookup: {exc}",
                           {"reason": exc.reason}, request_id=msg.request_id)
        except Exception as exc:
            log.error("the transport failed while looking numbers up", exc_info=True)
            reply = Failed("UNAVAILABLE", f"WhatsApp did not answer the lookup: {exc!r}",
                           {"reason": "TRANSPORT_ERROR"}, request_id=msg.request_id)
        if self.bridge is not None:
            self.bridge.post(_SendDone(reply, msg.reply_to))

    def receiveMsg_WatchMessage(self, message: Any, sender: Any) -> None:
        """Drain the bridge; send results that finished together as one message."""
        self.ready_results = []
        try:
            super().receiveMsg_WatchMessage(message, sender)
        finally:
            ready, self.ready_results = self.ready_results, None
            while ready:
                reply_to = ready[0][0]
                batch = tuple(r for to, r in ready if to == reply_to)
                ready = [(to, r) for to, r in ready if to != reply_to]
                self.send(reply_to, DeliveryResults(batch))

    def receiveMsg__BatchDone(self, msg: _BatchDone, sender: Any) -> None:
        if self.ready_results is not None:
            self.ready_results.extend((msg.reply_to, result) for result in msg.results)
        else:  # only bridge drains deliver _BatchDone; keep the one protocol regardless
            self.send(msg.reply_to, DeliveryResults(msg.results))

    def receiveMsg__SendDone(self, msg: _SendDone, sender: Any) -> None:
        if not isinstance(msg.result, DeliveryResult):
            self.send(msg.reply_to, msg.result)  # a pairing code's answer
        elif self.ready_results is not None:
            self.ready_results.append((msg.reply_to, msg.result))
        else:  # only bridge drains deliver _SendDone; keep the one protocol regardless
            self.send(msg.reply_to, DeliveryResults((msg.result,)))

    # ---- actions ---------------------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        try:
            for action in actions:
                self._do(action)
        except EngineUnavailable as exc:
            assert self.machine is not None
            self.machine.engine_failed(time.time(), str(exc), exc.code)
        self._report()

    def _paired(self) -> bool:
        if self.store_problem is not None:
            from actors.session.working_copy import has_sealed_stores

            return has_sealed_stores(self.config.data_path, self.session,
                                     self.config.sessions_path)
        try:
            return self._client().has_credentials()
        except EngineUnavailable:
            return False  # reported when the connection is started

    def _client(self) -> Transport:
        """The current client, or a fresh one: a closed client is never reused."""
        if self.store_problem is not None:
            raise EngineUnavailable(self.store_problem, STORE_UNAVAILABLE)
        if self.transport is None:
            from actors.transport import create_transport  # engines load only in this process

            engine = self.config.transport.engine
            store_dir = self.store.store_dir if self.store is not None else None
            try:
                self.transport = create_transport(engine, self.session, self.config.data_path,
                                                  self.config, store_dir)
            except EngineSetupError as exc:  # its message says what to do
                log.error("transport engine refused", engine=engine, error=str(exc))
                raise EngineUnavailable(_engine_problem(engine, exc, f": {exc}")) from exc
            except Exception as exc:
                log.error("transport engine unavailable", engine=engine, error=repr(exc))
                raise EngineUnavailable(_engine_problem(
                    engine, exc, f" ({exc}); reinstall wagate (pip install .) and check that "
                    "libmagic is installed, or run the simulator with `wagate serve --demo`"
                    )) from exc
        return self.transport

    def _do(self, action: Action) -> None:
        match action:
            case StopClient():
                self.generation += 1
                if self.transport is not None:
                    self.transport.close()
                    self.transport = None
                    self._checkpoint_soon()
            case StartClient():
                if self.keeper is not None and not self.keeper.holds():
                    self.awaiting_lease = True  # _LeaseGranted starts it
                    log.info("waiting for the session's lease before connecting")
                    return
                generation = self.generation
                bridge = self.bridge
                client = self._client()
                if client.clients_created() >= self.config.transport.max_clients_per_process:
                    self._retire()
                elif bridge is not None:
                    client.connect(lambda event: bridge.post(_Event(generation, event)))
            case ScheduleReconnect(delay=delay):
                self.wakeupAfter(timedelta(seconds=delay), payload=_Timer("reconnect",
                                                                          self.generation))
            case ArmWatchdog(delay=delay):
                self.wakeupAfter(timedelta(seconds=delay), payload=_Timer("watchdog",
                                                                          self.generation))
            case ArmConnectTimeout(delay=delay, arm=arm):
                self.wakeupAfter(timedelta(seconds=delay),
                                 payload=_Timer("connect-timeout", self.generation, arm))
            case LogoutClient():
                # The live client unlinks (a server round trip), then closes: on a worker
                # thread. Its late events are ignored from now on (new generation).
                try:
                    client = self._client()
                except EngineUnavailable:
                    self._forget_locally()  # nothing can unlink it: delete it here at least
                    return
                self.transport = None
                self.generation += 1
                assert self.executor is not None
                self.logouts.append(self.executor.submit(self._logout, client))

    def _retire(self) -> None:
        """Ask the supervisor for a fresh process instead of one more engine client
        (each leaves a database pool open in this one). No client runs now; the
        successor goes on with the same connect attempt."""
        assert self.machine is not None
        if self.retiring:
            return
        self.retiring = True
        log.warning("retiring the session process: the engine keeps a database pool open "
                    "for every client it created", clients=self.config.transport
                    .max_clients_per_process, attempt=self.machine.attempt)
        self.send(self.parent, RetireSession(self.session, self.machine.attempt))

    def _report(self) -> None:
        if self.machine is not None and self.parent is not None:
            self.send(self.parent, StatusChanged(replace(self.machine.status, pid=os.getpid())))



def incoming_received(session: str, event: IncomingMessage,
                      max_text_chars: int = MessagesConfig().max_incoming_text_chars,
                      media: MediaSpec | None = None,
                      missing: tuple[str, str] | None = None) -> IncomingReceived:
    """The transport's event as the outbox is told it (the session added), its text
    cut to ``messages.max_incoming_text_chars`` here, before it crosses to the outbox's
    process: a 10 MB reply costs this process a moment, never the single writer.
    ``missing``: (reason, kind) of a file that could not be stored."""
    text, truncated = bounded_text(event.text, max_text_chars)
    kind = (media.kind.lower() if media is not None else missing[1] if missing is not None
            else event.kind)
    meta = event.meta if missing is None else (*event.meta, ("media_missing", missing[0]))
    return IncomingReceived(
        session=session, message_id=event.message_id, chat=event.chat,
        sender_jid=event.sender_jid, sender_phone=event.sender_phone,
        sender_lid=event.sender_lid, push_name=event.push_name, is_group=event.is_group,
        kind=kind, text=text, quoted_id=event.quoted_id, at=event.at, meta=meta,
        truncated=truncated, media=media)


def checkpoint_problem(exc: BaseException) -> str:
    """What health says of a failed checkpoint: a full disk in words an operator acts
    on, anything else by its message (never a path: health is for API clients too)."""
    if is_disk_full(exc):
        return ("the disk of data_dir is full: the encrypted session store cannot be "
                "written (free disk space; it is written by itself then)")
    return f"the encrypted session store cannot be written ({type(exc).__name__})"


def _held() -> SendError:
    """The answer for a send not tried while this session is held after a 429."""
    return SendError(RATE_OVERLIMIT, "not tried: WhatsApp rate-limited this session's "
                     "lookups a moment ago", permanent=False)


def _journaling(config: Any, session: str, keeper: LeaseKeeper) -> SendJournaling:
    """The sent journal of this session process, on the lease database."""
    from actors.leases.journal import Sent, SentJournal
    from actors.session.journaling import SendJournaling

    def epoch() -> int | None:
        holding = keeper.holding
        return None if holding is None or keeper.lost is not None else holding.epoch

    journal = SentJournal(config.cluster.database_url, JOURNAL_TIMEOUT_SECONDS,
                          config.cluster.journal_retention_hours)
    return SendJournaling(session, journal, epoch, Sent)


def _transport_failed(msg: Deliver, exc: Exception) -> DeliveryResult:
    """In an ``except`` clause: a transport bug must not lose the message. Nobody knows
    how far it got before it failed: it may have been sent."""
    log.error("the transport failed while sending", message_id=msg.message_id,
              exc_info=True)
    return DeliveryResult(msg.message_id, ok=False, reason="TRANSPORT_ERROR",
                          error=f"{type(exc).__name__} in the transport (see the "
                          "actor log)", permanent=False, uncertain=True)


def _engine_problem(engine: str, exc: Exception, otherwise: str) -> str:
    """Why the engine cannot start and what to do. After a ``pip install`` under the
    running gateway, reinstalling is what broke it: then the advice is to restart, and
    the engine's own words (which may say "reinstall") come after it."""
    from actors.transport.engine import INSTALL_CHANGED_ADVICE, install_changed

    if install_changed():
        return (f"the '{engine}' WhatsApp engine cannot start: {INSTALL_CHANGED_ADVICE} "
                f"(the engine said: {exc})")
    return f"the '{engine}' WhatsApp engine cannot start{otherwise}"
