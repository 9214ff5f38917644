"""One TOML file -> one frozen, typed configuration object.

Every default of the product specification is a key here, so tests and operators
can change any delay or limit without touching code. Unknown keys and bad values
fail at start with a message naming the key: a typo must never silently fall back
to a default (a mistyped rate limit is how an account gets banned).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.core.errors import WagateError
from gateway.core.networks import is_loopback_host, parse_networks
from gateway.core.origins import check_allowed_hosts, check_allowed_origins
from gateway.core.ranges import Range
from gateway.core.urls import loggable_url

DEFAULT_CONFIG_PATH = Path("configs/gateway.toml")


class ConfigError(WagateError, ValueError):
    """A configuration problem, worded for the operator (names the key and the fix)."""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2  # gunicorn worker processes
    threads: int = 8  # threads per worker
    dev: bool = False  # Flask's own server and console logs instead of gunicorn
    # Host names the API answers to besides localhost and IP addresses (DNS rebinding):
    # checked on a loopback bind, and on any bind once the list is not empty.
    allowed_hosts: tuple[str, ...] = ()
    # Origins of other web pages that may call the API from a browser (CORS); the
    # gateway's own pages (the dashboard, the explorer) need no entry.
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ActorsConfig:
    admin_port: int = 19500  # Thespian admin port; loopback only in single-host mode
    ask_timeout_seconds: float = 5.0  # how long the web tier waits for an actor reply
    start_timeout_seconds: float = 20.0  # how long `wagate serve` waits for the tree


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: str = "./data"
    # The sessions' stored credentials; "" = data_dir/sessions. Several hosts of a
    # cluster point this at one shared directory, so a session moved to another host
    # resumes from the same (encrypted) credentials without a new QR code.
    sessions_dir: str = ""
    # The media files (encrypted) and the media key pair; "" = data_dir/media. The
    # leaders of a cluster point this at one shared directory, so a standby that takes
    # over sends and serves the files the old leader accepted.
    media_dir: str = ""
    # Below this much free space on data_dir's file system, sends are refused
    # (UNAVAILABLE, reason DISK_FULL) and health warns: the rest is kept for the records
    # of messages already accepted, their state changes, events and the audit log.
    min_free_mb: int = 100


@dataclass(frozen=True, slots=True)
class TransportConfig:
    engine: Literal["neonize", "simulator"] = "neonize"
    # Outbound proxy for the real engine (socks5://... or http://...). It may hold a
    # password: never in a repr (logs), never sent to another host (CREDENTIAL_KEYS).
    proxy: str = field(default="", repr=False)
    # Where the real engine keeps each session's linked device: "" = one SQLite file per
    # session (data_dir/sessions/<session>/neonize.db); a postgres:// or postgresql://
    # DSN is used as is, with "{session}" replaced by the session id (one database per
    # session: the engine resumes the first device it finds). A DSN may hold a password.
    session_store: str = field(default="", repr=False)
    # The real engine appends <bot biz_bot="1"/> to every message to a person unless told
    # not to: recipients then see an "AI" label under it. Off unless the operator wants
    # the account to declare itself automated (README: How wagate keeps an account
    # looking like a person).
    mark_as_bot: bool = False
    # One send into the real engine that has not returned by then stops its client (the
    # session reconnects) and counts as AMBIGUOUS: whatsmeow serialises a client's sends
    # and can wait without limit for a reconnect to retry one, so a stuck send would
    # hold up every later one (docs/engine-behaviour.md).
    send_deadline_seconds: float = 60.0
    # How long to wait for what the real engine sends right after an end that does not
    # say why: after a pairing status "timeout", "err-unexpected-state" or "error", the
    # event that caused it (a dropped socket, a logout or ban, the pairing error's text);
    # after its event pump died on a ban it could not encode, its log line with the
    # ban's end. Without it by this deadline, the bare status is reported.
    engine_detail_seconds: float = 2.0
    # The name the phone lists this linked device under (Linked devices); the engine's
    # own default is "Neonize". Shown at pairing: changing it later renames nothing.
    device_name: str = "wagate"
    # The real engine opens a store container (a database pool) for every client it
    # creates and never closes it; a session makes a client per connect attempt,
    # watchdog restart or event-pump death. After this many clients the session process
    # is retired and started afresh (its connection resumes, nothing is lost).
    max_clients_per_process: int = 20


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    poll_interval_seconds: float = 0.05  # how often a simulated connection looks at the server
    # How often a connection reads the whole server state when no bell rang (a safety
    # net: every write it must notice rings its session's bell; actors.transport.simulator).
    idle_check_seconds: float = 5.0
    send_delay_seconds: float = 0.0  # artificial server latency per message
    # The simulated service's "server side"; "" = data_dir/simulator. The hosts of a
    # cluster share one, as real hosts share WhatsApp's servers.
    server_dir: str = ""


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    max_sessions: int = 5  # concurrent WhatsApp connections (one process each)


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    attempts: int = 5
    delay_seconds: float = 30.0
    # The wait before the second attempt (the first is immediate); each later wait
    # doubles, up to delay_seconds: attempts at 0, 5, 15, 35 and 65 s. Most outages are
    # short and a one-time code ages while it waits; a long one is still not hammered.
    # Set it to delay_seconds for a steady 30 s pace.
    first_delay_seconds: float = 5.0
    # One connect attempt that hangs longer has failed. Longer than the real engine's
    # worst dial (60 s, which its stop cannot interrupt), so an attempt never starts
    # while the previous one is still being torn down.
    connect_timeout_seconds: float = 90.0


@dataclass(frozen=True, slots=True)
class QrConfig:
    first_seconds: float = 60.0
    next_seconds: float = 20.0
    codes: int = 6  # 60 + 5 x 20 = 160 s pairing window, as WhatsApp does


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    per_number_per_minute: int = 10
    per_number_per_hour: int = 100
    global_per_day: int = 1000


@dataclass(frozen=True, slots=True)
class MessagesConfig:
    max_length: int = 4096  # Unicode code points
    send_timeout_seconds: float = 20.0  # wait for the server's ack before answering SEND_FAILED
    test_message: str = "wagate connection test"
    retention_hours: float = 168.0  # finished message records are pruned after this
    incoming_retention_hours: float = 168.0  # received messages are pruned after this
    # A received text longer than this (Unicode code points) is cut to it and flagged
    # truncated: whoever writes to the account decides its size, the gateway's memory
    # and database do not have to follow.
    max_incoming_text_chars: int = 65536
    # A received text that is one of these (case and surrounding spaces aside) is
    # flagged optOut; () = off. A flag for the application, never a filter.
    opt_out_keywords: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """The event log (actors/outbox/events.py): how long it keeps what happened."""

    retention_days: float = 7.0  # events older than this are pruned
    # Events deleted per transaction when pruning: one prune never holds the store's
    # write lock (and so the outbox) for long; batches repeat up to prune_max_batches.
    prune_batch: int = 1000
    prune_max_batches: int = 100  # per prune round (every 10 min): bounds one round's work


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    on_uncertain: Literal["resend", "fail"] = "resend"  # a message caught in SENDING by a crash
    max_attempts: int = 5  # transient send failures before a message is FAILED
    retry_base_seconds: float = 2.0  # first retry delay; doubles per attempt, with jitter
    retry_max_seconds: float = 300.0  # cap of the retry delay
    max_queue_per_session: int = 10000  # pending messages; beyond it RATE_LIMITED (QUEUE_FULL)
    idempotency_hours: float = 24.0  # an idempotency key returns its original message this long
    keep_text: bool = True  # false: a finished message keeps only the SHA-256 of its text
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"  # FULL also survives a power cut
    tick_seconds: float = 1.0  # how often expiry, retries and pruning are looked at
    # Look a recipient up before accepting a send: a number known not to be on
    # WhatsApp is refused with NOT_ON_WHATSAPP; an unknown answer never blocks.
    check_recipient: bool = True
    # WhatsApp answered a send's recipient lookup with 429 rate-overlimit: the session
    # sends nothing for this long (its messages wait, no attempt is counted), doubled
    # for every 429 right after a pause, up to the max (never below the pause).
    rate_overlimit_pause_seconds: float = 60.0
    rate_overlimit_max_pause_seconds: float = 900.0
    # A message SENT this long without a delivery receipt is flagged (the API's
    # deliveryUnconfirmed, /metrics, a health warning): WhatsApp's ack only says the
    # server took it, and the engine skips recipient devices it cannot encrypt for.
    unconfirmed_after_seconds: float = 600.0
    # A session process keeps each received message and receipt until the outbox says
    # it is committed (actors/session/unacked.py), sending it again this often while
    # it is not, and at most this many: beyond it the oldest is kept no longer
    # (logged, wagate_received_unkept_total).
    received_resend_seconds: float = 30.0
    max_unacknowledged_received: int = 10000


@dataclass(frozen=True, slots=True)
class NumbersConfig:
    """Number lookups (whatsAppCheckNumbers and the pre-send check). WhatsApp watches
    these usync queries for abuse, so they are cached and rate-limited."""

    max_per_call: int = 50  # numbers per whatsAppCheckNumbers call
    # Numbers join WhatsApp far more often than they leave: a "no" goes stale sooner.
    positive_ttl_hours: float = 168.0
    negative_ttl_hours: float = 24.0
    per_session_per_minute: int = 60  # numbers looked up (cache misses) per session
    per_session_per_day: int = 1000
    timeout_seconds: float = 5.0  # a lookup slower than this is "unknown"


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """How a session spaces its sends so the linked account does not send like a machine.

    The defaults are for the real engine (evidence in docs/engine-defaults.md); with
    ``transport.engine = "simulator"`` every key the file leaves out is 0 (off).
    """

    min_interval_seconds: float = 1.0  # at least this long between two sends of one session
    jitter_seconds: float = 0.5  # plus a random 0 to jitter_seconds on every interval
    typing_seconds: float = 0.0  # "typing..." shown to the recipient this long before a send
    warmup_days: float = 3.0  # a newly linked device is in warm-up this long; 0 = no warm-up
    warmup_daily_cap: int = 50  # sends per 24 h of a session while it is in warm-up


# Pacing of the simulator (no account to protect, and tests measure their own pacing):
# used for every pacing key a config with engine "simulator" leaves out.
SIMULATOR_PACING = {"min_interval_seconds": 0.0, "jitter_seconds": 0.0, "typing_seconds": 0.0,
                    "warmup_days": 0.0}


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    restart_backoff_seconds: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
    restart_budget: int = 5  # crashes allowed within the window before a session is FAILED
    restart_window_seconds: float = 300.0
    # A child on the supervisor's host that leaves a question unanswered this long is
    # killed and restarted as crashed (actors/supervisor/watchdog.py).
    hang_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"
    log_message_text: bool = False  # message bodies are personal data: off by default
    # Successful reads (GraphQL queries, dashboard files) log their request line at DEBUG,
    # not INFO: an open dashboard tab polls several queries every few seconds.
    reads_at_debug: bool = False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # false is the demo (`wagate serve --demo`): refused at load unless the engine is the
    # simulator, http.host is loopback and cluster.role is "single"
    required: bool = True
    tokens_file: str = ""  # hashed API tokens; "" = data_dir/tokens.toml
    allowed_networks: tuple[str, ...] = ()  # CIDRs that may reach the gateway; () = any
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed


@dataclass(frozen=True, slots=True)
class EncryptionConfig:
    # The storage key of the session stores (README: Encryption at rest): the variable
    # first (an empty value counts as unset), then the file; with neither, only the
    # demo (auth.required = false) runs, with the stores in clear text.
    key_env: str = "WAGATE_STORE_KEY"  # environment variable holding the storage key
    key_file: str = ""  # or a file holding it; never inside data_dir
    checkpoint_seconds: float = 30.0  # encrypted checkpoint of a changed session store
    work_dir: str = ""  # decrypted working copies; "" = /dev/shm if present, else temp dir
    generations_file: str = ""  # the stores' generation ledger, outside data_dir; "" = none


@dataclass(frozen=True, slots=True)
class AuditConfig:
    recipients: Literal["full", "masked", "hashed"] = "masked"  # how numbers are recorded
    max_file_mb: float = 64.0  # the log rolls over to a new file beyond this size
    # files kept: at rollover the oldest beyond this are removed (on record in the chain),
    # so the audit directory holds at most about max_files * max_file_mb
    max_files: int = 16
    # refused requests of one kind (network, code, route, token) within this window are
    # written as one entry with a count; the window doubles while they go on (up to 64x)
    burst_seconds: float = 1.0
    # a web worker gathers the API's entries this long before handing them to the writer
    # in one message (0: each at once); a worker killed meanwhile loses what it gathered
    batch_seconds: float = 0.1


@dataclass(frozen=True, slots=True)
class GraphqlConfig:
    max_depth: int = 8  # deepest selection nesting a query may have
    max_cost: int = 500  # summed field cost of one operation
    max_batch: int = 10  # operations in one batched (JSON array) request
    max_body_bytes: int = 262144  # request body limit (a 4096-character message is < 20 KB)
    introspection: bool = True  # off in production: the schema is documented in the README
    explorer: bool = True  # GraphiQL at GET /graphql; off in production


@dataclass(frozen=True, slots=True)
class WebhookEndpointConfig:
    """One ``[[webhooks.endpoints]]`` table: an endpoint the operator declares in the file.

    Its signing secret is never in the file (a config file is copied, shown and handed to
    other processes): ``secret_env`` names the environment variable holding the
    ``whsec_...`` text."""

    url: str = ""
    secret_env: str = ""
    events: tuple[str, ...] = ()  # event types delivered; () = every type
    sessions: tuple[str, ...] = ()  # sessions whose events are delivered; () = every session
    description: str = ""


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """Outgoing webhooks (README: Webhooks)."""

    # hosts (exact names) or CIDRs that may be reached over plain http and may be
    # private, loopback or link-local addresses; everything else must be public https
    allow_insecure: tuple[str, ...] = ()
    # multiplies every wait of the Standard Webhooks retry schedule (tests shrink it)
    retry_scale: float = 1.0
    jitter_fraction: float = 0.1  # each wait is drawn from +- this fraction of itself
    connect_timeout_seconds: float = 15.0  # to open the connection to an endpoint
    timeout_seconds: float = 15.0  # for the whole request, from connect to the last byte
    max_response_bytes: int = 4096  # read at most this much of an endpoint's answer
    max_retry_after_seconds: float = 86400.0  # a longer Retry-After is cut to this
    rotation_overlap_seconds: float = 86400.0  # old and new secret both sign this long
    batch_events: int = 100  # events read from the log per endpoint and pass
    concurrency: int = 8  # endpoints delivered side by side (one request each at a time)
    endpoints: tuple[WebhookEndpointConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Media messages (README: Media messages). The per-kind limits default to the
    sizes WhatsApp documents for its Business Platform (Cloud API, "Supported media
    types"): a bigger file would be refused by WhatsApp after we accepted it."""

    max_image_mb: float = 5.0  # WhatsApp: images (JPEG, PNG) up to 5 MB
    max_video_mb: float = 16.0  # WhatsApp: video (MP4, 3GPP) up to 16 MB
    max_audio_mb: float = 16.0  # WhatsApp: audio (AAC, MP4, MPEG, AMR, OGG) up to 16 MB
    max_voice_mb: float = 16.0  # WhatsApp: a voice note is OGG/Opus audio: 16 MB
    max_document_mb: float = 100.0  # WhatsApp: documents up to 100 MB
    max_sticker_mb: float = 0.5  # WhatsApp: animated WebP stickers up to 500 KB (static 100 KB)
    # the whole media store (data_dir/media): beyond it a send is refused (QUEUE_FULL)
    max_total_mb: float = 10240.0
    # a file is deleted this long after its last message reached a final state
    retention_days: float = 7.0
    # `url` sends: hosts or CIDRs that may be plain http and private/loopback (as webhooks)
    allow_insecure: tuple[str, ...] = ()
    fetch_timeout_seconds: float = 30.0  # a whole `url` download, connect to last byte


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Several hosts in one Thespian convention (README: Deployment on several hosts)."""

    # "single": one host, every actor-system socket on loopback (the default);
    # "leader": runs the supervisor and places sessions on itself and on members;
    # "member": joins the leader's convention, hosts sessions, serves the same API.
    role: Literal["single", "leader", "member"] = "single"
    # The leader's actor-system address, "host:port" (its actors.admin_port). Members
    # need it; a leader may list itself. Several entries: Thespian's leader failover.
    leaders: tuple[str, ...] = ()
    advertise_address: str = ""  # this host's IP the others reach; every actor socket binds it
    host_name: str = ""  # this host's name in placement; "" = the machine's hostname
    sessions: int = 5  # session slots on this host (failover may exceed them, never max_sessions)
    # CIDRs whose connections the actor system accepts; required outside "single":
    # Thespian speaks pickle, so anyone who reaches its ports can run code.
    allow_networks: tuple[str, ...] = ()
    heartbeat_seconds: float = 5.0  # the leader checks every member this often
    heartbeat_misses: int = 3  # unanswered heartbeats before a member's sessions move
    # Thespian's own re-registration period of members (its convention timer, ~7 min by
    # default). Thespian delays repeated sends to one host by up to 45 s, so a shorter
    # period makes it drop live members; our heartbeats notice a dead one first anyway.
    reregister_seconds: float = 60.0
    # Session ownership leases in PostgreSQL (actors/leases; issue 22): a grant lasts
    # lease_seconds by the database's clock, its holder renews it every
    # lease_renew_seconds, and nobody else may take it until lease_margin_seconds after
    # it expired. lease_seconds > lease_renew_seconds + lease_margin_seconds, so a holder
    # has one whole renewal to spare before a rival may start. Not wired into the
    # session processes yet (README: Deployment on several hosts).
    lease_seconds: float = 10.0
    lease_renew_seconds: float = 3.0
    lease_margin_seconds: float = 2.0
    # The sent journal (actors/leases/journal.py): with database_url set, every send
    # WhatsApp took is recorded there until the outbox no longer needs it; rows older
    # than this are deleted as the session writes new ones. It must outlast the longest
    # a message can stay in flight (a send and its result), hours at most.
    journal_retention_hours: float = 24.0
    # The PostgreSQL database of the leases, "postgresql://user:password@host/db" (it
    # holds a credential: never logged, never sent to another host). "" = no leases
    # (the heartbeat fence alone). Only with role "leader" or "member".
    database_url: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    qr: QrConfig = field(default_factory=QrConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    messages: MessagesConfig = field(default_factory=MessagesConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    numbers: NumbersConfig = field(default_factory=NumbersConfig)
    pacing: PacingConfig = field(default_factory=PacingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    graphql: GraphqlConfig = field(default_factory=GraphqlConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    media: MediaConfig = field(default_factory=MediaConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir).expanduser().resolve()

    @property
    def sessions_path(self) -> Path:
        """Where the sessions' credential stores live (``storage.sessions_dir``)."""
        if self.storage.sessions_dir:
            return Path(self.storage.sessions_dir).expanduser().resolve()
        return self.data_path / "sessions"

    @property
    def media_path(self) -> Path:
        """Where the media files and the media key pair live (``storage.media_dir``)."""
        if self.storage.media_dir:
            return Path(self.storage.media_dir).expanduser().resolve()
        return self.data_path / "media"

    @property
    def host_label(self) -> str:
        """This host's name as a file name (``cluster.host_name``, else the machine's
        name): what marks its own temp files in a directory several hosts share."""
        name = self.cluster.host_name or socket.gethostname()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        return safe[:64] or "host"

    @property
    def simulator_path(self) -> Path:
        """The simulated service's server side (``simulator.server_dir``)."""
        if self.simulator.server_dir:
            return Path(self.simulator.server_dir).expanduser().resolve()
        return self.data_path / "simulator"


