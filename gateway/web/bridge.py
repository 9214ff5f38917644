"""The web tier's only door into the actor system.

One ``ActorSystem`` handle per web process, made lazily after gunicorn forks, and one
long-lived ``private()`` context per thread: a handle shared by threads misroutes
replies, and a new context per request costs a socket, a bind and a name lookup
every time (it was the largest single cost of a request; docs/architecture.md §4).
A context whose ask went unanswered is closed and the next call opens a new one: the
answer may still come, and an idle context would hold its sender for minutes
(``_close_context``). So is one that told audit entries: a failure of that ``tell``
would otherwise cut short the next ask on it (``_tell_audit``). Every ask carries a
unique request id all the same, and a reply that does not match is dropped.

The web tier never *starts* an actor system; when none answers, every call becomes
``UNAVAILABLE``. A ``None`` reply means timeout or dead target.

Every call has a hard deadline: it runs on a helper thread (``gateway.web.deadline``),
and the web thread waits at most its timeout, whatever Thespian does meanwhile (over
TCP it can block in connect or send far longer). A send whose answer did not come after
it was handed to the outbox may have been accepted: it is ``UNCERTAIN`` (with the
idempotency key to look it up by), never ``UNAVAILABLE``, which says it did not
happen. Other calls that time out stay ``UNAVAILABLE``.

Sends go straight to the outbox (whose address the supervisor gives out and which
is cached per process), audit entries straight to the audit actor (told, never
asked); everything else goes to the supervisor.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from actors import leader_supervisor
from actors.messages import AuditBatch, AuditEvent, Failed, GetRoutes, SendText
from actors.system import LOOPBACK, SUPERVISOR_NAME, is_poison_for, join_system
from gateway.api.errors import GatewayError
from gateway.web.audit_queue import AuditQueue
from gateway.web.deadline import Call, CallPool, DeadlinePassed

log = structlog.get_logger("wagate.bridge")

# A None reply well before the deadline means "dead target", not "timeout": the ask's own
# transmit failed, so it was never delivered (true only because no other transmit shares
# the context: see ``_tell_audit``).
DEAD_TARGET_FRACTION = 0.5
# A tell cannot notice a dead target: audit events told to a restarted audit actor reach
# it through the supervisor (dead letters); the routes are asked again this often.
AUDIT_ROUTE_SECONDS = 10.0
FLUSH_SECONDS = 1.0  # at most, to hand a dead letter to the Admin after a tell
# Helper threads per web process when the caller does not say: calls stuck in a
# partition hold these, never web threads (gateway.web.deadline).
MAX_CALLS = 64
# On a cluster member: how often the web tier asks its Admin which leader it follows
# (at once after a call the leader's supervisor did not answer), and how long each
# status question may take (issue 22: the member's API follows a leader failover).
LEADER_CHECK_SECONDS = 2.0
LEADER_QUESTION_SECONDS = 1.0


class ActorBridge:
    def __init__(self, admin_port: int, timeout: float, address: str = LOOPBACK,
                 networks: tuple[str, ...] = (), max_calls: int = MAX_CALLS,
                 audit_linger: float = 0.0, member: bool = False) -> None:
        """``address``: where the actor system listens (``actors.system.bind_address``);
        ``networks``: ``actors.system.allowed_networks``, which this process's own reply
        sockets enforce too (they are actor-system sockets like any other);
        ``max_calls``: helper threads that make the calls (``gateway.web.deadline``);
        ``audit_linger``: ``audit.batch_seconds`` (``gateway.web.audit_queue``);
        ``member``: this host is a cluster member, whose supervisor is the followed
        leader's, found by status questions (``actors.leader_supervisor``), never by
        global name."""
        self.admin_port = admin_port
        self.timeout = timeout
        self.address = address
        self.networks = networks
        self.max_calls = max_calls
        self.audit_linger = audit_linger
        self.member = member
        self._pool: CallPool | None = None
        self._pool_pid: int | None = None
        self._audits: AuditQueue[AuditEvent] | None = None
        self._audits_pid: int | None = None
        self._lock = threading.Lock()  # the actor-system handle (held while joining one)
        # The helpers and the audit sender: never behind a join that hangs, or every
        # call would wait for it past its deadline.
        self._threads_lock = threading.Lock()
        self._pid: int | None = None
        self._system: Any = None
        self._supervisor: Any = None
        self._outbox: Any = None
        self._audit: Any = None  # the audit actor; None: tell the supervisor, which passes it on
        self._routes_at = 0.0
        self._leader: Any = None  # on a member: the leader whose supervisor is cached
        self._leader_checked_at = 0.0
        self._local = threading.local()
        self._counter = itertools.count()

    def ask(self, message: Any, timeout: float | None = None, to_outbox: bool = False) -> Any:
        """Send ``message`` and return ``Ok.value``; ``Failed`` becomes ``GatewayError``
        with the same code and details. Returns or raises within ``timeout`` (default:
        the bridge's): ``UNCERTAIN`` for a send that may have reached the outbox,
        ``UNAVAILABLE`` for everything else without an answer."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        try:
            reply = self._calls().run(
                lambda call: self._call(call, message, deadline, to_outbox), wait)
        except DeadlinePassed as exc:
            log.warning("an actor call passed its deadline", message=type(message).__name__,
                        seconds=wait, handed_on=exc.committed)
            raise (_uncertain(message) if exc.committed and to_outbox
                   else _unavailable()) from None
        if isinstance(reply, Failed):
            raise GatewayError(reply.code, reply.message, **reply.details)
        return getattr(reply, "value", reply)

    def close(self) -> None:
        """Send the audit entries that wait, then stop this process's helper threads
        once their calls end (a worker's exit, tests)."""
        if self._audits is not None and self._audits_pid == os.getpid():
            self._audits.close(self.timeout)
        self._audits = None
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
        self._pool = None

    # ---- internals ----------------------------------------------------------------------

    def _audit_queue(self) -> AuditQueue[AuditEvent]:
        """This process's audit sender (threads do not survive a fork)."""
        with self._threads_lock:
            if self._audits is None or self._audits_pid != os.getpid():
                self._audits = AuditQueue(self._send_audits, self.audit_linger)
                self._audits_pid = os.getpid()
                # What waits when a script or a worker ends normally leaves first.
                atexit.register(_close_at_exit, self._audits, os.getpid(), self.timeout)
            return self._audits

    def _calls(self) -> CallPool:
        """This process's helper threads (threads do not survive a fork)."""
        with self._threads_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool, self._pool_pid = CallPool(self.max_calls, "wagate-ask"), os.getpid()
            return self._pool

    def _call(self, call: Call[Any], message: Any, deadline: float, to_outbox: bool) -> Any:
        """On a helper thread: the whole call, within ``deadline`` (monotonic)."""
        target = self._outbox_address(_left(deadline)) if to_outbox else self._connect()[1]
        wait = _left(deadline)
        started = time.monotonic()
        reply = self._handed_on(call, target, message, wait)
        early = time.monotonic() - started < wait * DEAD_TARGET_FRACTION
        if reply is None and to_outbox:
            self._outbox = None  # it may have been restarted at a new address
            if early:
                # An early None is Thespian's answer for a dead target: the message was
                # never delivered, so asking the new outbox cannot send anything twice.
                wait = _left(deadline)
                started = time.monotonic()
                reply = self._handed_on(call, self._outbox_address(wait), message,
                                        _left(deadline))
                early = time.monotonic() - started < wait * DEAD_TARGET_FRACTION
        if reply is None:
            if not to_outbox:
                self._forget_supervisor()
            raise _uncertain(message) if to_outbox and not early else _unavailable()
        return reply

    def _handed_on(self, call: Call[Any], target: Any, message: Any, wait: float) -> Any:
        """``_ask``, once the call may still have an effect (its caller still waits)."""
        if not call.commit():
            raise _unavailable()  # the caller was told it did not happen: it must not
        try:
            return self._ask(target, message, wait)
        except GatewayError as exc:  # a connection that broke may have carried it
            if exc.code == "UNAVAILABLE":
                raise _uncertain(message) from exc
            raise

    def _ask(self, target: Any, message: Any, wait: float) -> Any:
        base = getattr(message, "request_id", "") or "r"
        request_id = f"{base}.{os.getpid()}.{next(self._counter)}"
        message = dataclasses.replace(message, request_id=request_id)

        def matches(reply: Any) -> bool:
            if is_poison_for(reply, request_id):
                raise GatewayError("INTERNAL", "the gateway could not handle this request")
            return getattr(reply, "request_id", None) == request_id

        try:
            return self._answer(target, message, wait, matches)
        except GatewayError:
            raise
        except Exception as exc:  # a broken admin connection is an outage, not a 500
            log.warning("actor system call failed", error=repr(exc))
            self._reset()
            raise _unavailable() from exc

    def _context(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.context is None:
            system = self._join()
            local.manager = system.private()
            local.context = local.manager.__enter__()
            local.pid = os.getpid()
        return local.context

    def _outbox_address(self, wait: float) -> Any:
        if self._outbox is None or self._pid != os.getpid():
            _, supervisor = self._connect()
            routes = self._ask(supervisor, GetRoutes(), wait)
            if routes is None:
                self._forget_supervisor()
                raise _unavailable()
            if isinstance(routes, Failed):
                raise GatewayError(routes.code, routes.message, **routes.details)
            self._outbox = routes.value["outbox"]
            self._audit = routes.value.get("audit")
            self._routes_at = time.monotonic()
        return self._outbox

    def audit(self, event: str, request_id: str = "", **fields: Any) -> None:
        """Hand one entry to the audit log's single writer; fire and forget.

        Never raises and never waits: the entry joins this process's audit queue
        (``gateway.web.audit_queue``), whose thread tells whatever gathered as one
        message, once the audit actor's address is cached in this process (the routes
        are asked again every ``AUDIT_ROUTE_SECONDS``). When the actor system is not
        available the entries are lost and a warning is logged (the web tier cannot
        write the log itself: the gateway's audit actor holds it).

        ``event``: ``mutation`` (one per GraphQL mutation, whatever its outcome),
        ``auth.failure`` (a refused request), or another dotted name. Field names, all
        optional, JSON-able values; None values are left out:

        - ``actor``: the token's name; ``role``: its role; ``ip``: the client address;
        - ``operation``: the GraphQL field (``sendWhatsAppNotification``, ...);
        - ``session``: the WhatsApp session;
        - ``recipient``: the phone number as raw digits (``14155552671``): the audit
          actor records it per ``audit.recipients`` (full, masked or hashed);
        - ``outcome``: ``ok`` or the error code; ``messageId``: the accepted message;
        - for ``auth.failure``: ``route`` (the matched route template), ``path``,
          ``code``, ``reason``; bursts are keyed on the route, never the path.

        Never message text: fields named ``text``, ``message`` or ``body`` are dropped.
        """
        self._audit_queue().put(AuditEvent(event, fields, request_id))

    def _send_audits(self, events: Sequence[AuditEvent]) -> None:
        """On the audit sender's thread: one ``tell`` for the entries that gathered."""
        message: AuditEvent | AuditBatch = (events[0] if len(events) == 1
                                            else AuditBatch(tuple(events)))
        try:
            self._calls().run(lambda _: self._tell_audit(message), self.timeout)
        except DeadlinePassed:
            log.warning("audit entries not confirmed: the actor system did not take them in "
                        "time", audit_events=len(events))
        except Exception as exc:
            log.warning("audit entries not delivered: the actor system is not available",
                        audit_events=len(events), error=repr(exc))
            if not isinstance(exc, GatewayError):
                self._reset()

    def _tell_audit(self, message: AuditEvent | AuditBatch) -> None:
        """Tell, flush, and close this thread's context: the next call opens another.

        A transmit whose connect fails at once (no route: a blackhole, a cut link)
        finishes inside ``tell``, but Thespian runs its failure callback only in the
        context's next run, and ``tell`` returns as if all went well. The next run was
        the next call's ``ask`` on this helper thread, and the old failure aborted it:
        the ask returned None at once, with its own message already written into a
        socket that delivered it later (a send answered UNAVAILABLE, yet accepted and
        sent). A ``tell`` has returned only once every transmit of its context has
        ended, so closing the context loses nothing but that stale callback."""
        target = self._audit_address()
        context = self._context()
        if target is None:
            target = self._connect()[1]  # the supervisor passes it on
        try:
            context.tell(target, message)
        finally:
            try:
                _flush(context)
            finally:
                self._close_context()

    def _audit_address(self) -> Any:
        """The audit actor's cached address; None: send to the supervisor instead."""
        if time.monotonic() - self._routes_at > AUDIT_ROUTE_SECONDS:
            self._outbox = None
        if self._pid != os.getpid() or self._outbox is None:
            try:
                self._outbox_address(self.timeout)  # the routes name the audit actor too
            except GatewayError:
                return None
        return self._audit

    def _join(self) -> Any:
        """This process's actor-system handle (one per process, made after a fork)."""
        if self._pid == os.getpid() and self._system is not None:
            return self._system
        with self._lock:
            if self._pid != os.getpid() or self._system is None:
                try:
                    system = join_system(self.admin_port, self.address, self.networks)
                except Exception as exc:
                    raise _unavailable() from exc
                self._system, self._pid = system, os.getpid()
                self._supervisor = self._outbox = self._leader = None
                self._leader_checked_at = 0.0
        return self._system

    def _connect(self) -> tuple[Any, Any]:
        """The handle and the supervisor to ask: a member's is the followed leader's."""
        system = self._join()
        if self.member:
            return system, self._member_supervisor()
        if self._supervisor is None:
            with self._lock:
                if self._supervisor is None:
                    try:
                        self._supervisor = system.createActor(
                            "actors.supervisor.actor.SupervisorActor",
                            globalName=SUPERVISOR_NAME)
                    except Exception as exc:
                        raise _unavailable() from exc
        return system, self._supervisor

    def _member_supervisor(self) -> Any:
        """On a member: the supervisor of the leader its Admin follows. Which leader
        that is, is asked again every ``LEADER_CHECK_SECONDS`` and at once after the
        supervisor did not answer (``_forget_supervisor``); another leader's supervisor
        comes with other routes, so the cached outbox and audit actor go too."""
        now = time.monotonic()
        supervisor = self._supervisor
        if supervisor is not None and now - self._leader_checked_at < LEADER_CHECK_SECONDS:
            return supervisor
        local_admin = leader_supervisor.admin_address(self._join(), self.address,
                                                      self.admin_port)
        leader = leader_supervisor.following(self._ask_status, local_admin,
                                             LEADER_QUESTION_SECONDS)
        if leader is None:
            raise _unavailable()
        if supervisor is None or leader != self._leader:
            supervisor = leader_supervisor.supervisor_of(
                self._ask_status, leader, SUPERVISOR_NAME, LEADER_QUESTION_SECONDS)
            if supervisor is None:
                raise _unavailable()
            if self._leader is not None and leader != self._leader:
                log.info("this member's web tier follows another leader",
                         leader=str(leader))
            self._supervisor, self._leader = supervisor, leader
            self._outbox = self._audit = None
        self._leader_checked_at = now
        return supervisor

    def _forget_supervisor(self) -> None:
        """A supervisor that did not answer: on a member, look the leader's up again at
        the next call (the leader may have changed or restarted)."""
        if self.member:
            self._supervisor = None

    def _ask_status(self, target: Any, message: Any, wait: float) -> Any:
        """A status question to an Admin on this thread's context."""
        try:
            return self._answer(target, message, wait, leader_supervisor.is_status)
        except Exception as exc:  # a broken admin connection is an outage
            log.warning("actor system status question failed", error=repr(exc))
            self._reset()
            raise _unavailable() from exc

    def _answer(self, target: Any, message: Any, wait: float,
                matches: Callable[[Any], bool]) -> Any:
        """Ask on this thread's context and listen until a reply ``matches`` (others
        are dropped; none should come, as an unanswered ask closes its context) or
        ``wait`` passes: then None, and the context is closed."""
        context = self._context()
        deadline = time.monotonic() + wait
        reply = context.ask(target, message, wait)
        while reply is not None and not matches(reply):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reply = None
                break
            reply = context.listen(remaining)
        if reply is None:
            self._close_context()
        return reply

    def _reset(self) -> None:
        with self._lock:
            self._system = self._supervisor = self._pid = self._outbox = self._audit = None
            self._leader = None
        self._close_context()

    def _close_context(self) -> None:
        """Close this thread's context after an ask that went unanswered; the next call
        opens a new one.

        The answer may still come, and Thespian's sender then waits for this context to
        acknowledge it, up to its transmit timeout (5 minutes). An idle helper
        acknowledges nothing, and an actor has only 20 transmits in flight: twenty
        answers to helpers that gave up (a burst of timeouts while the outbox was held)
        and the outbox's answers to everyone else waited behind them, so the gateway
        answered nothing for minutes. To a closed context the connection is refused and
        Thespian drops the answer at once (as a dead letter)."""
        local = self._local
        manager = getattr(local, "manager", None)
        owned = getattr(local, "pid", None) == os.getpid()
        local.context = local.manager = None
        if manager is not None and owned:
            try:
                manager.__exit__(None, None, None)
            except Exception as exc:  # a context that cannot close is dropped all the same
                log.info("closing an actor-system context failed", error=repr(exc))


def _flush(context: Any) -> None:
    """Send what a ``tell`` left queued.

    When the target of a ``tell`` is dead (an audit actor that was restarted at a new
    address), Thespian 4.0.1 queues a dead letter for the Admin (which hands it to the
    supervisor, our dead-letter handler) and returns without sending it; it would only
    leave with this thread's next call, or never. Running the transport once more in
    transmit-only mode sends it; with nothing queued it returns at once. This uses a
    private method of the pinned Thespian version (as ``actors.system.bind_only`` uses a
    private attribute).
    """
    base = getattr(context, "_systemBase", None)
    run = getattr(base, "_run_transport", None)
    if run is not None:
        run(FLUSH_SECONDS, txonly=True)


def _close_at_exit(queue: AuditQueue[AuditEvent], pid: int, timeout: float) -> None:
    """Only in the process that made the queue: a forked child inherits the exit hook
    but not the thread, and must not wait for it."""
    if os.getpid() == pid:
        queue.close(timeout)


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (monotonic), at least a moment: Thespian takes 0 as
    "no timeout"."""
    return max(0.01, deadline - time.monotonic())


def _uncertain(message: Any) -> GatewayError:
    """A send handed to the outbox without an answer: perhaps accepted, perhaps not."""
    if not isinstance(message, SendText):
        return _unavailable()
    return GatewayError("UNCERTAIN", "the gateway did not answer in time after the message "
                        "was handed to its store: it may have been accepted and sent; do "
                        "not send it blindly again: look it up with whatsAppMessageByKey("
                        "idempotencyKey, session), or send again with the same "
                        "idempotencyKey (it is never sent twice)",
                        idempotencyKey=message.idempotency_key, session=message.session)


def _unavailable() -> GatewayError:
    return GatewayError("UNAVAILABLE", "the gateway's actor system is not answering; "
                        "retry in a few seconds and check `wagate status` / the logs")
