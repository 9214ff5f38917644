"""SupervisorActor: the root of the tree (globalName ``wagate.supervisor``).

It owns the outbox and up to ``max_sessions`` session actors, keyed by session id
(never by address: addresses are unhashable and ports get reused). It is the web
tier's entry point for everything but sends (which go to the outbox directly, at the
address the supervisor gives out): status questions are answered from the snapshots
sessions report, and commands are routed to the actor that carries them out.

Sessions that should be connected are remembered on disk, so a restart of the
gateway (or of a crashed session) reconnects them without a new QR.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from thespian.actors import (
    ActorExitRequest,
    ActorSystemConventionUpdate,
    ActorTypeDispatcher,
    ChildActorExited,
    DeadEnvelope,
    PoisonMessage,
    WakeupMessage,
)

from actors.audit.actor import AuditActor
from actors.leases.standing import RETAKE_AFTER_PERIODS, Change, change
from actors.messages import (
    FENCE_LEADER_LOST,
    FENCE_LEADER_SILENT,
    AuditBatch,
    AuditEvent,
    ChartMessageStates,
    CheckNumbers,
    CollectHealth,
    Connect,
    DeliveryReceipt,
    Disconnect,
    ErrorInfo,
    Failed,
    ForgetSession,
    GetHealth,
    GetMessage,
    GetMessageByKey,
    GetRoutes,
    GetStatus,
    HandedBack,
    HealthReport,
    HostBeatAck,
    IncomingReceived,
    LeaseFenced,
    ListEvents,
    ListMessages,
    NumberLookup,
    Offer,
    Ok,
    OpenMedia,
    OutboxReady,
    PairingCodeRequest,
    Ping,
    ProcessInfo,
    ReceivedUnkept,
    RecordAudit,
    RequestPairingCode,
    ResendReceived,
    RetireSession,
    Routed,
    SendText,
    SessionCommand,
    SessionForgotten,
    SessionLink,
    SessionsFenced,
    SessionState,
    SessionStatus,
    StartAgent,
    StartGateway,
    StartSession,
    StartWorker,
    StatusChanged,
    Stop,
    StoreWriteFenced,
    WebhookCommand,
    WhoAreYou,
)
from actors.metrics import SessionCounters
from actors.outbox.actor import OutboxActor
from actors.run_once import RunOnce
from actors.session.actor import SessionActor
from actors.session.links import evictable, keep_account, over_limit, updated_entry
from actors.session.states import ACTIVE_STATES, FINAL_STATES
from actors.supervisor.children import (
    AUDIT,
    OUTBOX,
    WEBHOOKS,
    WORKERS,
    Child,
    ChildKey,
    Children,
)
from actors.supervisor.cluster import Cluster, HostCheck
from actors.supervisor.host_agent import HostAgent
from actors.supervisor.lease_agent import LeaseAgent
from actors.supervisor.policy import RestartBudget, backoff_delay
from actors.supervisor.registry import SessionRegistry, SharedRegistry, Synced
from actors.supervisor.snapshot import HEARTBEAT_SECONDS, remove_snapshot, write_snapshot
from actors.supervisor.watchdog import Hung, Watchdog, kill_child
from actors.system import HOST_CAPABILITY, ROLE_CAPABILITY, bind_address, host_name
from actors.webhooks.actor import WebhookActor
from actors.whoami import TellsItsProcess
from gateway.core.config import Config, lease_mode, without_credentials
from gateway.core.disk_caches import open_disk_cache
from gateway.core.observability import setup_logging

if TYPE_CHECKING:
    from actors.supervisor.lease_wait import LeaseWaits

log = structlog.get_logger("wagate.supervisor")

# With leases, the workers on the shared store: only the lock's holder runs them.
SHARED_STORE_WORKERS = (OUTBOX, WEBHOOKS)
MAX_AUDIT_BACKLOG = 1000  # audit events held while the audit actor restarts
# Received messages and receipts held while the outbox restarts (WhatsApp does not send
# them again): they reach its successor after its StartWorker.
MAX_RECEIVED_BACKLOG = 10_000


@dataclass(frozen=True, slots=True)
class _Heartbeat:
    """Rewrites the status snapshot even when nothing changed: readers trust only a
    fresh one."""


@dataclass(frozen=True, slots=True)
class _LeaseCheck:
    """Time to ask again whether the sessions waiting for their lease may start; only
    the newest (``generation``) counts, so checks never pile up."""

    generation: int


@dataclass(frozen=True, slots=True)
class _LeaderCheck:
    """Time to try the leadership lock again (a standby takes over within a period)."""


@dataclass(frozen=True, slots=True)
class _RestartDue:
    key: ChildKey
    incarnation: int


class SupervisorActor(TellsItsProcess, RunOnce, ActorTypeDispatcher):
    """Thespian's handlers for everything; the hosts of a cluster are ``self.cluster``
    (``actors.supervisor.cluster``), which calls back only through the ``ClusterOwner``
    methods (``send``, ``create_agent``, ``stop_actor``, ``check_hosts_after``,
    ``audit``, ``move_sessions``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Config | None = None
        self.children = Children()
        self.statuses: dict[str, SessionStatus] = {}
        self.registry: SessionRegistry | None = None
        self.stopping = False
        self.audit_backlog: list[Any] = []  # AuditEvent / Routed(RecordAudit) for a restart
        self.received_backlog: list[IncomingReceived | DeliveryReceipt] = []  # for the outbox
        self.outbox_ready: Any = None  # the outbox process that said OutboxReady
        self.session_counters = SessionCounters()  # for /metrics, fed by _set_status
        self.cluster: Cluster | None = None  # set by StartGateway
        self.watchdog: Watchdog[ChildKey] | None = None  # set by StartGateway
        # Multi-host mode with leases: sessions that wait for their lease before their
        # process may start (actors.supervisor.lease_wait); None otherwise.
        self.lease_waits: LeaseWaits | None = None
        self.lease_generation = 0
        # ... and this host's check of its own session processes against their leases
        # (actors.supervisor.lease_agent), a child of its own; None otherwise.
        self.lease_agent: Any = None
        self.holds_leadership = False  # with leases: this leader holds the lock
        # With leases: the workers on the shared store (the outbox, the webhook worker)
        # whose StartWorker waits until this leader holds the lock and has read the
        # shared session registry since it took it (``in_sync``).
        self.waiting_workers: set[ChildKey] = set()
        self.in_sync = False

    @property
    def outbox_waits(self) -> bool:
        return OUTBOX in self.waiting_workers

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict, requirements: dict | None = None
                                   ) -> bool:
        """Never on a cluster member: a member's web tier asks its own Admin for the
        supervisor by global name, and the Admin, finding no local match, passes the
        request to the convention leader, which answers with its supervisor."""
        return capabilities.get(ROLE_CAPABILITY) != "member"

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        """A supervisor that was never started is one the web tier created by looking
        up the global name after the real one died: it must not pose as the gateway.
        It refuses, and leaves, so nothing half-started lingers."""
        if (self.config is None and hasattr(msg, "request_id")
                and not isinstance(msg, StartGateway | WhoAreYou)):
            self.send(sender, Failed("UNAVAILABLE", "the gateway's actor system is not "
                                     "answering (its supervisor was lost); retry in a few "
                                     "seconds, and restart the gateway if it persists",
                                     request_id=msg.request_id))
            self.send(self.myAddress, ActorExitRequest())
            return
        super().receiveMessage(msg, sender)

    # ---- start / stop -------------------------------------------------------------

    def receiveMsg_StartGateway(self, msg: StartGateway, sender: Any) -> None:
        if self.config is not None:
            self.send(sender, Ok(request_id=msg.request_id))
            return
        setup_logging(msg.config.logging)  # actor logs go to data_dir/logs
        self.config = msg.config
        self.watchdog = Watchdog(msg.config.supervisor.hang_seconds)
        cluster = msg.config.cluster
        self.cluster = Cluster(self, cluster, host_name(msg.config),
                               cluster.sessions if cluster.role != "single"
                               else msg.config.sessions.max_sessions)
        if lease_mode(msg.config):
            self.lease_waits = _lease_waits(msg.config)
            self._start_lease_agent()
            self._claim_leadership()
        if self.cluster.leading:
            self.notifyOnSystemRegistrationChanges(True)
            self.check_hosts_after(cluster.heartbeat_seconds)
        state_dir = msg.config.data_path / "state"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.registry = SessionRegistry(
            open_disk_cache(state_dir),
            _shared_registry(msg.config) if lease_mode(msg.config) else None)
        # With leases: the leaders' shared registry, read before the outbox starts.
        self.in_sync = self.registry.sync() is not None and self.holds_leadership
        # A tell to an actor that died is dropped silently by Thespian unless someone
        # handles dead letters: audit events told to a restarted audit actor's old
        # address come back here and are passed on (the web tier cannot notice).
        self.handleDeadLetters()
        # Every known session before the outbox starts: its StartWorker lists them all,
        # so it can tell a forgotten session's queue from a known one's.
        dropped = self._drop_excess_sessions()
        starting = self._load_statuses()
        # The audit log's writer first: everything after it may have something to record.
        for key, cls in ((AUDIT, AuditActor), (OUTBOX, OutboxActor),
                         (WEBHOOKS, WebhookActor)):
            self.children[key] = Child(cls, budget=self._budget())
            self._spawn(key)
        for session in dropped:
            self.audit("session.forgotten", session=session, how="over sessions.max_sessions")
        for session in starting:
            self._start_session(session, connect=True)
            self._link(session)
        log.info("gateway started", sessions=len(self.statuses))
        self.audit("gateway.started", sessions=len(self.statuses),
                   engine=msg.config.transport.engine, pid=os.getpid())
        self._publish()
        self.send(sender, Ok(request_id=msg.request_id))

    def receiveMsg_Stop(self, msg: Stop, sender: Any) -> None:
        if not self.stopping:
            self.audit("gateway.stopping")  # reaches the audit actor before its exit request
        self.stopping = True
        if self.config is not None:
            remove_snapshot(self.config.data_path)
        for child in self.children.values():
            if child.address is not None:
                child.retiring = True
                self.send(child.address, ActorExitRequest())
        if self.lease_agent is not None:
            self.send(self.lease_agent, ActorExitRequest())
        self.send(sender, Ok(request_id=msg.request_id))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.stopping = True
        if self.registry is not None:
            self.registry.close()
        if self.lease_waits is not None:
            self.lease_waits.close()

    def receiveMsg_Ping(self, msg: Ping, sender: Any) -> None:
        ready = self.config is not None and all(
            self.children[k].address is not None for k in WORKERS)
        if ready:
            self.send(sender, Ok(request_id=msg.request_id))
        else:
            self.send(sender, Failed("UNAVAILABLE", "the gateway is starting or restarting "
                                     "a component; retry shortly", request_id=msg.request_id))

    # ---- queries ----------------------------------------------------------------------

    def receiveMsg_GetStatus(self, msg: GetStatus, sender: Any) -> None:
        status = self.statuses.get(msg.session) or SessionStatus(session=msg.session)
        self.send(sender, Ok(status, request_id=msg.request_id))

    def receiveMsg_GetHealth(self, msg: GetHealth, sender: Any) -> None:
        report = HealthReport(sessions=tuple(self.statuses[s] for s in sorted(self.statuses)),
                              worker_pids={"supervisor": os.getpid()},
                              session_metrics=self.session_counters.snapshot(time.time()),
                              hosts=self._host_report(),
                              simulator_dir=self._simulator_dir())
        outbox = self.children.address(OUTBOX)
        if outbox is None:
            self.send(sender, Ok(report, request_id=msg.request_id))
            return
        self.send(outbox, CollectHealth(sender, report, msg.request_id))

    def _simulator_dir(self) -> str:
        config = self.config
        if config is None or config.transport.engine != "simulator":
            return ""
        return str(config.simulator_path)

    def receiveMsg_GetRoutes(self, msg: GetRoutes, sender: Any) -> None:
        outbox = self.children.address(OUTBOX)
        if outbox is None or self.outbox_waits:
            self.send(sender, self._no_outbox(msg.request_id))
        else:
            audit = self.children.address(AUDIT)
            # audit None (restarting): send AuditEvents here, they are held and passed on.
            self.send(sender, Ok({"outbox": outbox, "audit": audit}, request_id=msg.request_id))

    def receiveMsg_WebhookCommand(self, msg: WebhookCommand, sender: Any) -> None:
        webhooks = self.children.address(WEBHOOKS)
        if WEBHOOKS in self.waiting_workers:
            self.send(sender, _leader_standby(msg.request_id))
        elif webhooks is None:
            self.send(sender, Failed("UNAVAILABLE", "the webhook worker is restarting; retry "
                                     "in a few seconds", request_id=msg.request_id))
        else:  # the webhook actor answers the caller directly
            self.send(webhooks, Routed(msg, sender))

    def receiveMsg_AuditEvent(self, msg: AuditEvent, sender: Any) -> None:
        self._to_audit(msg)

    def receiveMsg_AuditBatch(self, msg: AuditBatch, sender: Any) -> None:
        self._to_audit(msg)

    def receiveMsg_RecordAudit(self, msg: RecordAudit, sender: Any) -> None:
        self._to_audit(Routed(msg, sender))  # the audit actor answers the caller directly

    # ---- commands ------------------------------------------------------------------------

    def receiveMsg_Connect(self, msg: Connect, sender: Any) -> None:
        key = ChildKey.of_session(msg.session)
        if key not in self.children and self._live_sessions() >= self._max_sessions():
            self.send(sender, Failed(
                "SESSION_LIMIT",
                f"all {self._max_sessions()} session slots are in use; disconnect a session "
                "or raise sessions.max_sessions",
                {"limit": self._max_sessions()}, request_id=msg.request_id))
            return
        if not self._known(msg.session) and not self._make_room():
            self.send(sender, Failed(
                "SESSION_LIMIT",
                f"the gateway already knows {self._max_sessions()} sessions and each holds a "
                "linked device; log one out (whatsAppDisconnect) and forget it "
                "(whatsAppForgetSession), or raise sessions.max_sessions",
                {"limit": self._max_sessions()}, request_id=msg.request_id))
            return
        if key not in self.children and self._place(msg.session, overflow=False) is None:
            self.send(sender, Failed(
                "SESSION_LIMIT",
                "no host of the cluster has a free session slot; raise cluster.sessions on "
                "a host or add a member", {"limit": self._max_sessions()},
                request_id=msg.request_id))
            return
        # Remembered first: _spawn reads it to decide whether the new process connects
        # (after a whatsAppDisconnect(keepSession: true) it still says "disconnected").
        self._remember(msg.session, want="connected")
        if key in self.children:
            self._command(key, SessionCommand("connect", msg.request_id))
        else:
            self._start_session(msg.session, connect=True)
        self.send(sender, Ok(True, request_id=msg.request_id))

    def receiveMsg_Disconnect(self, msg: Disconnect, sender: Any) -> None:
        if not self._known(msg.session):  # never remember a name nobody connected
            self.send(sender, _unknown_session(msg.session, msg.request_id))
            return
        key = ChildKey.of_session(msg.session)
        action = "disconnect" if msg.keep_session else "logout"
        if key not in self.children and not msg.keep_session:
            known = self.statuses.get(msg.session)
            if known is not None and known.paired:
                # Credentials are on disk but no process runs: start one just to log out.
                self._start_session(msg.session, connect=False)
        if key in self.children:
            self._command(key, SessionCommand(action, msg.request_id))
        elif msg.session in self.statuses and msg.keep_session:
            self._set_status(replace(self.statuses[msg.session], state=SessionState.DISCONNECTED,
                                     updated_at=time.time()))
        if msg.keep_session:
            self._remember(msg.session, want="disconnected")
        self.send(sender, Ok(True, request_id=msg.request_id))

    def receiveMsg_ForgetSession(self, msg: ForgetSession, sender: Any) -> None:
        refusal = self._forget_refusal(msg.session, msg.request_id)
        if refusal is not None:
            self.send(sender, refusal)
            return
        problem = self._forget(msg.session, "operator")
        if problem is not None:
            status = self.statuses.get(msg.session) or SessionStatus(session=msg.session)
            self.send(sender, Failed(
                "SESSION_IN_USE", f"session '{msg.session}' was not forgotten: {problem}; "
                "fix the permissions of its directory under storage.sessions_dir (or "
                "data_dir/sessions) and try again",
                {"state": status.state.value, "session": msg.session},
                request_id=msg.request_id))
            return
        self.send(sender, Ok(True, request_id=msg.request_id))

    def receiveMsg_RequestPairingCode(self, msg: RequestPairingCode, sender: Any) -> None:
        child = self.children.session(msg.session)
        if child is None or child.address is None or child.retiring:
            status = self.statuses.get(msg.session) or SessionStatus(session=msg.session)
            self.send(sender, Failed(
                "NOT_CONNECTED", "a pairing code can only be requested while the session "
                "shows a QR code; call whatsAppConnect first",
                {"state": status.state.value, "session": msg.session},
                request_id=msg.request_id))
            return
        self.send(child.address, PairingCodeRequest(msg.phone, sender, msg.request_id))

    def receiveMsg_CheckNumbers(self, msg: CheckNumbers, sender: Any) -> None:
        child = self.children.session(msg.session)
        if child is None or child.address is None or child.retiring:
            self.send(sender, Failed(
                "NOT_CONNECTED", f"session {msg.session!r} is not running; call "
                "whatsAppConnect first", {"session": msg.session}, request_id=msg.request_id))
            return
        self.send(child.address, NumberLookup(msg.phones, sender, msg.request_id))

    def receiveMsg_SendText(self, msg: SendText, sender: Any) -> None:
        """Sends normally go to the outbox directly (GetRoutes); pass on any that come here."""
        outbox = self.children.address(OUTBOX)
        if outbox is None or self.outbox_waits:
            self.send(sender, self._no_outbox(msg.request_id))
        else:
            self.send(outbox, Offer(msg, sender))

    def receiveMsg_DeliveryReceipt(self, msg: DeliveryReceipt, sender: Any) -> None:
        """A receipt from a session process that has not heard from the outbox yet: pass
        it on, if it really comes from the current process of the session it names."""
        child = self.children.session(msg.session)
        if child is not None and child.address == sender:
            self._to_outbox(msg)

    def receiveMsg_IncomingReceived(self, msg: IncomingReceived, sender: Any) -> None:
        """A message from a session process that has not heard from the outbox yet:
        passed on under the same check as a receipt."""
        child = self.children.session(msg.session)
        if child is not None and child.address == sender:
            self._to_outbox(msg)

    def receiveMsg_HandedBack(self, msg: HandedBack, sender: Any) -> None:
        """What a stopping outbox could not write: for its next process (or the one that
        runs already, if this came from an older one)."""
        for item in msg.items:
            if sender == self.children.address(OUTBOX):
                self._hold_received(item)
            else:
                self._to_outbox(item)

    def _to_outbox(self, msg: IncomingReceived | DeliveryReceipt) -> None:
        """To the outbox once it is ready. Until then, one its session process keeps
        (``origin``) is left to that process, which sends it again, in its order, when
        told the outbox is ready (``ResendReceived``); any other is held here (bounded;
        the loss is logged): WhatsApp has handed it over once and sends it no more."""
        outbox = self.children.address(OUTBOX)
        if outbox is not None and outbox == self.outbox_ready:
            self.send(outbox, msg)
        elif not msg.origin:
            self._hold_received(msg)

    def receiveMsg_OutboxReady(self, msg: OutboxReady, sender: Any) -> None:
        """The outbox's stores are open: what was kept for it goes now, in order."""
        if sender != self.children.address(OUTBOX):
            return  # an older process's late word
        self.outbox_ready = sender
        received, self.received_backlog = self.received_backlog, []
        for message in received:
            self.send(sender, message)
        # Then what the session processes keep unacknowledged (oldest first in each):
        # a copy of one written already is a no-op there.
        for _, child in self.children.sessions():
            if child.address is not None:
                self.send(child.address, ResendReceived(sender))

    def receiveMsg_StoreWriteFenced(self, msg: StoreWriteFenced, sender: Any) -> None:
        # Any process of a known session: the refused one is usually replaced by now.
        if self.children.session(msg.session) is not None:
            self.session_counters.store_fenced(msg.session)

    def receiveMsg_ReceivedUnkept(self, msg: ReceivedUnkept, sender: Any) -> None:
        child = self.children.session(msg.session)
        if child is not None and child.address == sender:
            self.session_counters.unkept(msg.session, msg.count)

    def _hold_received(self, msg: IncomingReceived | DeliveryReceipt) -> None:
        if len(self.received_backlog) < MAX_RECEIVED_BACKLOG:
            self.received_backlog.append(msg)
        else:
            log.error("a received message or receipt was dropped: the outbox is not "
                      "running and too many wait for it", what=type(msg).__name__,
                      session=msg.session)

    def receiveMsg_GetMessage(self, msg: GetMessage, sender: Any) -> None:
        self._route(msg, sender)

    def receiveMsg_GetMessageByKey(self, msg: GetMessageByKey, sender: Any) -> None:
        self._route(msg, sender)

    def receiveMsg_OpenMedia(self, msg: OpenMedia, sender: Any) -> None:
        self._route(msg, sender)

    def receiveMsg_ListMessages(self, msg: ListMessages, sender: Any) -> None:
        self._route(msg, sender)

    def receiveMsg_ListEvents(self, msg: ListEvents, sender: Any) -> None:
        self._route(msg, sender)

    def receiveMsg_ChartMessageStates(self, msg: ChartMessageStates, sender: Any) -> None:
        self._route(msg, sender)

    def _route(self, msg: GetMessage | GetMessageByKey | ListMessages | ListEvents
                   | ChartMessageStates | OpenMedia,
               sender: Any) -> None:
        outbox = self.children.address(OUTBOX)
        if outbox is None or self.outbox_waits:
            self.send(sender, self._no_outbox(msg.request_id))
        else:
            self.send(outbox, Routed(msg, sender))

    def _no_outbox(self, request_id: str) -> Failed:
        """Why no outbox takes a request here: a standby's outbox (with leases) waits
        for the leadership lock, and the message store belongs to the active leader;
        otherwise the outbox is restarting."""
        if self.outbox_waits:
            return _leader_standby(request_id)
        return _store_restarting(request_id)

    # ---- reports from children ------------------------------------------------------------

    def receiveMsg_StatusChanged(self, msg: StatusChanged, sender: Any) -> None:
        status = msg.status
        key = ChildKey.of_session(status.session)
        child = self.children.get(key)
        if child is None or child.address != sender:
            return  # a late report from a process we already replaced
        if status.state is SessionState.CONNECTED:
            child.failures = 0
        if status.pid is not None and child.host is not None:
            child.pid = (child.host, status.pid)  # a lease check names processes by pid
        status = keep_account(self.statuses.get(status.session), replace(status, host=child.host))
        self._set_status(status)
        if status.state in FINAL_STATES and not child.retiring:
            child.retiring = True
            self.send(child.address, ActorExitRequest())

    def receiveMsg_RetireSession(self, msg: RetireSession, sender: Any) -> None:
        """A session process asks to be replaced (its engine leaks a database pool per
        client, or it was fenced: it lost its lease, or a store write was refused):
        not a crash, no backoff, no restart budget; the successor connects (with
        leases, once it holds the lease) and goes on with the same attempt."""
        child = self.children.session(msg.session)
        if child is None or child.address != sender or child.retiring or self.stopping:
            return
        if msg.fenced:
            self._record_fenced(msg.session, child.host, msg.fenced)
        else:
            log.info("replacing a session process", session=msg.session,
                     attempt=msg.attempt)
        child.retiring = child.respawn = True
        child.resume_attempt = max(1, msg.attempt)
        self.send(child.address, ActorExitRequest())

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        key = self.children.key_of(msg.childAddress)
        if key is None and self.lease_agent is not None and msg.childAddress == self.lease_agent:
            self.lease_agent = None
            if not self.stopping:
                log.warning("the lease agent exited; starting another")
                self._start_lease_agent()
            return
        if key is None:
            if self.cluster is not None:
                self.cluster.agent_exited(msg.childAddress)
            return
        child = self.children[key]
        child.address = None
        self._forget_watch(key)
        if key.is_session:
            self._link(key.name)
        if self.stopping:
            return
        if child.retiring and child.respawn:
            self._respawn(key)  # carries the commands that arrived while it was retiring
            return
        if child.retiring:
            if key.is_session:
                del self.children[key]
            return
        self._crashed(key, child, msg.childAddress)

    def receiveMsg_SessionsFenced(self, msg: SessionsFenced, sender: Any) -> None:
        """A member's agent stopped these sessions because the leader went quiet (cut
        off, or paused itself): fenced stops, which never spend the restart budget,
        whichever of this notice and the exits arrives first (Child.fence)."""
        if self.cluster is None or not self.cluster.is_agent(msg.host, sender):
            return
        for session, address in msg.sessions:
            self._fence(session, msg.host, address, FENCE_LEADER_SILENT)

    def receiveMsg_LeaseFenced(self, msg: LeaseFenced, sender: Any) -> None:
        """A host's lease check is about to stop these processes (SIGTERM, then SIGKILL):
        they hold no current lease. Fenced stops, not crashes, whichever of this notice
        and the exits arrives first (Child.fence); each pid is matched to the process
        the supervisor knows on that host. Accepted from this host's lease agent or a
        member's current agent, for its own host only."""
        ours = (self.lease_agent is not None and sender == self.lease_agent
                and self.cluster is not None and msg.host == self.cluster.local_host)
        if not ours and (self.cluster is None or not self.cluster.is_agent(msg.host, sender)):
            return
        for session, pid in msg.processes:
            child = self.children.session(session)
            if child is not None:
                self._fence(session, msg.host, child.process_at(msg.host, pid), msg.reason)

    def _fence(self, session: str, host: str, address: Any, reason: str) -> None:
        """Process ``address`` of ``session`` on ``host`` was (or is being) fenced: its
        exit is no crash (Child.fence); a crash already counted is taken back and the
        session started again at once, not after a crash's backoff."""
        key = ChildKey.of_session(session)
        child = self.children.get(key)
        if child is None:
            return
        was_retiring = child.retiring
        outcome = child.fence(address)
        if outcome is None or (outcome == "retire" and was_retiring):
            return  # another process, or one already on its way out (recorded then)
        self._record_fenced(session, host, reason, outcome)
        if outcome == "pardon" and child.address is None and not self.stopping:
            self._respawn(key)

    def _record_fenced(self, session: str, host: str | None, reason: str,
                       outcome: str = "retire") -> None:
        """The log line and the audit entry of a fenced stop."""
        log.warning("a session process was fenced; starting it again (not a crash)",
                    session=session, host=host, reason=reason, outcome=outcome)
        self.audit("session.fenced", session=session, host=host, reason=reason)

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        dead = msg.deadMessage
        if isinstance(dead, IncomingReceived | DeliveryReceipt) and not self.stopping:
            # Sent to an outbox process that has died (the session did not hear of its
            # successor yet): for the successor, or the current one.
            outbox = self.children.get(OUTBOX)
            if outbox is not None and outbox.address == msg.deadAddress:
                if not dead.origin:  # its session keeps it otherwise (_to_outbox)
                    self._hold_received(dead)  # it died and we have not heard yet
            else:
                self._to_outbox(dead)
            return
        if not isinstance(dead, AuditEvent | AuditBatch) and not (
                isinstance(dead, Routed) and isinstance(dead.request, RecordAudit)):
            return  # other messages to dead actors: their senders handle the silence
        if self.stopping:  # the audit actor stops with everything else; it has closed
            log.info("audit event after the audit log closed at shutdown",
                     audit_event=getattr(dead, "event", type(dead).__name__))
            return
        child = self.children.get(AUDIT)
        if child is not None and child.address is not None and child.address == msg.deadAddress:
            self._hold(dead)  # it died and we have not heard yet: for its successor
            return
        self._to_audit(dead)

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        log.error("a message could not be handled", message=type(msg.poisonMessage).__name__,
                  details=str(msg.details)[:500])

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if isinstance(msg.payload, _Heartbeat):
            if not self.stopping:
                self._publish()
            return
        if isinstance(msg.payload, HostCheck):
            if not self.stopping and self.cluster is not None:
                self.cluster.check(self.children.placed_on)
            return
        if isinstance(msg.payload, _LeaderCheck):
            if not self.stopping:
                self._claim_leadership()
            return
        if isinstance(msg.payload, _LeaseCheck):
            if msg.payload.generation == self.lease_generation and not self.stopping:
                self._check_leases()
            return
        due = msg.payload
        if not isinstance(due, _RestartDue) or self.stopping:
            return
        child = self.children.get(due.key)
        if child is None or child.address is not None or child.incarnation != due.incarnation:
            return
        self._respawn(due.key)

    # ---- the cluster (actors.supervisor.cluster): handlers in, ClusterOwner out ---------------

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate,
                                               sender: Any) -> None:
        if self.cluster is not None and not self.stopping:
            self.cluster.member_changed(msg.remoteCapabilities or {}, msg.remoteAdded,
                                        msg.remoteAdminAddress)

    def receiveMsg_HostBeatAck(self, msg: HostBeatAck, sender: Any) -> None:
        if self.cluster is not None:
            self.cluster.heard(msg.host, sender, msg.seq)

    def create_agent(self, host: str) -> Any:
        """ClusterOwner: a ``HostAgent`` on member ``host``."""
        return self.createActor(HostAgent, targetActorRequirements={HOST_CAPABILITY: host})

    def stop_actor(self, address: Any) -> None:
        """ClusterOwner: ask the actor at ``address`` to exit."""
        self.send(address, ActorExitRequest())

    def check_hosts_after(self, seconds: float) -> None:
        """ClusterOwner: the next ``HostCheck``."""
        self.wakeupAfter(timedelta(seconds=seconds), payload=HostCheck())

    def move_sessions(self, host: str, why: str) -> None:
        """ClusterOwner: re-place every session of lost ``host`` on the remaining hosts,
        now: the credentials are in the shared session store, so they resume without a
        QR code, and the outbox sends their queued messages to the new processes."""
        now = time.time()
        for session, child in self.children.sessions():
            if child.host != host:
                continue
            key = ChildKey.of_session(session)
            old, child.address = child.address, None
            if old is not None:
                self.stop_actor(old)  # if it still runs somewhere, it must stop
            if child.retiring and not child.respawn:
                del self.children[key]  # its ChildActorExited will never come
                self._link(session)
                continue
            if session in self.statuses:
                self._set_status(replace(
                    self.statuses[session], state=SessionState.CONNECTING, updated_at=now,
                    qr_code=None, qr_expires_at=None, connected_since=None, pid=None,
                    last_error=ErrorInfo("HOST_LOST", f"host {host} {why}; the session moves "
                                         "to another host")))
            self._link(session)  # address None: the outbox takes back what was in flight
            if not self.stopping:
                self._respawn(key)  # a failed start is retried; the other sessions move on

    def _place(self, session: str, overflow: bool) -> str | None:
        """The host for ``session``, among the hosts of the other sessions."""
        assert self.cluster is not None
        return self.cluster.place(self.children.session_hosts(but=session), overflow)

    def _host_report(self) -> tuple[dict[str, Any], ...]:
        assert self.cluster is not None
        return self.cluster.report(self.children.session_hosts(running_only=True))

    # ---- helpers ------------------------------------------------------------------------------

    def _crashed(self, key: ChildKey, child: Child, exited: Any = None) -> None:
        assert self.config is not None and child.budget is not None
        now = time.time()
        child.failures += 1
        child.crashed = (exited, now) if exited is not None else None
        child.crashed_pid = child.pid if exited is not None else None
        session = key.name if key.is_session else None
        if not child.budget.record(now):
            log.error("restart budget exhausted", child=str(key))
            if session is not None:
                del self.children[key]
                self._set_status(replace(
                    self.statuses.get(session) or SessionStatus(session=session),
                    state=SessionState.FAILED, qr_code=None, qr_expires_at=None,
                    connected_since=None, updated_at=now,
                    last_error=ErrorInfo("SESSION_CRASHED", "the session process crashed "
                                         "repeatedly; see the logs, then call "
                                         "whatsAppConnect")))
                return
            # The outbox is not optional: keep trying at the slowest pace.
        delay = backoff_delay(child.failures, self.config.supervisor.restart_backoff_seconds)
        log.warning("child exited unexpectedly; restarting", child=str(key), delay=delay,
                    failures=child.failures)
        if session is not None and session in self.statuses:
            self._set_status(replace(self.statuses[session], updated_at=now,
                                     last_error=ErrorInfo("SESSION_CRASHED",
                                                          "the session process exited "
                                                          "unexpectedly; restarting it")))
        self.wakeupAfter(timedelta(seconds=delay), payload=_RestartDue(key, child.incarnation))

    def _spawn(self, key: ChildKey) -> None:
        """Start the child's next process and send it its first messages."""
        assert self.config is not None and self.cluster is not None
        child = self.children[key]
        child.incarnation += 1
        child.retiring = child.respawn = False
        child.pid = None  # until the new process reports
        self._forget_watch(key)
        local = self.cluster.local_host
        if key.is_session and self.config.cluster.role != "single":
            # A process that runs already (restart, failover) may exceed a host's slots.
            child.host = self._place(key.name, overflow=True) or local
            child.address = self.createActor(
                child.actor_class, targetActorRequirements={HOST_CAPABILITY: child.host})
        else:
            child.host = local
            child.address = self.createActor(child.actor_class)
        if key.is_session:
            self._start_session_process(key.name, child)
        else:
            self._start_worker_process(key, child)
        log.info("child started", child=str(key), incarnation=child.incarnation,
                 host=child.host)

    def _start_session_process(self, session: str, child: Child) -> None:
        assert self.config is not None and self.cluster is not None
        if session in self.statuses:  # shown at once; the process reports the rest
            self.statuses[session] = replace(self.statuses[session], host=child.host)
        want = self._remembered().get(session, {}).get("want", "connected")
        # A session on another host runs on that host's config (actors.system
        # host_config): this host's credentials stay here.
        config = (self.config if child.host == self.cluster.local_host
                  else without_credentials(self.config))
        self.send(child.address, StartSession(session, config, connect=want == "connected",
                                              attempt=child.resume_attempt))
        child.resume_attempt = 1
        for command in child.pending_commands:
            self.send(child.address, command)
        child.pending_commands.clear()

    def _start_worker_process(self, key: ChildKey, child: Child) -> None:
        assert self.config is not None
        if key in SHARED_STORE_WORKERS and self.lease_waits is not None \
                and not (self.holds_leadership and self.in_sync):
            # With leases the outbox's store is in PostgreSQL, shared by the leaders:
            # only the lock's holder may write it, so a standby's outbox gets its
            # StartWorker when this leader takes the lock (answering LEADER_STANDBY until
            # then), and stops when it loses it (_step_down). The webhook worker reads
            # that store's event log: on two leaders it would deliver every event twice.
            # Both wait for the shared registry too: an outbox started without every
            # session's link would fail the queues of those it lacks.
            self.waiting_workers.add(key)
            return
        self.waiting_workers.discard(key)
        links = tuple(self._session_link(s) for s in self.statuses)
        self.send(child.address, StartWorker(self.config, self.myAddress, links))
        if key == AUDIT:
            backlog, self.audit_backlog = self.audit_backlog, []
            for message in backlog:
                self.send(child.address, message)
        # The outbox's kept received messages go after its OutboxReady: sent now, to a
        # process whose start fails (a full disk), they could be lost with it.

    def _respawn(self, key: ChildKey, lease_free: bool = False) -> None:
        """Start a supervised child's process again. A start that fails counts as a
        crash, retried after the backoff: a failed handler is not run again, and the
        child must not be left without a process nobody will start. With leases, a
        session's process starts only once its lease is free (``_await_lease``)."""
        if key.is_session and self.lease_waits is not None and not lease_free:
            self._await_lease(key.name)
            return
        try:
            self._spawn(key)
        except Exception:
            log.exception("starting a child failed; it is retried after the backoff",
                          child=str(key))
            self.children[key].address = None
            self._crashed(key, self.children[key])

    def _start_session(self, session: str, connect: bool) -> None:
        key = ChildKey.of_session(session)
        self.children[key] = Child(SessionActor, budget=self._budget())
        if not connect:
            self._remember(session, want="disconnected")
        if self.lease_waits is not None:
            self._await_lease(session)  # never while its lease is held elsewhere
            return
        try:
            self._spawn(key)
        except Exception:
            # No process: forget the child, or the next whatsAppConnect would queue its
            # command for a process nobody starts (a failed handler is not run again).
            del self.children[key]
            raise

    # ---- leases (multi-host mode with cluster.database_url; issue 22) ------------------------

    def _await_lease(self, session: str) -> None:
        """Start ``session``'s process once its lease is free by the database's clock
        plus the margin: asked now, and again until then (``_check_leases``)."""
        assert self.lease_waits is not None
        self.lease_waits.add(session)
        self._check_leases()

    def _start_lease_agent(self) -> None:
        """This host's own session processes are checked against their leases, as a
        member's agent checks its host's (``actors.supervisor.lease_agent``)."""
        assert self.config is not None
        here = host_name(self.config)
        # Named, not left to Thespian: it must check this host's processes.
        self.lease_agent = self.createActor(LeaseAgent,
                                            targetActorRequirements={HOST_CAPABILITY: here})
        # fence_seconds unused: the leader fences nothing of its own.
        self.send(self.lease_agent, StartAgent(here, 0.0, self.config.cluster.heartbeat_seconds))

    def _claim_leadership(self) -> None:
        """Every ``lease_renew_seconds``: try the leadership lock (armed first: a failed
        handler is not run again). A standby takes over within one period of the
        holder's database connection ending; its waiting sessions are asked about at
        once, and members follow the address it publishes."""
        assert self.config is not None and self.lease_waits is not None
        self.wakeupAfter(timedelta(seconds=self.config.cluster.lease_renew_seconds),
                         payload=_LeaderCheck())
        found = change(self.holds_leadership, self.lease_waits.claim())
        if self.registry is not None:
            self.registry.flush()  # what the database did not take before (cheap if none)
        if found is Change.LOST:
            self._step_down()
        elif found is Change.TOOK:
            self.holds_leadership = True
            self.in_sync = False
            log.warning("this leader holds the leadership lock: it starts sessions, and "
                        "members join it")
            self.audit("leader.active", host=host_name(self.config), pid=os.getpid())
            if self.lease_waits.sessions:
                self._check_leases()
        if self.holds_leadership and not self.in_sync:
            self._take_over()

    def _take_over(self) -> None:
        """The holder's first look at the shared registry (asked again every period
        until it answers): its sessions become this leader's, then the workers on the
        shared store start, their links complete."""
        if self.registry is None:
            return  # taken at start: StartGateway syncs next
        synced = self.registry.sync()
        if synced is None:
            log.warning("this leader holds the lock but has not read the shared session "
                        "registry; its outbox and webhook worker wait for it")
            return
        self.in_sync = True
        self._adopt_shared_sessions(synced)
        for key in [k for k in SHARED_STORE_WORKERS if k in self.waiting_workers]:
            child = self.children.get(key)
            if child is not None and child.address is not None:
                self._start_worker_process(key, child)  # the store is ours to use now

    def _step_down(self) -> None:
        """This leader lost the leadership lock while it lives (its lock connection
        ended): another leader may hold it now and can place the sessions only once
        their leases are free. Each running session process is stopped as a fenced
        stop (no restart budget; its clean exit releases its lease at once) and waits
        to start again like a standby's sessions (LEADER_STANDBY) until this leader
        holds the lock again (``actors.leases.standing``)."""
        assert self.config is not None
        self.holds_leadership = self.in_sync = False
        running = self.children.running_sessions()
        log.error("this leader lost the leadership lock: it stops the sessions it placed "
                  "and becomes a standby until it holds the lock again",
                  sessions=[s for s, _ in running])
        self.audit("leader.standby", host=host_name(self.config), pid=os.getpid(),
                   sessions=len(running))
        for session, child in running:
            self._record_fenced(session, child.host, FENCE_LEADER_LOST)
            child.retiring = child.respawn = True  # its exit waits for the lock (_respawn)
            self.send(child.address, ActorExitRequest())
        for key in SHARED_STORE_WORKERS:
            worker = self.children.get(key)
            if worker is not None and worker.address is not None and not worker.retiring:
                # The shared store is the new holder's: this worker stops, and its next
                # process waits for the lock (_start_worker_process).
                worker.retiring = worker.respawn = True
                self.send(worker.address, ActorExitRequest())

    def _check_leases(self) -> None:
        """Start the waiting sessions whose lease is free; show the others as waiting
        (state CONNECTING, lastError LEASE_HELD with the holder) and ask again later."""
        assert self.lease_waits is not None
        found = self.lease_waits.check()
        if found.standby and self.holds_leadership:
            self._step_down()  # the question found the lock lost before _claim_leadership
        now = time.time()
        for session, said in found.waiting.items():
            child = self.children.session(session)
            if child is None or child.address is not None:
                self.lease_waits.discard(session)  # forgotten, or started meanwhile
                continue
            # A new session has no status yet: it gets one, so the wait shows.
            status = self.statuses.get(session) or SessionStatus(session=session)
            if status.last_error is None or status.last_error.message != said.reason:
                if status.last_error is None or status.last_error.code != said.code:
                    log.info("a session waits to start", session=session, reason=said.reason)
                self._set_status(replace(status, state=SessionState.CONNECTING,
                                         updated_at=now, pid=None, connected_since=None,
                                         last_error=ErrorInfo(said.code, said.reason)))
        for session in found.ready:
            key = ChildKey.of_session(session)
            child = self.children.get(key)
            if child is None or child.address is not None or self.stopping:
                continue
            self._respawn(key, lease_free=True)
            self._link(session)
        if found.next_in is not None:
            self.lease_generation += 1
            self.wakeupAfter(timedelta(seconds=found.next_in),
                             payload=_LeaseCheck(self.lease_generation))

    def _command(self, key: ChildKey, command: SessionCommand) -> None:
        child = self.children[key]
        if child.retiring:
            child.respawn = True  # that process is on its way out: use the next one
        if child.address is None or child.retiring:
            child.pending_commands.append(command)  # delivered by _spawn
        else:
            self.send(child.address, command)

    def _set_status(self, status: SessionStatus) -> None:
        old = self.statuses.get(status.session)
        self.statuses[status.session] = status
        self.session_counters.observe(old, status, time.time())
        if old is None or old.state != status.state:
            log.info("session state changed", session=status.session,
                     old=old.state.value if old else None, new=status.state.value,
                     attempt=status.reconnect_attempt,
                     error=status.last_error.code if status.last_error else None)
            # Never the QR code: it is a credential while it is valid.
            self.audit("session.state", session=status.session,
                       old=old.state.value if old else None, new=status.state.value,
                       error=status.last_error.code if status.last_error else None,
                       attempt=status.reconnect_attempt or None,
                       phone=status.phone if status.state is SessionState.CONNECTED else None)
        self._write_snapshot()
        if old is None or (old.state, old.paired, old.phone) != (status.state, status.paired,
                                                                 status.phone):
            self._remember(status.session, state=status.state.value, paired=status.paired,
                           phone=status.phone)
        self._link(status.session)

    def audit(self, event: str, **fields: Any) -> None:
        self._to_audit(AuditEvent(event, fields))

    def _to_audit(self, message: Any) -> None:
        """To the audit actor, or held while it restarts (bounded: a dead writer must not
        grow the supervisor without limit; the loss is logged)."""
        child = self.children.get(AUDIT)
        if child is not None and child.address is not None:
            self.send(child.address, message)
        else:
            self._hold(message)

    def _hold(self, message: Any) -> None:
        if len(self.audit_backlog) < MAX_AUDIT_BACKLOG:
            self.audit_backlog.append(message)
        else:
            log.error("audit event dropped: the audit actor is not running",
                      audit_event=getattr(message, "event", type(message).__name__))

    def _publish(self) -> None:
        """Heartbeat: rewrite the snapshot, ask the children whether they still read
        their mail, and look again in a moment (armed first: a failed handler is not
        run again, and the heartbeat must go on)."""
        self.wakeupAfter(timedelta(seconds=HEARTBEAT_SECONDS), payload=_Heartbeat())
        self._write_snapshot()
        self._watch_children()

    # ---- the watchdog (actors.supervisor.watchdog) ------------------------------------------

    def receiveMsg_ProcessInfo(self, msg: ProcessInfo, sender: Any) -> None:
        key = self.children.key_of(sender)
        if key is not None and self.watchdog is not None:
            self.watchdog.answered(key, msg.pid)

    def _watch_children(self) -> None:
        if self.watchdog is None or self.cluster is None or self.stopping:
            return
        now = time.monotonic()
        watched = [key for key, child in self.children.items()
                   if child.address is not None and not child.retiring
                   and child.host == self.cluster.local_host]
        self.watchdog.keep(watched)
        hung = self.watchdog.hung(now)
        for found in hung:
            self._end_hung(found)
        ended = {found.key for found in hung}
        for key in self.watchdog.to_ask([k for k in watched if k not in ended], now):
            self.send(self.children[key].address, WhoAreYou())

    def _end_hung(self, hung: Hung[ChildKey]) -> None:
        """Kill a hung child's process: its exit (ChildActorExited) restarts it as a
        crash. Only a process this one started: a pid can be another's by now."""
        assert self.watchdog is not None
        killed = kill_child(hung.pid)
        log.error("a child stopped answering; killing its process so that it restarts"
                  if killed else "a child stopped answering, and its process is not ours "
                  "to kill", child=str(hung.key), pid=hung.pid,
                  silent_seconds=round(hung.silent_for, 1),
                  hang_seconds=self.watchdog.hang_seconds)

    def _forget_watch(self, key: ChildKey) -> None:
        if self.watchdog is not None:
            self.watchdog.forget(key)

    def _write_snapshot(self) -> None:
        if self.config is None or self.stopping:
            return
        try:
            write_snapshot(self.config.data_path, self.statuses, time.time())
        except OSError as exc:  # readers fall back to asking: never fatal
            log.warning("could not write the status snapshot", error=repr(exc))

    def _link(self, session: str) -> None:
        outbox = self.children.get(OUTBOX)
        if outbox is None or outbox.address is None or session not in self.statuses:
            return
        self.send(outbox.address, self._session_link(session))

    def _session_link(self, session: str) -> SessionLink:
        status = self.statuses[session]
        child = self.children.session(session)
        address = child.address if child is not None else None
        epoch = int(self._remembered().get(session, {}).get("epoch", 0))
        return SessionLink(session, address, status.state, status.paired, status.phone, epoch,
                           status.last_error)

    def _remembered(self) -> dict[str, dict[str, Any]]:
        assert self.registry is not None
        return self.registry.sessions()

    def _remember(self, session: str, **changes: Any) -> None:
        """Persist what a restart needs: is the session wanted, is it paired, and its
        link epoch (actors.session.links; a logout starts a new one). With leases a
        standby shares only an operator's request and a new session: its view of a
        session's state is stale (actors.supervisor.registry)."""
        assert self.registry is not None
        old = self._remembered().get(session)
        share = (self.lease_waits is None or self.holds_leadership or old is None
                 or set(changes) <= {"want"})
        # One high-water mark for every session, on disk before any entry uses it: a
        # forgotten and re-created name never gets an epoch its old messages had.
        self.registry.put(session, updated_entry(old, changes, self.registry.next_epoch),
                          share=share)

    # ---- the registry's bound, and forgetting (actors.session.links) --------------------------

    def _known(self, session: str) -> bool:
        return (session in self.statuses or ChildKey.of_session(session) in self.children
                or session in self._remembered())

    def _running(self) -> list[str]:
        return [session for session, _ in self.children.sessions()]

    def _has_stores(self, session: str) -> bool:
        assert self.config is not None
        from actors.session.working_copy import has_sealed_stores  # the cipher library: only here

        return has_sealed_stores(self.config.data_path, session, self.config.sessions_path)

    def _make_room(self) -> bool:
        """Room in the registry for one more session: at most ``max_sessions`` are
        known, and a new one may take the place of one that holds nothing."""
        sessions = self._remembered()
        if len(sessions) < self._max_sessions():
            return True
        candidates = evictable(sessions, self._running(), self._has_stores)
        if not candidates:
            return False
        return self._forget(candidates[0], "replaced by a new session (sessions.max_sessions)"
                            ) is None

    def _drop_excess_sessions(self) -> list[str]:
        """At start: a registry that an older wagate let grow beyond ``max_sessions``
        loses the sessions that hold nothing, until it fits (or none is left to drop)."""
        assert self.registry is not None
        sessions = self._remembered()
        dropped = over_limit(sessions, self._max_sessions(), (), self._has_stores)
        if dropped:
            # A standby's "running" misses the active leader's: it drops only its copy.
            self.registry.drop(dropped, share=self.lease_waits is None or self.holds_leadership)
            log.warning("forgot sessions beyond sessions.max_sessions that hold nothing",
                        sessions=dropped)
        return dropped

    def _load_statuses(self) -> list[str]:
        """The remembered sessions' statuses; returns those to start now."""
        starting: list[str] = []
        for session, entry in sorted(self._remembered().items()):
            if self._load_status(session, entry, len(starting) < self._max_sessions()):
                starting.append(session)
        return starting

    def _load_status(self, session: str, entry: dict[str, Any], room: bool) -> bool:
        """A remembered session's status; True when it is to start now."""
        state = SessionState(entry["state"])
        if state in ACTIVE_STATES:
            state = SessionState.DISCONNECTED  # it was live when we stopped; not any more
        start = entry["want"] == "connected" and room
        if start:  # it reconnects at once: a paired session's sends queue meanwhile
            state = SessionState.CONNECTING
        self.statuses[session] = SessionStatus(session=session, paired=entry["paired"],
                                               phone=entry.get("phone"), state=state)
        return start

    def _adopt_shared_sessions(self, synced: Synced) -> None:
        """A standby that took the lock: the shared registry's sessions become its own
        before its outbox starts, so the outbox knows every session and its link epoch
        (else it fails their queues as forgotten or logged out), and each wanted one
        starts once its lease is free. Sessions another leader forgot are dropped here."""
        for session in synced.removed:
            if ChildKey.of_session(session) not in self.children:
                self.statuses.pop(session, None)
        remembered = self._remembered()
        for session, entry in sorted(remembered.items()):
            if ChildKey.of_session(session) in self.children:
                continue  # waiting for its lease already, or running
            room = len(list(self.children.sessions())) < self._max_sessions()
            if self._load_status(session, entry, room):
                self._start_session(session, connect=True)
        if synced.added or synced.removed:
            log.info("sessions from the shared registry", added=synced.added,
                     removed=synced.removed)

    def _forget_refusal(self, session: str, request_id: str) -> Failed | None:
        if not self._known(session):
            return _unknown_session(session, request_id)
        status = self.statuses.get(session) or SessionStatus(session=session)
        details = {"state": status.state.value, "session": session}
        if ChildKey.of_session(session) in self.children:
            return Failed("SESSION_IN_USE", f"session '{session}' is running (state "
                          f"{status.state.value}); log it out with whatsAppDisconnect, or "
                          "stop it with whatsAppDisconnect(keepSession: true) and log it out, "
                          "then forget it", details, request_id=request_id)
        if status.paired or self._remembered().get(session, {}).get("paired"):
            return Failed("SESSION_IN_USE", f"session '{session}' has a linked device; log "
                          "it out with whatsAppDisconnect first (that unlinks the device and "
                          "deletes its credentials), then forget it", details,
                          request_id=request_id)
        return None

    def _forget(self, session: str, how: str) -> str | None:
        """Remove every trace of a session that holds nothing: what an engine left on
        disk first (so a crash half-way leaves a session that can be forgotten again,
        never a name that would resume old credentials), then its registry entry, its
        status and counters, and its queue (the outbox fails what waits,
        SESSION_FORGOTTEN). Returns why it could not, or None."""
        assert self.registry is not None and self.config is not None
        from actors.session.sealed_store import StoreError  # the cipher library: only here
        from actors.session.store_generations import open_ledger
        from actors.session.working_copy import remove_stores

        try:
            ledger = open_ledger(self.config.encryption.generations_file, self.config.data_path)
            removed = remove_stores(self.config.data_path, session, self.config.sessions_path,
                                    ledger)
        except (OSError, StoreError) as exc:
            log.error("could not delete a forgotten session's stores", session=session,
                      error=repr(exc))
            return f"its stored credentials could not be deleted ({exc})"
        self.registry.drop([session])  # its stores are gone from the shared directory too
        self.statuses.pop(session, None)
        self.session_counters.forget(session)
        outbox = self.children.get(OUTBOX)
        if outbox is not None and outbox.address is not None:
            self.send(outbox.address, SessionForgotten(session))
        log.info("session forgotten", session=session, how=how, removed=removed)
        self.audit("session.forgotten", session=session, how=how, removed=removed or None)
        self._write_snapshot()
        return None

    def _live_sessions(self) -> int:
        return sum(1 for _ in self.children.sessions())

    def _max_sessions(self) -> int:
        assert self.config is not None
        return self.config.sessions.max_sessions

    def _budget(self) -> RestartBudget:
        assert self.config is not None
        cfg = self.config.supervisor
        return RestartBudget(cfg.restart_budget, cfg.restart_window_seconds)