_PORT = Range(1, 65535)
_SECONDS = Range(0, 3600, above=True)  # a wait or a period: not 0 (a busy loop), at most 1 h
_DAY = Range(0, 86400, above=True)
_HOURS = Range(0, 87600, above=True)  # up to ten years
_COUNT = Range(1, 1_000_000_000)
_MEDIA_MB = Range(0, 2048, above=True)  # WhatsApp's own largest file is 2 GB
# The allowed range of every number in the configuration, by dotted key (the items of
# a list of numbers share their key's range). A key missing here is refused at load:
# every number must have a documented range (configs/gateway.example.toml prints it).
RANGES: dict[str, Range] = {
    "http.port": _PORT, "http.workers": Range(1, 64), "http.threads": Range(1, 1000),
    "actors.admin_port": _PORT, "actors.ask_timeout_seconds": _SECONDS,
    "actors.start_timeout_seconds": _SECONDS,
    "transport.engine_detail_seconds": Range(0, 60, above=True),
    "simulator.poll_interval_seconds": Range(0, 60, above=True),
    "simulator.idle_check_seconds": _SECONDS,
    "simulator.send_delay_seconds": Range(0, 3600),
    "sessions.max_sessions": Range(1, 1000), "storage.min_free_mb": Range(1, 1_048_576),
    "reconnect.attempts": _COUNT, "reconnect.delay_seconds": _DAY,
    "reconnect.first_delay_seconds": _DAY,
    "reconnect.connect_timeout_seconds": _SECONDS,
    "qr.first_seconds": _SECONDS, "qr.next_seconds": _SECONDS, "qr.codes": Range(1, 1000),
    "limits.per_number_per_minute": _COUNT, "limits.per_number_per_hour": _COUNT,
    "limits.global_per_day": _COUNT,
    "messages.max_length": Range(1, 65536), "messages.send_timeout_seconds": _SECONDS,
    "messages.retention_hours": _HOURS, "messages.incoming_retention_hours": _HOURS,
    "messages.max_incoming_text_chars": Range(1, 1_000_000),
    "events.retention_days": Range(0, 3650, above=True), "events.prune_batch": Range(1, 100_000),
    "events.prune_max_batches": Range(1, 100_000),
    "delivery.max_attempts": Range(1, 1000), "delivery.retry_base_seconds": _DAY,
    "delivery.retry_max_seconds": _DAY, "delivery.max_queue_per_session": Range(1, 100_000_000),
    "delivery.idempotency_hours": _HOURS, "delivery.tick_seconds": _SECONDS,
    "delivery.rate_overlimit_pause_seconds": _DAY,
    "delivery.rate_overlimit_max_pause_seconds": _DAY,
    "transport.send_deadline_seconds": _SECONDS,
    "delivery.unconfirmed_after_seconds": Range(0, 604800, above=True),
    "delivery.received_resend_seconds": _SECONDS,
    "delivery.max_unacknowledged_received": Range(1, 1_000_000),
    "transport.max_clients_per_process": Range(1, 10000),
    "supervisor.restart_backoff_seconds": Range(0, 3600),
    "supervisor.restart_budget": Range(1, 1000),
    "supervisor.restart_window_seconds": Range(0, 604800, above=True),
    "supervisor.hang_seconds": Range(1, 86400),
    "encryption.checkpoint_seconds": _DAY,
    "audit.max_file_mb": Range(0.01, 4096), "audit.max_files": Range(2, 100_000),
    "audit.burst_seconds": Range(0.05, 3600), "audit.batch_seconds": Range(0, 5),
    # max_depth stays well below the bracket nesting every document is held to
    # (gateway.api.limits.MAX_NESTING), so a query at the limit still parses.
    "graphql.max_depth": Range(1, 32), "graphql.max_cost": Range(1, 100_000),
    "graphql.max_batch": Range(1, 1000), "graphql.max_body_bytes": Range(1024, 67_108_864),
    "cluster.sessions": Range(0, 1000), "cluster.heartbeat_seconds": _SECONDS,
    "cluster.heartbeat_misses": Range(1, 1000), "cluster.reregister_seconds": _DAY,
    "cluster.lease_seconds": _SECONDS, "cluster.lease_renew_seconds": Range(0, 600, above=True),
    "cluster.lease_margin_seconds": Range(0, 600, above=True),
    "cluster.journal_retention_hours": Range(0, 8760, above=True),
    "pacing.min_interval_seconds": Range(0, 3600), "pacing.jitter_seconds": Range(0, 3600),
    "pacing.typing_seconds": Range(0, 30), "pacing.warmup_days": Range(0, 365),
    "pacing.warmup_daily_cap": Range(1, 1_000_000),
    "numbers.max_per_call": Range(1, 1000), "numbers.positive_ttl_hours": _HOURS,
    "numbers.negative_ttl_hours": _HOURS, "numbers.per_session_per_minute": _COUNT,
    "numbers.per_session_per_day": _COUNT, "numbers.timeout_seconds": _SECONDS,
    "webhooks.retry_scale": Range(0, 100, above=True),
    "webhooks.jitter_fraction": Range(0, 0.5),
    "webhooks.connect_timeout_seconds": Range(0, 300, above=True),
    "webhooks.timeout_seconds": Range(0, 600, above=True),
    "webhooks.max_response_bytes": Range(0, 1_048_576),
    "webhooks.max_retry_after_seconds": _DAY,
    "webhooks.rotation_overlap_seconds": Range(0, 604800),
    "webhooks.batch_events": Range(1, 10_000), "webhooks.concurrency": Range(1, 256),
    "media.max_image_mb": _MEDIA_MB, "media.max_video_mb": _MEDIA_MB,
    "media.max_audio_mb": _MEDIA_MB, "media.max_voice_mb": _MEDIA_MB,
    "media.max_document_mb": _MEDIA_MB, "media.max_sticker_mb": _MEDIA_MB,
    "media.max_total_mb": Range(1, 16_777_216), "media.retention_days": Range(0, 3650, above=True),
    "media.fetch_timeout_seconds": Range(0, 600, above=True),
}


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (or use the embedded defaults when it is None) and apply
    ``overrides`` given as dotted keys (``{"http.port": 9000}``), as the CLI does."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist; pass --config PATH "
                              "or copy configs/gateway.example.toml") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return _checked(_build(Config, _engine_defaults(raw), ""))


