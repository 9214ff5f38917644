"""Every message that crosses a process boundary, as frozen dataclasses.

They are pickled by Thespian, so they live in this one importable module (never
``__main__``) and every process must run the same version of it. Actors reply with
data (``Ok``, ``Failed``), never with exception objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from actors.outbox.events import Event
from gateway.core.config import Config

if TYPE_CHECKING:  # actors.metrics imports this module
    from actors.metrics import OutboxMetrics, SessionMetrics


class SessionState(StrEnum):
    """A session's state. What each means, what to do about it and how the gateway
    treats it: its row in actors/session/states.py (one table for all of that)."""

    NEW = "NEW"  # known to nobody yet / never connected
    CONNECTING = "CONNECTING"
    QR_PENDING = "QR_PENDING"
    CONNECTED = "CONNECTED"
    RECONNECTING = "RECONNECTING"
    QR_EXPIRED = "QR_EXPIRED"
    LOGGED_OUT = "LOGGED_OUT"
    FAILED = "FAILED"
    DISCONNECTED = "DISCONNECTED"
    REPLACED = "REPLACED"  # the same device connected elsewhere
    BANNED = "BANNED"  # temporarily banned by WhatsApp (see banned_until)
    CLIENT_OUTDATED = "CLIENT_OUTDATED"  # WhatsApp refuses this client version


class MessageState(StrEnum):
    """A message record's state (actors/outbox/store.py). A StrEnum, so the values the
    store holds and the API shows are these very strings; README: Message records."""

    QUEUED = "QUEUED"  # accepted, waiting for its session, a rate limit or a retry
    SENDING = "SENDING"  # handed to the session; its outcome is not known yet
    SENT = "SENT"  # WhatsApp's server took it
    DELIVERED = "DELIVERED"  # a device of the recipient's confirmed it
    READ = "READ"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"  # still queued when its validForSeconds passed: never sent


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """A snapshot of one session, as the supervisor last heard it."""

    session: str
    state: SessionState = SessionState.NEW
    paired: bool = False  # credentials stored: connect resumes without a QR
    phone: str | None = None
    qr_code: str | None = None
    qr_expires_at: float | None = None
    reconnect_attempt: int = 0
    last_error: ErrorInfo | None = None
    connected_since: float | None = None
    updated_at: float = 0.0
    pid: int | None = None  # the session's process, for operators (and kill -9 in tests)
    banned_until: float | None = None
    host: str | None = None  # the host whose actor system runs the session (cluster.host_name)
    # Why the last checkpoint of its encrypted stores failed (None: it succeeded): the
    # link's newest state is only in the working copy until a checkpoint succeeds.
    store_unsaved: str | None = None

    @property
    def connected(self) -> bool:
        return self.state is SessionState.CONNECTED


# ---- replies -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    value: Any = True
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""


# ---- web tier -> supervisor ------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookCommand:
    """Web tier -> supervisor -> webhook actor (``Routed``): one webhook operation of the
    API (``actors.webhooks.commands``: op and its arguments as plain data); the answer is
    ``Ok`` with plain data, or ``Failed`` with the operation's error code."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""



@dataclass(frozen=True, slots=True)
class Ping:
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class GetStatus:
    session: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class GetRoutes:
    """Answered with Ok({"outbox": address}): the web tier sends messages there directly."""

    request_id: str = ""


@dataclass(frozen=True, slots=True)
class GetHealth:
    """Answered (by the outbox, at the end of a chain) with Ok(HealthReport)."""

    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Connect:
    session: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Disconnect:
    session: str
    keep_session: bool = False  # True: only disconnect; False: log out and forget credentials
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """A stored media file a message sends (``actors.media.store``): checked by the web
    tier from its bytes before it asks (``actors.media.kinds``). Travels in SendText and
    Deliver; the caption is the message's text."""

    kind: str  # IMAGE, VIDEO, AUDIO, VOICE, DOCUMENT, STICKER
    mime: str
    size: int  # plaintext bytes
    sha256: str  # its name in data_dir/media
    disk_bytes: int  # what the encrypted file takes on disk
    file_name: str = ""