def _lease_waits(config: Config) -> LeaseWaits:
    """The lease gate of a leader in lease mode; psycopg is imported only then."""
    from actors.leases.leader import LeaderLock
    from actors.leases.store import LeaseStore
    from actors.leases.timing import LeaseTiming
    from actors.supervisor.lease_wait import QUESTION_TIMEOUT_SECONDS, LeaseWaits

    store = LeaseStore(config.cluster.database_url, LeaseTiming.of(config.cluster),
                       host=host_name(config), pid=os.getpid(),
                       timeout_seconds=QUESTION_TIMEOUT_SECONDS)
    # Only the holder of the leadership lock starts sessions (one active leader).
    # Its holder publishes its convention address: members join the active leader.
    # A leader that lost the lock leaves it to the standbys for two renew periods:
    # each standby tries once a period, so each has its turn even if its try is late.
    lock = LeaderLock(config.cluster.database_url, timeout_seconds=QUESTION_TIMEOUT_SECONDS,
                      address=f"{bind_address(config)}:{config.actors.admin_port}",
                      host=host_name(config), pid=os.getpid(),
                      retake_after_seconds=RETAKE_AFTER_PERIODS
                      * config.cluster.lease_renew_seconds)
    return LeaseWaits(store, lock=lock)


def _shared_registry(config: Config) -> SharedRegistry:
    """The leaders' shared session registry in the lease database (psycopg only here)."""
    from actors.leases.registry import BoundedRegistry, PgRegistry
    from actors.supervisor.lease_wait import QUESTION_TIMEOUT_SECONDS

    return BoundedRegistry(PgRegistry(config.cluster.database_url, QUESTION_TIMEOUT_SECONDS),
                           QUESTION_TIMEOUT_SECONDS)


def _unknown_session(session: str, request_id: str) -> Failed:
    return Failed("UNKNOWN_SESSION", f"the gateway knows no session '{session}'; "
                  "whatsAppSessions lists the known ones, and whatsAppConnect creates one",
                  {"session": session}, request_id=request_id)


LEADER_STANDBY = "LEADER_STANDBY"  # extensions.reason of a request a standby refuses


def _leader_standby(request_id: str) -> Failed:
    """Nothing was stored: the caller sends through the active leader (or a member,
    which follows it)."""
    return Failed("UNAVAILABLE", "this leader is a standby (another leader holds the "
                  "leadership lock, or this one lost it); nothing was stored: send through "
                  "the active leader's API, or a member's, which follows it",
                  {"reason": LEADER_STANDBY}, request_id=request_id)


def _store_restarting(request_id: str) -> Failed:
    return Failed("UNAVAILABLE", "the message store is restarting; retry in a few seconds",
                  request_id=request_id)