def _engine_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Defaults that depend on the engine: the simulator is not paced unless the file
    says so (pacing protects a real account; a demo or a test should not wait)."""
    transport, pacing = raw.get("transport", {}), raw.get("pacing", {})
    if not isinstance(transport, dict) or not isinstance(pacing, dict):
        return raw  # _build names the section that is not a table
    # TransportConfig().engine, not TransportConfig.engine: on a slotted dataclass the
    # class attribute is the slot's descriptor, not the default (found by mypy).
    if transport.get("engine", TransportConfig().engine) == "simulator":
        raw = {**raw, "pacing": {**SIMULATOR_PACING, **pacing}}
    return raw


def _checked(config: Config) -> Config:
    """Rules that involve more than one key."""
    if config.messages.retention_hours < config.delivery.idempotency_hours:
        raise ConfigError(
            f"messages.retention_hours ({config.messages.retention_hours:g}) must be at least "
            f"delivery.idempotency_hours ({config.delivery.idempotency_hours:g}): a key can "
            "only find its message while the record is kept")
    _check_test_message(config.messages)
    _check_networks(config)
    _check_browser_access(config.http)
    _check_cluster(config.cluster)
    _check_media_dir(config)
    _check_without_tokens(config)
    _check_pacing(config)
    _check_device_name(config.transport.device_name)
    _check_webhooks(config.webhooks)
    _check_allow_insecure(config.media.allow_insecure, "media.allow_insecure")
    return config


def _check_media_dir(config: Config) -> None:
    """``storage.media_dir``: an absolute directory of its own. Relative, it would
    move with the working directory; data_dir itself (or a directory holding it), the
    sessions' directory or one inside it would mix the media files with files that
    the media store's pruning must never see or that other hosts must never share."""
    text = config.storage.media_dir
    if not text:
        return
    where = f"storage.media_dir {text!r}"
    if "\0" in text or not Path(text).expanduser().is_absolute():
        raise ConfigError(f"{where} must be an absolute path (or \"\" for data_dir/media)")
    media, data, sessions = config.media_path, config.data_path, config.sessions_path
    if media == data or media in data.parents:
        raise ConfigError(f"{where} must not be storage.data_dir or hold it: give the "
                          "media files a directory of their own")
    if media == sessions or sessions in media.parents or media in sessions.parents:
        raise ConfigError(f"{where} must not be, hold or be inside the sessions' "
                          "directory (storage.sessions_dir)")


