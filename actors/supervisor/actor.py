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
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import diskcache
import structlog
from thespian.actors import (
    ActorExitRequest,
    ActorTypeDispatcher,
    ChildActorExited,
    DeadEnvelope,
    PoisonMessage,
    WakeupMessage,
)

from actors.audit.actor import AuditActor
from actors.messages import (
    AuditEvent,
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
    GetRoutes,
    GetStatus,
    HealthReport,
    ListMessages,
    NumberLookup,
    Offer,
    Ok,
    PairingCodeRequest,
    Ping,
    ProcessInfo,
    RecordAudit,
    RequestPairingCode,
    RetireSession,
    Routed,
    SendText,
    SessionCommand,
    SessionForgotten,
    SessionLink,
    SessionState,
    SessionStatus,
    StartGateway,
    StartSession,
    StartWorker,
    StatusChanged,
    Stop,
    WhoAreYou,
)
from actors.metrics import SessionCounters
from actors.outbox.actor import OutboxActor
from actors.run_once import RunOnce
from actors.session.actor import SessionActor
from actors.session.links import evictable, keep_account, over_limit, updated_entry
from actors.session.states import ACTIVE_STATES, FINAL_STATES
from actors.supervisor.cluster import ClusterSupervision, Host, HostCheck, RefusedHost
from actors.supervisor.placement import HeartbeatTracker
from actors.supervisor.policy import RestartBudget, backoff_delay
from actors.supervisor.snapshot import HEARTBEAT_SECONDS, remove_snapshot, write_snapshot
from actors.system import HOST_CAPABILITY, ROLE_CAPABILITY, host_name
from gateway.core.config import Config, without_credentials
from gateway.core.observability import setup_logging

log = structlog.get_logger("wagate.supervisor")

WORKERS = ("audit", "outbox")
MAX_AUDIT_BACKLOG = 1000  # audit events held while the audit actor restarts


@dataclass
class Child:
    """One supervised actor, by our own key."""

    kind: type
    address: Any = None
    incarnation: int = 0
    retiring: bool = False  # asked to exit: its ChildActorExited is not a crash
    respawn: bool = False  # a command arrived while retiring: start a new process after
    failures: int = 0  # consecutive crashes, for the backoff
    budget: RestartBudget | None = None
    pending_commands: list[SessionCommand] = field(default_factory=list)
    host: str | None = None  # where its current process runs (cluster placement)
    resume_attempt: int = 1  # the connect attempt its next process goes on with


@dataclass(frozen=True, slots=True)
class _Heartbeat:
    """Rewrites the status snapshot even when nothing changed: readers trust only a
    fresh one."""


@dataclass(frozen=True, slots=True)
class _RestartDue:
    key: str
    incarnation: int