@dataclass(frozen=True, slots=True)
class SendText:
    """A validated send request: ``phone`` is normalised digits, ``text`` checked.

    The text is left out of the repr (so of every log line that shows the message:
    Thespian logs the messages whose handler failed or that it could not deliver).
    """

    session: str
    phone: str
    text: str = field(repr=False)
    request_id: str = ""
    require_connected: bool = False  # testWhatsAppConnection: never queue
    # The same key from the same caller on the same session -> the original message.
    idempotency_key: str | None = None
    valid_for: float | None = None  # seconds; still queued after that -> EXPIRED
    requester: str = ""  # who asked: the API token's name (it scopes idempotency keys)
    # Why the recipient check had no answer ("TIMEOUT", "NOT_CONNECTED" ...); "" when it
    # answered or was off. Recorded in the message's history: it may never arrive.
    recipient_unknown: str = ""
    media: MediaSpec | None = None  # a media message: ``text`` is its caption ("" = none)


@dataclass(frozen=True, slots=True)
class ForgetSession:
    """Forget a session for good: its name, state and any credentials left on disk.
    Only a session that is not running and has no linked device can be forgotten."""

    session: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class RequestPairingCode:
    """Pair by phone number: answered with Ok(code) by the session (while QR_PENDING)."""

    session: str
    phone: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class PairingCodeRequest:
    """Supervisor -> session: RequestPairingCode with the caller to answer."""

    phone: str
    reply_to: Any
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class CheckNumbers:
    """Are these normalised numbers on WhatsApp? One engine lookup through the session;
    answered with Ok([NumberInfo, ...]) in the same order, or Failed (unknown)."""

    session: str
    phones: tuple[str, ...]
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class NumberLookup:
    """Supervisor -> session: CheckNumbers with the caller to answer."""

    phones: tuple[str, ...]
    reply_to: Any
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Accepted:
    """Reply to SendText: the message is on disk (and, if ``state`` is SENT, acked).

    ``duplicate``: an earlier request with the same idempotency key made it.
    """

    message_id: str
    state: MessageState
    accepted_at: float
    request_id: str = ""
    duplicate: bool = False
    record: dict[str, Any] | None = field(default=None, repr=False)  # without its text


@dataclass(frozen=True, slots=True)
class GetMessage:
    """Answered with Ok(record dict | None) by the outbox."""

    message_id: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class OpenMedia:
    """Answered with Ok(dict | None) by the outbox: a media reference (its session, kind,
    MIME type, size, file name) and the key of that one file, so the web tier can
    decrypt it without ever holding the storage key or the media private key."""

    media_id: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class GetMessageByKey:
    """Answered with Ok(record dict | None) by the outbox: the message ``requester``
    (an API token's name) sent on ``session`` with ``idempotency_key``, while the key
    is kept (``delivery.idempotency_hours``). How a caller told UNCERTAIN finds out."""

    session: str
    idempotency_key: str
    requester: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ListMessages:
    """Answered with Ok(MessagePage) by the outbox; newest first."""

    session: str | None = None
    state: MessageState | None = None
    phone: str | None = None
    first: int = 20
    after: str | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ListEvents:
    """Answered with Ok(EventPage) by the outbox: events after the sequence number
    ``after_seq``, oldest first. ``sessions`` None: every session; a tuple: only those
    (a session-limited token's)."""

    after_seq: int = 0
    types: tuple[str, ...] | None = None
    sessions: tuple[str, ...] | None = None
    first: int = 100
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ChartMessageStates:
    """Answered with Ok(tuple of StateBucket) by the outbox: the last ``hours`` hours of
    message.status events counted by state (whatsAppMessageChart). ``sessions`` as in
    ListEvents; the hours end at the outbox's clock."""

    hours: int = 24
    sessions: tuple[str, ...] | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class EventPage:
    # Not in the repr: Thespian formats every message it transmits (``str`` of it, for a
    # debug line) and logs what it could not deliver; a page's repr cost about 15 % of the
    # outbox's CPU per 500-event page, and message.received events hold a reply's text.
    events: tuple[Event, ...] = field(repr=False)
    has_next_page: bool
    last_seq: int  # the newest sequence number written (a consumer's high-water mark)


@dataclass(frozen=True, slots=True)
class MessagePage:
    records: tuple[dict[str, Any], ...]
    cursors: tuple[str, ...]
    has_next_page: bool


@dataclass(frozen=True, slots=True)
class ListIncoming:
    """Web -> outbox: messages written to the linked accounts, oldest first from just
    after ``after``; answered with Ok(IncomingPage)."""

    session: str | None = None
    first: int = 20
    after: str | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class IncomingPage:
    records: tuple[dict[str, Any], ...] = field(repr=False)  # with their text: never logged
    cursors: tuple[str, ...]
    has_next_page: bool