def _check_webhooks(webhooks: WebhooksConfig) -> None:
    """Each ``[[webhooks.endpoints]]`` names a url and where its secret is;
    ``allow_insecure`` holds names or networks (whether a url is acceptable is
    decided at delivery, on the address actually connected to)."""
    _check_allow_insecure(webhooks.allow_insecure, "webhooks.allow_insecure")
    for i, endpoint in enumerate(webhooks.endpoints):
        where = f"webhooks.endpoints[{i}]"
        if not endpoint.url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.url ({loggable_url(endpoint.url)!r}) must be an "
                              "https:// url (http:// only for hosts in "
                              "webhooks.allow_insecure)")
        if not endpoint.secret_env:
            raise ConfigError(
                f"{where}.secret_env is empty: name the environment variable that holds the "
                "endpoint's whsec_... signing secret (the secret itself never goes in the file)")


def _check_allow_insecure(entries: tuple[str, ...], where: str) -> None:
    """Host names, addresses or CIDRs (webhooks and media urls share the rule)."""
    for entry in entries:
        if not entry or entry != entry.strip() or ("/" in entry and not _is_network(entry)):
            raise ConfigError(
                f"{where} entry {entry!r} must be a host name, an IP address "
                "or a network in CIDR form such as 127.0.0.0/8")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _check_device_name(name: str) -> None:
    """The phone shows it in a list: printable, 1 to 50 characters."""
    if not 1 <= len(name) <= 50 or not name.isprintable() or name != name.strip():
        raise ConfigError(
            f"transport.device_name ({name!r}) must be 1 to 50 printable characters without "
            "leading or trailing spaces: it is what the phone's Linked devices list shows")