class SupervisorActor(RunOnce, ClusterSupervision, ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Config | None = None
        self.children: dict[str, Child] = {}  # "outbox", "session:<id>"
        self.statuses: dict[str, SessionStatus] = {}
        self.registry: diskcache.Cache | None = None
        self.stopping = False
        self.audit_backlog: list[Any] = []  # AuditEvent / Routed(RecordAudit) for a restart
        self.session_counters = SessionCounters()  # for /metrics, fed by _set_status
        self.hosts: dict[str, Host] = {}  # by name; this host first
        self.refused: dict[str, RefusedHost] = {}  # members running another wagate
        self.local_host = ""
        self.tracker: HeartbeatTracker | None = None  # members' heartbeats (leader only)
        self.beat_seq = 0

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
        cluster = msg.config.cluster
        self.local_host = host_name(msg.config)
        self.hosts[self.local_host] = Host(self.local_host, cluster.role,
                                           cluster.sessions if cluster.role != "single"
                                           else msg.config.sessions.max_sessions)
        if cluster.role == "leader":
            self.tracker = HeartbeatTracker(cluster.heartbeat_seconds, cluster.heartbeat_misses)
            self.notifyOnSystemRegistrationChanges(True)
            self.wakeupAfter(timedelta(seconds=cluster.heartbeat_seconds), payload=HostCheck())
        state_dir = msg.config.data_path / "state"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.registry = diskcache.Cache(str(state_dir))
        # A tell to an actor that died is dropped silently by Thespian unless someone
        # handles dead letters: audit events told to a restarted audit actor's old
        # address come back here and are passed on (the web tier cannot notice).
        self.handleDeadLetters()
        # Every known session before the outbox starts: its StartWorker lists them all,
        # so it can tell a forgotten session's queue from a known one's.
        dropped = self._drop_excess_sessions()
        starting = self._load_statuses()
        # The audit log's writer first: everything after it may have something to record.
        for kind, cls in (("audit", AuditActor), ("outbox", OutboxActor)):
            self.children[kind] = Child(cls, budget=self._budget())
            self._spawn(kind)
        for session in dropped:
            self._audit("session.forgotten", session=session, how="over sessions.max_sessions")
        for session in starting:
            self._start_session(session, connect=True)
            self._link(session)
        log.info("gateway started", sessions=len(self.statuses))
        self._audit("gateway.started", sessions=len(self.statuses),
                    engine=msg.config.transport.engine, pid=os.getpid())
        self._publish()
        self.send(sender, Ok(request_id=msg.request_id))

    def receiveMsg_Stop(self, msg: Stop, sender: Any) -> None:
        if not self.stopping:
            self._audit("gateway.stopping")  # reaches the audit actor before its exit request
        self.stopping = True
        if self.config is not None:
            remove_snapshot(self.config.data_path)
        for child in self.children.values():
            if child.address is not None:
                child.retiring = True
                self.send(child.address, ActorExitRequest())
        self.send(sender, Ok(request_id=msg.request_id))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.stopping = True
        if self.registry is not None:
            self.registry.close()

    def receiveMsg_WhoAreYou(self, msg: WhoAreYou, sender: Any) -> None:
        self.send(sender, ProcessInfo(os.getpid(), os.getpgrp(), os.getppid()))

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
        outbox = self.children["outbox"].address
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
        outbox = self.children["outbox"].address if "outbox" in self.children else None
        if outbox is None:
            self.send(sender, _store_restarting(msg.request_id))
        else:
            audit = self.children["audit"].address if "audit" in self.children else None
            # audit None (restarting): send AuditEvents here, they are held and passed on.
            self.send(sender, Ok({"outbox": outbox, "audit": audit}, request_id=msg.request_id))

    def receiveMsg_AuditEvent(self, msg: AuditEvent, sender: Any) -> None:
        self._to_audit(msg)

    def receiveMsg_RecordAudit(self, msg: RecordAudit, sender: Any) -> None:
        self._to_audit(Routed(msg, sender))  # the audit actor answers the caller directly

    # ---- commands ------------------------------------------------------------------------

    def receiveMsg_Connect(self, msg: Connect, sender: Any) -> None:
        key = _key(msg.session)
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
        key = _key(msg.session)
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
        child = self.children.get(_key(msg.session))
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
        child = self.children.get(_key(msg.session))
        if child is None or child.address is None or child.retiring:
            self.send(sender, Failed(
                "NOT_CONNECTED", f"session {msg.session!r} is not running; call "
                "whatsAppConnect first", {"session": msg.session}, request_id=msg.request_id))
            return
        self.send(child.address, NumberLookup(msg.phones, sender, msg.request_id))

    def receiveMsg_SendText(self, msg: SendText, sender: Any) -> None:
        """Sends normally go to the outbox directly (GetRoutes); pass on any that come here."""
        outbox = self.children["outbox"].address
        if outbox is None:
            self.send(sender, _store_restarting(msg.request_id))
        else:
            self.send(outbox, Offer(msg, sender))

    def receiveMsg_DeliveryReceipt(self, msg: DeliveryReceipt, sender: Any) -> None:
        """A receipt from a session process that has not heard from the outbox yet: pass
        it on, if it really comes from the current process of the session it names."""
        child = self.children.get(_key(msg.session))
        outbox = self.children["outbox"].address
        if child is not None and child.address == sender and outbox is not None:
            self.send(outbox, msg)

    def receiveMsg_GetMessage(self, msg: GetMessage, sender: Any) -> None:
        self._route(msg, sender)

    def receiveMsg_ListMessages(self, msg: ListMessages, sender: Any) -> None:
        self._route(msg, sender)

    def _route(self, msg: GetMessage | ListMessages, sender: Any) -> None:
        outbox = self.children["outbox"].address
        if outbox is None:
            self.send(sender, _store_restarting(msg.request_id))
        else:
            self.send(outbox, Routed(msg, sender))

    # ---- reports from children ------------------------------------------------------------

    def receiveMsg_StatusChanged(self, msg: StatusChanged, sender: Any) -> None:
        status = msg.status
        key = _key(status.session)
        child = self.children.get(key)
        if child is None or child.address != sender:
            return  # a late report from a process we already replaced
        if status.state is SessionState.CONNECTED:
            child.failures = 0
        status = keep_account(self.statuses.get(status.session), replace(status, host=child.host))
        self._set_status(status)
        if status.state in FINAL_STATES and not child.retiring:
            child.retiring = True
            self.send(child.address, ActorExitRequest())

    def receiveMsg_RetireSession(self, msg: RetireSession, sender: Any) -> None:
        """A session process asks to be replaced (its engine leaks a database pool per
        client): not a crash, no backoff, no restart budget; the successor connects
        and goes on with the same attempt."""
        child = self.children.get(_key(msg.session))
        if child is None or child.address != sender or child.retiring or self.stopping:
            return
        log.info("replacing a session process", session=msg.session, attempt=msg.attempt)
        child.retiring = child.respawn = True
        child.resume_attempt = max(1, msg.attempt)
        self.send(child.address, ActorExitRequest())

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        key = next((k for k, c in self.children.items() if c.address == msg.childAddress), None)
        if key is None:
            for host in self.hosts.values():
                if host.agent is not None and host.agent == msg.childAddress:
                    host.agent = None  # the next host check places a new one
            return
        child = self.children[key]
        child.address = None
        if key.startswith("session:"):
            self._link(key[len("session:"):])
        if self.stopping:
            return
        if child.retiring and child.respawn:
            self._respawn(key)  # carries the commands that arrived while it was retiring
            return
        if child.retiring:
            if key.startswith("session:"):
                del self.children[key]
            return
        self._crashed(key, child)

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        dead = msg.deadMessage
        if not isinstance(dead, AuditEvent) and not (
                isinstance(dead, Routed) and isinstance(dead.request, RecordAudit)):
            return  # other messages to dead actors: their senders handle the silence
        if self.stopping:  # the audit actor stops with everything else; it has closed
            log.info("audit event after the audit log closed at shutdown",
                     audit_event=getattr(dead, "event", type(dead).__name__))
            return
        child = self.children.get("audit")
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
            if not self.stopping:
                self._check_hosts()
            return
        due = msg.payload
        if not isinstance(due, _RestartDue) or self.stopping:
            return
        child = self.children.get(due.key)
        if child is None or child.address is not None or child.incarnation != due.incarnation:
            return
        self._respawn(due.key)

    # ---- helpers ------------------------------------------------------------------------------

    def _crashed(self, key: str, child: Child) -> None:
        assert self.config is not None and child.budget is not None
        now = time.time()
        child.failures += 1
        session = key[len("session:"):] if key.startswith("session:") else None
        if not child.budget.record(now):
            log.error("restart budget exhausted", child=key)
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
        log.warning("child exited unexpectedly; restarting", child=key, delay=delay,
                    failures=child.failures)
        if session is not None and session in self.statuses:
            self._set_status(replace(self.statuses[session], updated_at=now,
                                     last_error=ErrorInfo("SESSION_CRASHED",
                                                          "the session process exited "
                                                          "unexpectedly; restarting it")))
        self.wakeupAfter(timedelta(seconds=delay), payload=_RestartDue(key, child.incarnation))

    def _spawn(self, key: str) -> None:
        assert self.config is not None
        child = self.children[key]
        child.incarnation += 1
        child.retiring = child.respawn = False
        if key.startswith("session:") and self.config.cluster.role != "single":
            # A process that runs already (restart, failover) may exceed a host's slots.
            child.host = self._place(key[len("session:"):], overflow=True) or self.local_host
            child.address = self.createActor(
                child.kind, targetActorRequirements={HOST_CAPABILITY: child.host})
        else:
            child.host = self.local_host
            child.address = self.createActor(child.kind)
        if key.startswith("session:"):
            session = key[len("session:"):]
            if session in self.statuses:  # shown at once; the process reports the rest
                self.statuses[session] = replace(self.statuses[session], host=child.host)
            want = self._remembered().get(session, {}).get("want", "connected")
            # A session on another host runs on that host's config (actors.system
            # host_config): this host's credentials stay here.
            config = (self.config if child.host == self.local_host
                      else without_credentials(self.config))
            self.send(child.address, StartSession(session, config,
                                                  connect=want == "connected",
                                                  attempt=child.resume_attempt))
            child.resume_attempt = 1
            for command in child.pending_commands:
                self.send(child.address, command)
            child.pending_commands.clear()
        else:
            links = tuple(self._session_link(s) for s in self.statuses)
            self.send(child.address, StartWorker(self.config, self.myAddress, links))
            if key == "audit":
                backlog, self.audit_backlog = self.audit_backlog, []
                for message in backlog:
                    self.send(child.address, message)
        log.info("child started", child=key, incarnation=child.incarnation, host=child.host)

    def _respawn(self, key: str) -> None:
        """Start a supervised child's process again. A start that fails counts as a
        crash, retried after the backoff: a failed handler is not run again, and the
        child must not be left without a process nobody will start."""
        try:
            self._spawn(key)
        except Exception:
            log.exception("starting a child failed; it is retried after the backoff",
                          child=key)
            self.children[key].address = None
            self._crashed(key, self.children[key])

    def _start_session(self, session: str, connect: bool) -> None:
        key = _key(session)
        self.children[key] = Child(SessionActor, budget=self._budget())
        if not connect:
            self._remember(session, want="disconnected")
        try:
            self._spawn(key)
        except Exception:
            # No process: forget the child, or the next whatsAppConnect would queue its
            # command for a process nobody starts (a failed handler is not run again).
            del self.children[key]
            raise

    def _command(self, key: str, command: SessionCommand) -> None:
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
            self._audit("session.state", session=status.session,
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

    def _audit(self, event: str, **fields: Any) -> None:
        self._to_audit(AuditEvent(event, fields))

    def _to_audit(self, message: Any) -> None:
        """To the audit actor, or held while it restarts (bounded: a dead writer must not
        grow the supervisor without limit; the loss is logged)."""
        child = self.children.get("audit")
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
        """Heartbeat: rewrite the snapshot, and look again in a moment (armed first: a
        failed handler is not run again, and the heartbeat must go on)."""
        self.wakeupAfter(timedelta(seconds=HEARTBEAT_SECONDS), payload=_Heartbeat())
        self._write_snapshot()

    def _write_snapshot(self) -> None:
        if self.config is None or self.stopping:
            return
        try:
            write_snapshot(self.config.data_path, self.statuses, time.time())
        except OSError as exc:  # readers fall back to asking: never fatal
            log.warning("could not write the status snapshot", error=repr(exc))

    def _link(self, session: str) -> None:
        outbox = self.children.get("outbox")
        if outbox is None or outbox.address is None or session not in self.statuses:
            return
        self.send(outbox.address, self._session_link(session))

    def _session_link(self, session: str) -> SessionLink:
        status = self.statuses[session]
        child = self.children.get(_key(session))
        address = child.address if child is not None else None
        epoch = int(self._remembered().get(session, {}).get("epoch", 0))
        return SessionLink(session, address, status.state, status.paired, status.phone, epoch,
                           status.last_error)

    def _remembered(self) -> dict[str, dict[str, Any]]:
        assert self.registry is not None
        return dict(self.registry.get("sessions", {}))

    def _remember(self, session: str, **changes: Any) -> None:
        """Persist what a restart needs: is the session wanted, is it paired, and its
        link epoch (actors.session.links; a logout starts a new one)."""
        assert self.registry is not None
        sessions = self._remembered()
        sessions[session] = updated_entry(sessions.get(session), changes, self._next_epoch)
        self.registry.set("sessions", sessions)

    def _next_epoch(self) -> int:
        """One high-water mark for every session, on disk before any entry uses it: a
        forgotten and re-created name never gets an epoch its old messages had."""
        assert self.registry is not None
        epoch = int(self.registry.get("epoch", 0)) + 1
        self.registry.set("epoch", epoch)
        return epoch

    # ---- the registry's bound, and forgetting (actors.session.links) --------------------------

    def _known(self, session: str) -> bool:
        return (session in self.statuses or _key(session) in self.children
                or session in self._remembered())

    def _running(self) -> list[str]:
        return [k[len("session:"):] for k in self.children if k.startswith("session:")]

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
            for session in dropped:
                sessions.pop(session)
            self.registry.set("sessions", sessions)
            log.warning("forgot sessions beyond sessions.max_sessions that hold nothing",
                        sessions=dropped)
        return dropped

    def _load_statuses(self) -> list[str]:
        """The remembered sessions' statuses; returns those to start now."""
        starting: list[str] = []
        for session, entry in sorted(self._remembered().items()):
            state = SessionState(entry["state"])
            if state in ACTIVE_STATES:
                state = SessionState.DISCONNECTED  # it was live when we stopped; not any more
            if entry["want"] == "connected" and len(starting) < self._max_sessions():
                # It reconnects at once: a paired session's sends queue meanwhile.
                state = SessionState.CONNECTING
                starting.append(session)
            self.statuses[session] = SessionStatus(session=session, paired=entry["paired"],
                                                   phone=entry.get("phone"), state=state)
        return starting

    def _forget_refusal(self, session: str, request_id: str) -> Failed | None:
        if not self._known(session):
            return _unknown_session(session, request_id)
        status = self.statuses.get(session) or SessionStatus(session=session)
        details = {"state": status.state.value, "session": session}
        if _key(session) in self.children:
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
        sessions = self._remembered()
        sessions.pop(session, None)
        self.registry.set("sessions", sessions)
        self.statuses.pop(session, None)
        self.session_counters.forget(session)
        outbox = self.children.get("outbox")
        if outbox is not None and outbox.address is not None:
            self.send(outbox.address, SessionForgotten(session))
        log.info("session forgotten", session=session, how=how, removed=removed)
        self._audit("session.forgotten", session=session, how=how, removed=removed or None)
        self._write_snapshot()
        return None

    def _live_sessions(self) -> int:
        return sum(1 for k in self.children if k.startswith("session:"))

    def _max_sessions(self) -> int:
        assert self.config is not None
        return self.config.sessions.max_sessions

    def _budget(self) -> RestartBudget:
        assert self.config is not None
        cfg = self.config.supervisor
        return RestartBudget(cfg.restart_budget, cfg.restart_window_seconds)


def _key(session: str) -> str:
    return f"session:{session}"


def _unknown_session(session: str, request_id: str) -> Failed:
    return Failed("UNKNOWN_SESSION", f"the gateway knows no session '{session}'; "
                  "whatsAppSessions lists the known ones, and whatsAppConnect creates one",
                  {"session": session}, request_id=request_id)


def _store_restarting(request_id: str) -> Failed:
    return Failed("UNAVAILABLE", "the message store is restarting; retry in a few seconds",
                  request_id=request_id)