@dataclass(frozen=True, slots=True)
class MarkRead:
    """Web -> outbox: send the read receipt of a received message (its gateway id).

    ``sessions``: the sessions the caller may use (None: every one); another session's
    message is answered as unknown. Answered with Ok(True) by the session once the
    receipt went out, or Failed (NOT_FOUND, NOT_CONNECTED, SEND_FAILED).
    """

    incoming_id: str
    sessions: tuple[str, ...] | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ReadIncoming:
    """Outbox -> session: send one read receipt; answer ``reply_to``."""

    chat: str
    sender_jid: str
    message_ids: tuple[str, ...]
    reply_to: Any
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Routed:
    """Supervisor -> outbox: a web request to answer directly to ``reply_to``."""

    request: Any
    reply_to: Any


@dataclass(frozen=True, slots=True)
class HealthReport:
    sessions: tuple[SessionStatus, ...] = ()
    limiter: dict[str, float] = field(default_factory=dict)
    queue_depth: int = 0
    queue_by_session: dict[str, int] = field(default_factory=dict)
    uncertain_total: int = 0  # messages resent (or failed) because a crash hid their fate
    # Messages SENT longer than delivery.unconfirmed_after_seconds with no delivery
    # receipt, by session (gateway/api/health.py warns, /metrics shows them).
    unconfirmed_by_session: dict[str, int] = field(default_factory=dict)
    worker_pids: dict[str, int] = field(default_factory=dict)  # "supervisor" / "outbox" -> pid
    # Counters for /metrics (actors/metrics.py), added along the same chain.
    session_metrics: dict[str, SessionMetrics] = field(default_factory=dict)
    outbox_metrics: OutboxMetrics | None = None
    # The hosts of a cluster: name, role, slots, sessions, alive (README: Deployment on
    # several hosts); one entry, this host, on a single host.
    hosts: tuple[dict[str, Any], ...] = ()
    # The simulated service's directory when the engine is the simulator, else "":
    # `wagate sim` run elsewhere than the gateway's data_dir finds the service by it.
    simulator_dir: str = ""


# ---- launcher -> supervisor --------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartGateway:
    config: Config
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    """Sent before ActorSystem.shutdown() so that no child is respawned meanwhile."""

    request_id: str = ""