def _check_without_tokens(config: Config) -> None:
    """``auth.required = false`` is the demo and nothing else: the simulator, one host,
    a loopback bind. Checked here, where every config passes (a file, the command line,
    the web tier's copy), so no file can run the real engine, or a reachable API,
    without tokens (and, the storage key being optional only then, unencrypted)."""
    if config.auth.required:
        return
    if config.transport.engine != "simulator":
        raise ConfigError(
            f"auth.required = false is only for the demo, which runs the simulator, not "
            f"transport.engine = {config.transport.engine!r}: for real WhatsApp keep "
            "auth.required = true and create an API token (`wagate token create`) and a "
            "storage key (`wagate keys create`); to try the gateway, run `wagate serve --demo`")
    if not is_loopback_host(config.http.host):
        raise ConfigError(
            f"auth.required = false (--demo) runs without API tokens, so it binds only to a "
            f"loopback address, not http.host = {config.http.host!r}; drop --host, or "
            "create tokens (`wagate token create`) and run without --demo")
    if config.cluster.role != "single":
        raise ConfigError(
            f"auth.required = false (--demo) runs on one host only, not with cluster.role = "
            f"{config.cluster.role!r}; a cluster needs API tokens (`wagate token create`)")


def _check_test_message(messages: MessagesConfig) -> None:
    """The connection test sends ``test_message`` as is: it must pass the same rules as
    any message, or every ``testWhatsAppConnection`` would fail after the fact."""
    from gateway.core.validation import ValidationError, validate_message

    try:
        validate_message(messages.test_message, messages.max_length)
    except ValidationError as exc:
        raise ConfigError(f"messages.test_message: {exc.message}") from None