@dataclass(frozen=True, slots=True)
class WhoAreYou:
    """Asks an actor for its pid and process group (the launcher sweeps that group)."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    pgid: int
    ppid: int  # for the supervisor: the Thespian Admin, which created it


@dataclass(frozen=True, slots=True)
class WatchLeader:
    """A member's launcher -> its LeaderWatch: report the convention leader's identity
    now (once it has registered) and whenever it registers again."""

    request_id: str = ""


@dataclass(frozen=True, slots=True)
class LeaderSeen:
    """LeaderWatch -> the member's launcher: the leader at ``address`` runs
    ``identity`` (``actors.protocol.describe``); ``problem``: why this member must not
    take part (another wagate), None when both run the same."""

    address: str
    identity: str
    problem: str | None = None
    request_id: str = ""


# ---- supervisor <-> children ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartSession:
    session: str
    config: Config
    connect: bool  # connect at once (resume or pair) rather than wait for a Connect
    # The connect attempt to go on with: a retired process's successor continues its
    # predecessor's attempts (RetireSession) instead of starting the count again.
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class RetireSession:
    """Session -> supervisor: replace my process, then connect again at ``attempt``.

    The real engine keeps a database pool open for every client it ever created
    (``transport.max_clients_per_process``); only the end of the process frees them.
    Sent when the next client would be one too many, with no client running.
    """

    session: str
    attempt: int = 1
    # Set when the process stops because it was fenced (FENCE_LEASE_LOST,
    # FENCE_STORE_WRITE): recorded as session.fenced, never as a crash.
    fenced: str = ""


@dataclass(frozen=True, slots=True)
class SessionCommand:
    """``connect`` | ``disconnect`` (keep credentials) | ``logout`` (unlink, delete)."""

    action: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """Session -> supervisor on every change; supervisor -> outbox as SessionLink."""

    status: SessionStatus


@dataclass(frozen=True, slots=True)
class SessionLink:
    """Tells the outbox where a session runs and whether it can send now."""

    session: str
    address: Any  # ActorAddress or None when the session has no process
    state: SessionState
    paired: bool
    phone: str | None = None  # the linked account: messages accepted now are bound to it
    epoch: int = 0  # the link epoch (actors.session.links): older messages are never sent
    last_error: ErrorInfo | None = None  # why a FAILED session gave up, for its refusals


@dataclass(frozen=True, slots=True)
class SessionForgotten:
    """Supervisor -> outbox: the session was forgotten; its queue ends, its link goes."""

    session: str


@dataclass(frozen=True, slots=True)
class StartWorker:
    """Supervisor -> outbox: the configuration, before anything else."""

    config: Config
    supervisor: Any = None
    links: tuple[SessionLink, ...] = ()  # known before any request can arrive


@dataclass(frozen=True, slots=True)
class Offer:
    """Supervisor -> outbox: a SendText that arrived at the supervisor (the web tier
    normally sends SendText to the outbox directly)."""

    send: SendText
    reply_to: Any


@dataclass(frozen=True, slots=True)
class CollectHealth:
    """A health request on its way: each actor adds its part and passes it on."""

    reply_to: Any
    report: HealthReport
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Deliver:
    """One message for a session to send now (travels inside a DeliverBatch); with
    ``typing`` > 0 the session first shows "typing..." to the recipient that long. The
    text is left out of the repr, as in ``SendText``."""

    message_id: str
    phone: str
    text: str = field(repr=False)
    typing: float = 0.0
    account: str | None = None  # sent only from this linked account (None: unchecked)
    media: MediaSpec | None = None  # a media message: ``text`` is its caption


@dataclass(frozen=True, slots=True)
class DeliverBatch:
    """Outbox -> session: several Delivers in one actor message (each actor message
    costs more CPU than a send to the simulator: batching is what makes a drain fast)."""

    items: tuple[Deliver, ...]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one Deliver ended (travels inside a DeliveryResults)."""

    message_id: str
    ok: bool
    wa_message_id: str = ""
    timestamp: float = 0.0
    reason: str = ""  # stable token, e.g. NOT_CONNECTED, REJECTED
    error: str = ""
    permanent: bool = False
    # Nobody knows whether it reached WhatsApp (an ack that never came, a transport
    # that failed half-way): the outbox flags it and applies delivery.on_uncertain.
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryResults:
    """Session -> outbox: the results that were ready together, in one message."""

    results: tuple[DeliveryResult, ...]


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """Session -> outbox: the recipient's device confirmed (delivered / read).

    It counts only for a message of ``session`` (the session that received it) sent to
    ``phone`` (who sent it, a LID already mapped to its number; "" when it could not be).
    """

    wa_message_id: str
    kind: str
    session: str = ""
    phone: str = ""
    at: float = 0.0  # the receipt's own time (unix); 0: unknown, the outbox uses its own
    # The session process that keeps it until the outbox committed it (``origin``, 0:
    # nobody) and its number there (actors/session/unacked.py).
    origin: int = 0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class IncomingReceived:
    """Session -> outbox: someone wrote to the session's account (the transport's
    ``IncomingMessage``, field for field, plus the session)."""

    session: str
    message_id: str
    chat: str
    sender_jid: str
    sender_phone: str = ""
    sender_lid: str = ""
    push_name: str = ""
    is_group: bool = False
    kind: str = "text"
    text: str = field(default="", repr=False)  # personal data: never in a log line
    quoted_id: str = ""
    at: float = 0.0
    meta: tuple[tuple[str, str], ...] = ()
    truncated: bool = False  # text was cut to messages.max_incoming_text_chars
    media: MediaSpec | None = None  # a media message whose file the session stored
    origin: int = 0  # as in DeliveryReceipt: who keeps it until it is committed
    seq: int = 0


@dataclass(frozen=True, slots=True)
class OutboxReady:
    """Outbox -> supervisor, once its stores are open (its StartWorker done): only then
    does the supervisor pass on the received messages and receipts it keeps. Sent to a
    process whose start then fails, they would come back only in its ``HandedBack``,
    which can be lost with the exiting process."""