def _check_pacing(config: Config) -> None:
    """Typing must end before a waiting caller's ack timeout would (each pacing number
    is checked on its own by ``RANGES``)."""
    pacing = config.pacing
    if pacing.typing_seconds >= config.messages.send_timeout_seconds:
        raise ConfigError(
            f"pacing.typing_seconds ({pacing.typing_seconds:g}) must be less than "
            f"messages.send_timeout_seconds ({config.messages.send_timeout_seconds:g}): a "
            "caller waiting for the ack would time out while the session is still typing")


def _check_networks(config: Config) -> None:
    """Every list of CIDRs, checked at load so a typo never reaches a running server."""
    for where, values in (("auth.allowed_networks", config.auth.allowed_networks),
                          ("auth.trusted_proxies", config.auth.trusted_proxies),
                          ("cluster.allow_networks", config.cluster.allow_networks)):
        try:
            parse_networks(values, where)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _check_browser_access(http: HttpConfig) -> None:
    """The Host and Origin lists (gateway/core/origins.py), checked at load like the CIDRs."""
    try:
        check_allowed_hosts(http.allowed_hosts, "http.allowed_hosts")
        check_allowed_origins(http.allowed_origins, "http.allowed_origins")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def lease_timing_problem(lease: float, renew: float, margin: float) -> str | None:
    """Why a lease of ``lease`` seconds, renewed every ``renew`` seconds, with ``margin``
    seconds before a rival may take an expired one, is unsafe; None when it is safe.

    The holder must be able to miss a renewal and still renew before expiry, and must
    give up (disconnect) before a rival may start: lease > renew + margin. Shared by
    the config loader and ``actors.leases.timing.LeaseTiming``."""
    values = (lease, renew, margin)
    if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values):
        return (f"lease, renew and margin seconds must be finite numbers over 0 (got "
                f"{lease!r}, {renew!r}, {margin!r})")
    if lease <= renew + margin:
        return (f"cluster.lease_seconds ({lease:g}) must be more than "
                f"cluster.lease_renew_seconds ({renew:g}) + cluster.lease_margin_seconds "
                f"({margin:g}): a holder that misses one renewal must still hold its lease, "
                "and must have let go before a rival may take it")
    return None


def _check_cluster(cluster: ClusterConfig) -> None:
    """Shapes of the cluster keys. Whether cluster mode may start at all (it needs
    ``allow_networks``) is the launcher's refusal (``gateway.cli.cluster_mode``)."""
    problem = lease_timing_problem(cluster.lease_seconds, cluster.lease_renew_seconds,
                                   cluster.lease_margin_seconds)
    if problem is not None:
        raise ConfigError(problem)
    _check_database_url(cluster)
    for i, leader in enumerate(cluster.leaders):
        host, _, port = leader.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"cluster.leaders[{i}] = {leader!r} must be \"host:port\" (the "
                              "leader's advertise_address and actors.admin_port)")
    if cluster.advertise_address:
        try:
            ipaddress.ip_address(cluster.advertise_address)
        except ValueError:
            raise ConfigError(f"cluster.advertise_address = {cluster.advertise_address!r} must "
                              "be an IP address (Thespian advertises addresses, not names)"
                              ) from None


def _check_database_url(cluster: ClusterConfig) -> None:
    """A PostgreSQL URL, in multi-host mode only (its value is never shown: it may
    hold a password)."""
    url = cluster.database_url
    if not url or url == KEPT_AT_HOME:
        return
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("cluster.database_url must be a PostgreSQL URL such as "
                          "\"postgresql://wagate:PASSWORD@10.0.0.5/wagate\" (value not shown: "
                          "it may hold a password)")
    if cluster.role == "single":
        raise ConfigError("cluster.database_url is for several hosts (cluster.role = "
                          "\"leader\" or \"member\"); a single host keeps all its state in "
                          "storage.data_dir: remove the key")