@dataclass(frozen=True, slots=True)
class ReceivedCommitted:
    """Outbox -> session, once per tick at most: the received messages and receipts of
    the session process ``origin`` whose writes are committed (or needed none), so it
    keeps them no longer (actors/session/unacked.py)."""

    origin: int
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ResendReceived:
    """Supervisor -> session, when an outbox process said ``OutboxReady``: send it
    every received message and receipt not yet acknowledged, oldest first."""

    outbox: Any  # ActorAddress of the outbox process that is ready


@dataclass(frozen=True, slots=True)
class ReceivedUnkept:
    """Session -> supervisor, at most once per resend period: ``count`` more received
    messages or receipts were kept no longer at delivery.max_unacknowledged_received
    (for /metrics)."""

    session: str
    count: int


@dataclass(frozen=True, slots=True)
class StoreWriteFenced:
    """Session -> supervisor: a process of ``session`` was refused a write of its
    shared credential store by the lease fence (it lost its lease, or a later epoch
    wrote the store; actors.leases.fencing), for /metrics. Counted whichever process
    sends it: the refused one is, by then, usually no longer the session's child."""

    session: str


@dataclass(frozen=True, slots=True)
class HandedBack:
    """Outbox -> supervisor, as the outbox stops: received messages and receipts it
    could not write (a full disk, a failed start), for its next process."""

    items: tuple[IncomingReceived | DeliveryReceipt, ...]


# ---- audit log ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry for the audit log's single writer; fire and forget, never answered.

    ``fields`` must be JSON-able; a ``recipient`` (or ``phone``) is raw digits, rendered
    per ``audit.recipients`` by the writer; message text is never passed (fields named
    ``text``, ``message`` or ``body`` are dropped).
    """

    event: str
    fields: dict[str, Any]
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class AuditBatch:
    """AuditEvents from one web process, in their order, in one message: a send's audit
    line then costs its share of one ``tell``, not one each (gateway/web/audit_queue)."""

    events: tuple[AuditEvent, ...]


@dataclass(frozen=True, slots=True)
class RecordAudit:
    """An AuditEvent whose writing is confirmed with ``Ok({"seq", "hash"})`` (the CLI's
    admin actions); sent to the supervisor, which routes it to the audit actor."""

    entry: AuditEvent
    request_id: str = ""


# ---- cluster: supervisor (leader) <-> host agents (members) --------------------------


@dataclass(frozen=True, slots=True)
class StartAgent:
    """Supervisor -> the host agent it placed on a member: who it serves, and the
    window after which a silent leader counts as gone (the agent then stops the
    sessions it hosts, so a partitioned member never keeps a second copy connected)."""

    host: str
    fence_seconds: float
    heartbeat_seconds: float


@dataclass(frozen=True, slots=True)
class HostBeat:
    """Supervisor -> host agent, every ``cluster.heartbeat_seconds``: the sessions the
    leader has placed on that host now (the ones to stop when the leader goes quiet)."""

    seq: int
    sessions: tuple[tuple[str, Any], ...] = ()  # (session id, ActorAddress)


@dataclass(frozen=True, slots=True)
class HostBeatAck:
    host: str
    seq: int


@dataclass(frozen=True, slots=True)
class SessionsFenced:
    """Host agent -> supervisor, as the fence stops the sessions the leader placed on
    its host: these exits are no crashes, so they must not spend the restart budget
    (the supervisor may hear of the exits before or after this, in any order)."""

    host: str
    sessions: tuple[tuple[str, Any], ...]  # (session id, ActorAddress), as in HostBeat


# Why a session process was fenced: the reason ``session.fenced`` records.
FENCE_LEADER_SILENT = "leader_silent"  # a member's agent: the leader went quiet
FENCE_LEADER_LOST = "leader_lost"  # its leader lost the leadership lock and stepped down
FENCE_NO_LEASE = "no_lease"  # a host's lease check: the process holds no current lease
FENCE_LEASE_LOST = "lease_lost"  # the process could not renew its lease in time
FENCE_STORE_WRITE = "store_write_refused"  # a shared store write was refused (epoch)


@dataclass(frozen=True, slots=True)
class LeaseFenced:
    """Host agent or the leader's lease agent -> supervisor, just before it signals
    local session processes that hold no current lease (SIGTERM, SIGKILL later):
    fenced stops, not crashes. By pid, not address: the agent knows its host's
    processes from their lease marks; the supervisor matches each pid to the process
    it last heard from (the exit may arrive before or after this)."""

    host: str
    processes: tuple[tuple[str, int], ...]  # (session id, pid)
    reason: str = FENCE_NO_LEASE