def lease_mode(config: Config) -> bool:
    """Whether session processes hold leases in PostgreSQL: multi-host mode with a
    database configured. A single host never does."""
    return config.cluster.role != "single" and bool(config.cluster.database_url)


def config_from_dict(data: dict[str, Any]) -> Config:
    """The inverse of ``config_to_dict``, with the same checks as a file."""
    return _checked(_build(Config, _engine_defaults(data), ""))


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain TOML-able data (used to hand it to other processes)."""
    return dataclasses.asdict(config)


# Settings that may hold a credential: they stay on the host whose file names them.
CREDENTIAL_KEYS = ("transport.proxy", "transport.session_store", "cluster.database_url")
KEPT_AT_HOME = "(kept on its own host)"  # what another host sees instead of a credential


def without_credentials(config: Config) -> Config:
    """``config`` for another host: every ``CREDENTIAL_KEYS`` setting that is set is
    replaced by a marker that no engine accepts, so a process that used it by mistake
    would fail loudly instead of quietly connecting another way."""
    sections: dict[str, dict[str, str]] = {}
    for dotted in CREDENTIAL_KEYS:
        section, _, key = dotted.partition(".")
        if getattr(getattr(config, section), key):
            sections.setdefault(section, {})[key] = KEPT_AT_HOME
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in sections.items()})


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        raise ConfigError(f"unknown key {prefix}{unknown[0]} in {where}; "
                          f"known keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        dotted = prefix + name
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, dotted + ".")
        else:
            values[name] = _check_value(dotted, hint, value)
    return cls(**values)


def _check_value(dotted: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{dotted} = {value!r} is not allowed; "
                              f"use one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{dotted} must be a list of tables ([[{dotted}]])")
        kind = typing.get_args(hint)[0]
        return tuple(_build(kind, v, f"{dotted}[{i}].") for i, v in enumerate(value))
    if origin is tuple and typing.get_args(hint)[0] is str:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{dotted} must be a list of strings")
        return tuple(_scalar(f"{dotted}[{i}]", str, v) for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"{dotted} must be a non-empty list of numbers")
        return tuple(_in_range(dotted, f"{dotted}[{i}]", _scalar(f"{dotted}[{i}]", float, v), v)
                     for i, v in enumerate(value))
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such field today
        raise ConfigError(f"{dotted}: unsupported type")
    checked = _scalar(dotted, hint, value)
    if hint in (int, float):
        return _in_range(dotted, dotted, checked, value)
    return checked


def _in_range(key: str, shown: str, value: float, raw: Any) -> float:
    """``value`` if it is finite and inside ``key``'s range; ``shown`` names it and
    ``raw`` is what the operator wrote."""
    allowed = RANGES.get(key)
    if allowed is None:  # pragma: no cover - tests/unit/test_config.py checks every key
        raise ConfigError(f"{key}: no documented range; this is a bug in wagate")
    if not allowed.contains(value):
        raise ConfigError(allowed.refusal(shown, raw, whole=isinstance(value, int)))
    return value


def _scalar(dotted: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{dotted} must be true or false (got {value!r})")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{dotted} must be a whole number (got {value!r})")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond any float: out of every range
                raise ConfigError(f"{dotted} is far too large (got {value!r})") from None
        raise ConfigError(f"{dotted} must be a number (got {value!r})")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{dotted} must be a string (got {value!r})")
    raise ConfigError(f"{dotted}: unsupported type {kind!r}")  # pragma: no cover
