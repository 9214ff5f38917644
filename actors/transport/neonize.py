"""The real WhatsApp transport: whatsmeow (Go) through neonize 0.5.2's ctypes bindings.

One ``NeonizeTransport`` lives in one session actor process and the session creates
a fresh one (or at least a fresh ``connect``) for every connection attempt. Each
``connect`` builds one neonize ``NewClient`` (one Go client, with a uuid unique in
the process) and runs it until it ends; ``_Connection`` is that lifetime.

neonize is an awkward neighbour, and most of this module is about living with it
(docs/architecture.md §5 and docs/engine-behaviour.md say what each rule rests on):

* **Import lazily, and mind logging.** Importing neonize loads a Go runtime and calls
  ``logging.basicConfig`` on the root logger; it happens in ``_load_api`` (first
  transport built in the process), with the root logger restored afterwards and
  neonize's Go log level set before its first ``connect``.
* **Check what the import would do** (``actors.transport.engine``): a missing library,
  or one of another version, would make neonize download one from the internet, and
  an environment that says otherwise than ``transport.mark_as_bot`` would make every
  message carry (or lose) the "AI" badge. Either refuses the engine, before the import.
* **Never block the caller.** ``NewClient.connect`` blocks for the whole session, and
  ``stop`` blocks up to a minute while a dial hangs; both run on daemon threads of
  their own. ``close`` only flags and hands the stop to a thread.
* **Never abort the process.** Go panics kill the process and cannot be caught:
  the Go-side maps are not synchronised, so the map-writing entry points (the start
  of ``connect`` and ``stop``) are serialised by ``_GO_LOCK``; ``get_me`` is only
  called while the Go client is known to be alive; every ``NewClient`` stays
  referenced in ``_KEEP_ALIVE`` for the life of the process (a collected client
  stops its uuid in Go and frees callback thunks Go still holds).
* **Callbacks come from Go threads, and their exceptions vanish.** Every handler is
  wrapped, logs its own errors and only posts an event (the ``on_event`` sink must
  not block either).
* **Storage is private.** ``data_dir/sessions/<session>/neonize.db`` (dirs 0700,
  files 0600), SQLite in WAL mode with a busy timeout, or a Postgres DSN given in
  ``transport.session_store``. With encrypted stores the file is the session's
  decrypted working copy (``store_dir``, see ``actors.session.working_copy``).

Event mapping (whatsmeow/neonize -> ``actors.transport.base``):

==================================  ===============================================
QR callback (``client.event.qr``)   ``QrCode(code, expires_at)`` (first code:
                                    ``qr.first_seconds``, later: ``qr.next_seconds``)
login status ``success``            ``PairingClosed("success")``
login status ``timeout``,           held for ``transport.engine_detail_seconds``: the
``err-unexpected-state``, ``error``   event that caused it follows from the pump
                                    (``Disconnected`` -> ``PairingClosed("connection-lost")``,
                                    ``PairStatusEv`` error -> ``PairingClosed("error: <text>")``,
                                    ``LoggedOut``, ``TemporaryBan``, ``ConnectFailure``,
                                    ``Connected`` as below); none -> ``PairingClosed(status)``
                                    + stop
login status ``passkey-request``    ``PairingClosed(status)`` + stop once the QR channel
/ ``passkey-confirmation``          closed (neonize cannot answer passkey linking)
login status ``err-client-outdated``  ``ClientOutdated()`` + stop
any other login status              ``PairingClosed(status)`` + stop
``ConnectedEv``                     ``Connected(phone)`` (own number from ``get_me``)
``DisconnectedEv``                  ``Disconnected("connection lost", recovering=True)``
``LoggedOutEv``                     ``LoggedOut(reason name)`` + stop
``StreamReplacedEv``                ``StreamReplaced()`` + stop
``TemporaryBanEv``                  ``TemporaryBan(now + Expire, reason name)`` + stop
                                    (an ``Expire`` of 10 years or more: ``until=None``)
``ClientOutdatedEv``                ``ClientOutdated()`` + stop
``ConnectFailureEv``                ``Disconnected("connect failure <REASON>: <text>")``
``KeepAliveTimeoutEv`` (first)      ``Disconnected("keepalive timed out ...", recovering=True)``
``KeepAliveRestoredEv``             ``Connected(phone)`` (only after a keepalive timeout)
``ReceiptEv`` DELIVERED / READ      one ``Receipt(id, "delivered" | "read", phone, at)``
(INACTIVE counts as DELIVERED,      per id, ``at`` the receipt's own time; a LID sender
PLAYED as READ)                     mapped to its number (``sender_pn``, else the
                                    engine's LID store)
``MessageEv`` (not from this        ``IncomingMessage`` (``incoming_map``): text or the
account, not a status broadcast)    kind and metadata, sender number/JID/LID, push name,
                                    group or direct, quoted id, WhatsApp's timestamp
``connect()`` raises                ``Disconnected(<neonize error text>)``, unless the
                                    text is the pump's marshal error for an event it could
                                    not encode (``engine_events.event_for_call_end``): a
                                    ban code it has no name for -> ``TemporaryBan`` with
                                    the end from the engine's log line, else ``until=None``
``connect()`` returns unasked       ``Disconnected("client stopped unexpectedly")``
==================================  ===============================================

"+ stop" means the Go client is stopped on a thread of its own and the connection
reports nothing more. Nothing at all is reported once ``close`` has returned.

Known limits (none can be fixed from Python; docs/engine-behaviour.md has the details): a Go-side
map read at the very moment another thread's ``stop`` writes the map can still abort
the process (sends and ``PairPhone`` are kept clear of stops by ``_Connection.go_call``,
the event pump's own read cannot be guarded); ``stop`` during a displayed QR code
may leave neonize's Go call running forever (not reproduced; the thread is a daemon,
so it does not keep the process alive, but ``wait_closed`` then reports False).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import itertools
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from actors.media.kinds import MediaLimits
from actors.transport.base import (
    NOT_ON_WHATSAPP,
    RATE_OVERLIMIT,
    ClientOutdated,
    Connected,
    Disconnected,
    EngineSetupError,
    EventSink,
    IncomingMessage,
    LoggedOut,
    NumberInfo,
    OutgoingMedia,
    PairingClosed,
    QrCode,
    Receipt,
    SendError,
    SentMessage,
    StreamReplaced,
    TemporaryBan,
    Transport,
    TransportEvent,
    check_session_id,
    make_private_dir,
    peer_phone,
)
from actors.transport.engine import (
    EngineLibrary,
    bot_tag_problem,
    exec_environment,
    library_problem,
    locate_library,
)
from actors.transport.engine_events import (
    CONNECTION_LOST,
    PASSKEY_STATUSES,
    ban_from_log,
    ban_until,
    closes_qr_channel,
    event_for_call_end,
    pairing_needs_detail,
    unencodable_event,
)
from actors.transport.engine_imports import deferred_imports
from actors.transport.engine_output import capture_engine_output, redact_engine_log_records
from actors.transport.incoming_map import DOWNLOADABLE_KINDS, incoming_from_event

if TYPE_CHECKING:
    from gateway.core.config import Config

log = structlog.get_logger("wagate.neonize")

DB_NAME = "neonize.db"
# The database and the files SQLite keeps next to it (WAL mode, or a rollback journal).
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
# For a Postgres store there is no file to look at: this marker says a device linked.
PAIRED_MARKER = "neonize.paired"

# go-sqlite3 DSN parameters. neonize appends "?_foreign_keys=on" to whatever it gets;
# ending in "_x=" turns that into the value of a dummy parameter, so WAL and the busy
# timeout survive and foreign keys are still on (docs/engine-behaviour.md, "The device
# database's name is a DSN").
_SQLITE_PARAMS = "?_journal_mode=WAL&_busy_timeout=10000&_foreign_keys=on&_x="

# neonize's Go call writes its process-wide maps before it dials; once Go calls back
# (or the call has returned) they are written. A dial can hang for a minute without a
# callback, so the start of a connect holds _GO_LOCK at most this long: the map
# writes wait only for the database open, milliseconds for a local SQLite file (a
# Postgres server slower than this leaves a small window for a concurrent stop).
_CONNECT_SETTLE_SECONDS = 1.0
# How long the Connected handler waits for _GO_LOCK before it reports the phone
# number it already knows instead of asking Go (it must not stall the event pump).
_GET_ME_LOCK_SECONDS = 2.0
# A Go call reads the client map right after it is entered; a stop waits this long
# after the last call began, so it never deletes the entry under that read.
_GO_CALL_ENTRY_GRACE_SECONDS = 0.1

_NOT_CONNECTED = "NOT_CONNECTED"
# Steps of whatsmeow's SendMessage that run before the message node is written: a
# failure there means nothing left (whatsmeow send.go: the LID lookup of a number,
# "failed to get user info for X to fill LID cache"; the device list of sendDM's
# prepareMessageNode, "failed to get device list"; usync wraps its IQ errors in
# "failed to send usync query"; the engine's own store read before encrypting,
# "failed to get LID for PN", "failed to fetch LID mappings", "failed to prefetch
# sessions").
_PRE_SEND_MARKERS = ("failed to get user info", "usync query", "failed to get device list",
                     "failed to get lid for pn", "failed to fetch lid mappings",
                     "failed to prefetch sessions")
# whatsmeow: fmt.Errorf("no LID found for %s from server", to) -- the server knows no
# account for the number.
_NO_ACCOUNT = re.compile(r"no lid found for \S* ?from server")
_AMBIGUOUS_MARKERS = (
    "timed out waiting for message send response",  # whatsmeow ErrMessageTimedOut
    # DisconnectedError{Action: "message send"} (and "message send (retry)"): the node
    # was written, then the socket closed before the server's ack; every client stop
    # (reconnect, watchdog, send deadline, shutdown) ends sends in flight this way.
    "disconnected before message send",
    "disconnected before info query returned response",  # the socket died awaiting the ack
)
_NOT_CONNECTED_MARKERS = (
    "client is nil",
    "websocket not connected",
    "not connected",
    "the store doesn't contain a device jid",  # not paired (any more)
)
# IQError texts (whatsmeow errors.go): "info query returned status 429: rate-overlimit"
# and the server-side failures worth another try later.
_RATE_OVERLIMIT = re.compile(r"status 429\b|rate-overlimit")
_SERVER_TROUBLE = re.compile(r"status (500|503|530)\b|internal-server-error|"
                             r"service-unavailable|partial-server-error")
_REACHOUT_TIMELOCK = re.compile(r"(?:error|status) 463\b")  # "server returned error 463"
# whatsmeow SendMessage: the server's ack carried an error attribute (ErrServerReturnedError,
# "server returned error <code>"). The server answered: the message was refused, not lost.
_ERROR_ACK = re.compile(r"server returned error (\d+)")
# Error acks whose meaning whatsmeow records (client.go: 479 "Invalid stanza sent
# (smax-invalid)"); others keep their number only.
_ERROR_ACK_MEANINGS = {"479": "the server found the message stanza invalid (smax-invalid)"}

# Process-wide neonize state (see the module docstring).
_GO_LOCK = threading.Lock()
_KEEP_ALIVE: list[Any] = []
_KEEP_ALIVE_LOCK = threading.Lock()
_SEQUENCE = itertools.count(1)
# Go clients created in this process. goneonize opens a store container (a database
# pool: the SQLite file and its WAL stay open, or Postgres connections) for each one
# in Neonize() and nothing ever closes it, not even Stop.
_CLIENTS_CREATED = 0
_API_LOCK = threading.Lock()
_API: _Api | None = None


# --------------------------------------------------------------------------- neonize


class _EngineLog:
    """Watches the engine's own log for the one line that keeps a ban's end when the
    ban event itself cannot be encoded (``engine_events.ban_from_log``). neonize hands
    Go's log lines to the ``whatsmeow.Client`` logger from a thread of its own, so a
    reader waits for the line with a deadline.

    It reads each line as the record is made, before the redaction (``note`` is an
    observer of ``engine_output.redact_engine_log_records``): the redaction takes a
    seven-digit ``expire`` (a ban of 11.6 days or more) for a phone number. And the
    line is a warning, so Go is given WARNING and the ``whatsmeow.Client`` logger
    makes records from WARNING up whatever the gateway's level (``_GatewayLevel``
    keeps those below it out of the log)."""

    _KEEP = 8

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._bans: list[tuple[float, tuple[str, float]]] = []

    def note(self, message: str) -> None:
        try:
            ban = ban_from_log(str(message))
        except Exception:  # a log record must never break the engine's log thread
            return
        if ban is None:
            return
        with self._cond:
            self._bans = [*self._bans[-(self._KEEP - 1):], (time.monotonic(), ban)]
            self._cond.notify_all()

    def ban_since(self, since: float, timeout: float) -> tuple[str, float] | None:
        """The latest ban logged at or after the monotonic ``since``, waiting up to
        ``timeout`` seconds for one; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [ban for at, ban in self._bans if at >= since]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


_ENGINE_LOG = _EngineLog()


class _GatewayLevel(logging.Filter):
    """Lets through only the engine's records at or above the gateway's level (the
    engine's logger itself stays at WARNING so that ``_ENGINE_LOG`` sees the ban line)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


@dataclass(frozen=True, slots=True)
class _Api:
    """The few neonize names this module uses, resolved once by ``_load_api``."""

    client_class: type
    proxy_settings: type
    neonize_error: type[Exception]
    message: type
    build_jid: Callable[..., Any]  # (user, server="s.whatsapp.net")
    connected: type
    disconnected: type
    logged_out: type
    stream_replaced: type
    temporary_ban: type
    client_outdated: type
    connect_failure: type
    keepalive_timeout: type
    keepalive_restored: type
    receipt: type
    message_event: type  # neonize MessageEv: a message written to this account
    read_receipt: Any  # ReceiptType.READ, what mark_read sends
    pair_status: type
    pair_status_error: int
    receipt_kinds: dict[int, str]  # neonize Receipt.ReceiptType -> what the outbox records
    composing: Any  # ChatPresence.CHAT_PRESENCE_COMPOSING
    text_media: Any  # ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
    device_props: Callable[[str], Any]  # our DeviceProps for a device name
    pairing_client_type: Any  # ClientType.FIREFOX: what PairPhone says without props
    audio_message: type  # waE2E AudioMessage (built here: neonize's builder needs ffmpeg)
    video_message: type  # waE2E VideoMessage (likewise)
    media_audio: Any  # MediaType.MediaAudio: what an audio or voice upload is
    media_video: Any  # MediaType.MediaVideo


class _DaemonThread(threading.Thread):
    """What neonize's ``connect`` gets instead of ``threading.Thread``.

    neonize runs its blocking Go call on a *non-daemon* thread. If that call never
    returns (docs/engine-behaviour.md, "A stop while QR codes are shown"), the session
    process could never exit. As a daemon the thread ends with the process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["daemon"] = True
        super().__init__(*args, **kwargs)


def _load_api(level_name: str, mark_as_bot: bool) -> _Api:
    """Import neonize (once per process) without letting it take over logging, and
    only after checking that the import would neither download code nor make the
    engine mark messages otherwise than configured (``EngineSetupError`` if it would)."""
    global _API
    problem = bot_tag_problem(mark_as_bot, exec_environment())
    if problem is not None:
        raise EngineSetupError(problem)
    with _API_LOCK:
        if _API is not None:
            return _API
        _refuse_downloads(_checked_library())
        # The level neonize hands to Go is read from this logger at every connect;
        # unset (NOTSET) it forwards every Go DEBUG line through the FFI.
        gateway_level = logging.getLevelName(level_name)
        if not isinstance(gateway_level, int):
            gateway_level = logging.WARNING
        # WARNING, not the gateway's level when that is ERROR: whatsmeow's ban line (the
        # only place a ban's end survives an event the engine cannot encode) is a warning.
        logging.getLogger("neonize.utils.log").setLevel(logging.WARNING)
        engine_client_log = logging.getLogger("whatsmeow.Client")
        engine_client_log.setLevel(logging.WARNING)
        engine_client_log.addFilter(_GatewayLevel(max(logging.WARNING, gateway_level)))
        # Media needs ffmpeg; a gateway that only sends text does not want the warning.
        logging.getLogger("neonize.utils.ffmpeg").setLevel(logging.ERROR)
        # The engine prints some errors (with recipients' numbers) and pairing codes
        # straight to descriptor 1: captured, redacted, logged (engine_output).
        capture_engine_output(_log_engine_output)
        # whatsmeow's own log lines name recipients too; the ban line is read first
        redact_engine_log_records(_ENGINE_LOG.note)
        root = logging.getLogger()
        handlers, root_level = list(root.handlers), root.level
        # Link previews and URL fetching stay unloaded until used (engine_imports).
        try:
            with deferred_imports():
                import neonize.client as neonize_client
                from neonize._binder import ProxySettings
                from neonize.events import (
                    ClientOutdatedEv,
                    ConnectedEv,
                    ConnectFailureEv,
                    DisconnectedEv,
                    KeepAliveRestoredEv,
                    KeepAliveTimeoutEv,
                    LoggedOutEv,
                    MessageEv,
                    PairStatusEv,
                    ReceiptEv,
                    StreamReplacedEv,
                    TemporaryBanEv,
                )
                from neonize.exc import NeonizeError
                from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps
                from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
                    AudioMessage,
                    Message,
                    VideoMessage,
                )
                from neonize.utils.enum import (
                    ChatPresence,
                    ChatPresenceMedia,
                    ClientType,
                    MediaType,
                    ReceiptType,
                )
                from neonize.utils.jid import build_jid
        finally:
            root.handlers[:] = handlers  # undo neonize's logging.basicConfig
            root.setLevel(root_level)
        neonize_client.Thread = _DaemonThread
        _API = _Api(
            client_class=_client_class(neonize_client.NewClient),
            proxy_settings=ProxySettings,
            neonize_error=NeonizeError,
            message=Message,
            build_jid=build_jid,
            connected=ConnectedEv,
            disconnected=DisconnectedEv,
            logged_out=LoggedOutEv,
            stream_replaced=StreamReplacedEv,
            temporary_ban=TemporaryBanEv,
            client_outdated=ClientOutdatedEv,
            connect_failure=ConnectFailureEv,
            keepalive_timeout=KeepAliveTimeoutEv,
            keepalive_restored=KeepAliveRestoredEv,
            receipt=ReceiptEv,
            message_event=MessageEv,
            read_receipt=ReceiptType.READ,
            pair_status=PairStatusEv,
            pair_status_error=PairStatusEv.ERROR,
            # INACTIVE is whatsmeow's "inactive" receipt (types.ReceiptTypeInactive): the
            # message reached a device of the recipient's that has not been active lately
            # (a companion device). That is a delivery all the same.
            # PLAYED is a voice or video message listened to: read, for the sender.
            receipt_kinds={ReceiptEv.DELIVERED: "delivered", ReceiptEv.INACTIVE: "delivered",
                           ReceiptEv.READ: "read", ReceiptEv.PLAYED: "read"},
            composing=ChatPresence.CHAT_PRESENCE_COMPOSING,
            text_media=ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT,
            # neonize's own default is os="Neonize", platform Safari: keep the platform
            # (how WhatsApp shows the device's icon), name it as configured.
            device_props=lambda name: DeviceProps(os=name, platformType=DeviceProps.SAFARI),
            pairing_client_type=ClientType.FIREFOX,
            audio_message=AudioMessage,
            video_message=VideoMessage,
            media_audio=MediaType.MediaAudio,
            media_video=MediaType.MediaVideo,
        )
        return _API


# Generated message modules that neonize's client imports; their own imports bring in
# the other message modules it needs (about 40 of its 60). The rest, loaded only with
# the engine, cost little.
_PRELOADED_MESSAGES = ("neonize.proto.Neonize_pb2",
                       "neonize.proto.waE2E.WAWebProtobufsE2E_pb2",
                       "neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2")
# Libraries neonize's modules import at their top; none starts a thread or loads Go.
_PRELOADED_LIBRARIES = ("magic", "PIL.Image", "PIL.ImageSequence", "segno")


def preload_engine_modules() -> list[str]:
    """Import the libraries neonize imports and its generated protobuf modules (with
    the protobuf runtime), never the engine itself; returns the modules loaded ([] if
    neonize is not installed or already imported here).

    For the process that forks the session processes: loaded there, their classes and
    descriptors are pages every session shares, where each session importing them
    held about 8 MiB of its own (``tests/perf/bench_memory.py``). Importing the
    package ``neonize`` itself would load the Go runtime, after which a fork hangs
    (docs/architecture.md §5), so the message modules are imported under a bare
    stand-in for the package that runs none of its ``__init__``; the stand-in is gone
    afterwards, and the session's own import of neonize finds these modules loaded.
    One side effect comes with them: ``neonize.proto`` puts its directory on
    ``sys.path`` (its modules import each other by top-level names), as the engine's
    import would.
    """
    if "neonize" in sys.modules:
        return []
    spec = importlib.util.find_spec("neonize")
    if spec is None or not spec.submodule_search_locations:
        return []
    before = set(sys.modules)
    for name in _PRELOADED_LIBRARIES:
        importlib.import_module(name)
    bare = types.ModuleType("neonize", "neonize's package, its __init__ not run")
    bare.__path__ = list(spec.submodule_search_locations)
    sys.modules["neonize"] = bare
    try:
        for name in _PRELOADED_MESSAGES:
            importlib.import_module(name)
    finally:
        if sys.modules.get("neonize") is bare:
            del sys.modules["neonize"]
    loaded = sorted(set(sys.modules) - before)
    if "neonize._binder" in loaded:  # the module that loads the Go library
        raise RuntimeError("preloading neonize's modules loaded its engine")
    return loaded


def _log_engine_output(line: str) -> None:
    """A line the engine printed to standard output, redacted."""
    log.info("engine output", line=line)


def _checked_library() -> EngineLibrary:
    """The engine library, present and of the version neonize requires."""
    try:
        library = locate_library()
    except (LookupError, ImportError, ValueError) as exc:
        raise EngineSetupError(str(exc)) from exc
    problem = library_problem(library)
    if problem is not None:
        raise EngineSetupError(problem)
    return library


def _refuse_downloads(library: EngineLibrary) -> None:
    """Stand in for neonize's downloader before neonize is imported, so that no path
    of the import (a file swapped after the check, say) can fetch a library: neonize
    takes ``download`` from this module and calls it only to replace its library."""
    if "neonize.download" in sys.modules:
        return

    def download() -> None:
        raise EngineSetupError(
            f"neonize tried to download its engine library; wagate never downloads code "
            f"at run time: reinstall neonize=={library.expected_version}")

    stub = types.ModuleType("neonize.download")
    stub.__dict__.update(__GONEONIZE_VERSION__=library.expected_version, download=download)
    sys.modules["neonize.download"] = stub


def _client_class(new_client: type) -> type:
    """A ``NewClient`` whose login-status callback reaches the transport.

    neonize passes the QR channel's outcome (``success``, ``timeout``, ``err-...``)
    only to the name-mangled ``NewClient.__onLoginStatus``, which prints a pointer.
    Overriding it under its mangled name is the one way to get the text
    (docs/engine-behaviour.md, "The end of the QR phase").
    """

    class GatewayClient(new_client):
        login_status_sink: Callable[[str], None] | None = None

        def _NewClient__onLoginStatus(self, uuid: int | None, status_ptr: int | None) -> None:
            try:
                raw = ctypes.string_at(status_ptr) if status_ptr else b""
                sink = self.login_status_sink
                if sink is not None:
                    sink(raw.decode("utf-8", "replace"))
            except Exception:  # raised into ctypes it would only be printed
                log.exception("neonize login-status callback failed")

    return GatewayClient


def _ignore_qr(_client: Any, _data: bytes) -> None:
    """Replaces the QR handler once a connection is over (neonize's default prints)."""


# --------------------------------------------------------------------------- transport


class NeonizeTransport(Transport):
    """One real WhatsApp client for one session (lives in a session actor process)."""

    def __init__(self, session_id: str, data_dir: Path, config: Config, *,
                 store_dir: Path | None = None) -> None:
        """``store_dir`` holds the device store (default ``data_dir/sessions/<session>``;
        with encrypted stores, the session's private working copy)."""
        check_session_id(session_id)
        self._session = session_id
        self._config = config
        # the largest received file downloaded (media.max_<kind>_mb, the largest kind)
        self._max_media_bytes = MediaLimits.from_config(config.media).largest
        self._session_dir = (Path(data_dir) / "sessions" / session_id if store_dir is None
                             else store_dir)
        self._db_path = self._session_dir / DB_NAME
        self._store = _store_dsn(config.transport.session_store, session_id)
        # Importing here, not in connect(): a missing or broken engine then fails
        # the transport's construction, which the session reports as
        # ENGINE_UNAVAILABLE, instead of failing later on the actor's thread.
        self._api = _load_api(config.logging.level, config.transport.mark_as_bot)
        self._lock = threading.Lock()  # guards _conn, _connections and _closed
        # Held while an event is delivered and when closing: once close() has
        # returned no event can still be on its way.
        self._emit_lock = threading.RLock()
        self._conn: _Connection | None = None
        self._connections: list[_Connection] = []
        self._closed = False

    # ------------------------------------------------------------------ interface

    def has_credentials(self) -> bool:
        """Whether a linked device is stored, without loading neonize or Go.

        SQLite: a read-only look at ``whatsmeow_device`` (a missing file or table
        means no). Postgres: wagate has no Postgres driver of its own, so it trusts
        a marker written when the device connected and removed when it was logged
        out; a device deleted from the database behind wagate's back still counts.
        """
        if self._store:
            return (self._session_dir / PAIRED_MARKER).is_file()
        if not self._db_path.is_file():
            return False
        uri = f"file:{urllib.parse.quote(str(self._db_path), safe='/')}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=2.0)) as db:
                row = db.execute("SELECT 1 FROM whatsmeow_device LIMIT 1").fetchone()
        except sqlite3.Error:
            return False  # no schema yet (never connected), or unreadable
        finally:
            self._tighten_db_files()  # a WAL reader may have created -shm
        return row is not None

    def clients_created(self) -> int:
        """Go clients created in this process: each leaves a database pool open."""
        with _KEEP_ALIVE_LOCK:
            return _CLIENTS_CREATED

    def connect(self, on_event: EventSink) -> None:
        """Start one Go client on its own threads and return at once.

        Without a stored device it pairs (``QrCode`` events); with one it resumes.
        A no-op while the previous connection is still running.
        """
        conn = self._open(on_event)
        if conn is not None:
            conn.start()

    def send_text(self, phone: str, text: str) -> SentMessage:
        """Send ``text`` as a plain ``conversation`` message (no mentions, no preview).

        Refused locally (``NOT_CONNECTED``) until the connection reported
        ``Connected`` and after it reported ``Disconnected``: whatsmeow would fail
        at once anyway, and Go is then never entered while it is starting or stopping.
        """
        conn, jid = self._sending_to(phone)
        message = self._api.message(conversation=text)
        with conn.go_call():
            response = conn.bounded_send(lambda: conn.client.send_message(jid, message),
                                         self._config.transport.send_deadline_seconds)
        return SentMessage(message_id=response.ID, timestamp=_unix_seconds(response.Timestamp))

    def _sending_to(self, phone: str) -> tuple[Any, Any]:
        """The connection a send goes through and the recipient's JID; refused locally
        (NOT_CONNECTED) without a connected client, REJECTED for a number that is not
        digits."""
        conn = self._current()
        if conn is None or not conn.connected:
            raise SendError(_NOT_CONNECTED, "the session is not connected", permanent=False)
        digits = phone.removeprefix("+")
        if not digits.isdigit() or not digits.isascii():
            raise SendError("REJECTED", f"{phone!r} is not a phone number (digits only)",
                            permanent=True)
        return conn, self._api.build_jid(digits)

    def send_media(self, phone: str, media: OutgoingMedia) -> SentMessage:
        """Upload the file to WhatsApp's media servers, then send the message naming it.

        Every attempt uploads again from the bytes the session read from the media store
        (never from the caller's request). An upload that fails is ``UPLOAD_FAILED``,
        retried like a dropped send (nothing reached the recipient). Built with the
        engine's own builders for images (with the thumbnail it makes with Pillow),
        documents and stickers (WebP as it is); audio, voice notes and video are built
        here from the upload, because the engine's builders for them run ffmpeg: so no
        duration and no video thumbnail, and no ffmpeg needed. READ, NOT RUN here: the
        upload and the send need WhatsApp's servers.
        """
        conn, jid = self._sending_to(phone)
        with conn.go_call():
            try:
                message = self._media_message(conn.client, media)
            except self._api.neonize_error as exc:
                raise SendError("UPLOAD_FAILED", f"the upload to WhatsApp failed: {exc}",
                                permanent=False) from exc
            except (ValueError, OSError) as exc:  # Pillow could not read the picture
                raise SendError("REJECTED", f"the engine could not prepare the "
                                f"{media.kind}: {exc}", permanent=True) from exc
            response = conn.bounded_send(lambda: conn.client.send_message(jid, message),
                                         self._config.transport.send_deadline_seconds)
        return SentMessage(message_id=response.ID, timestamp=_unix_seconds(response.Timestamp))

    def _media_message(self, client: Any, media: OutgoingMedia) -> Any:
        """The engine's message for ``media``, its file uploaded (blocks on the upload)."""
        caption = media.caption or None
        if media.kind == "IMAGE":
            return client.build_image_message(media.data, caption=caption)
        if media.kind == "DOCUMENT":
            return client.build_document_message(media.data, caption=caption,
                                                 filename=media.file_name or None,
                                                 mimetype=media.mime)
        if media.kind == "STICKER":
            return client.build_sticker_message(media.data, passthrough=True)
        video = media.kind == "VIDEO"
        upload = client.upload(media.data,
                               self._api.media_video if video else self._api.media_audio)
        fields = {"URL": upload.url, "directPath": upload.DirectPath,
                  "fileEncSHA256": upload.FileEncSHA256, "fileLength": upload.FileLength,
                  "fileSHA256": upload.FileSHA256, "mediaKey": upload.MediaKey,
                  "mimetype": "audio/ogg; codecs=opus" if media.kind == "VOICE" else media.mime}
        if video:
            return self._api.message(videoMessage=self._api.video_message(
                caption=caption, **fields))
        return self._api.message(audioMessage=self._api.audio_message(
            PTT=media.kind == "VOICE", **fields))

    def check_numbers(self, phones: list[str]) -> list[NumberInfo]:
        """One usync query (whatsmeow ``IsOnWhatsApp``) for all of ``phones``. Refused
        locally (``NOT_CONNECTED``) without a live connection, as ``send_text``."""
        conn = self._current()
        if conn is None or not conn.connected:
            raise SendError(_NOT_CONNECTED, "the session is not connected", permanent=False)
        with conn.go_call():
            try:
                responses = conn.client.is_on_whatsapp(*[f"+{p}" for p in phones])
            except self._api.neonize_error as exc:
                raise lookup_error_from(str(exc)) from exc
        return numbers_from_responses(phones, responses)

    def send_typing(self, phone: str) -> None:
        """Show "typing..." to ``phone`` (whatsmeow ``SendChatPresence`` composing); the
        recipient's app clears it when the message arrives. Best effort, never raises."""
        conn = self._current()
        digits = phone.removeprefix("+")
        if conn is None or not conn.connected or not digits.isdigit() or not digits.isascii():
            return
        try:
            with conn.go_call():
                conn.client.send_chat_presence(self._api.build_jid(digits), self._api.composing,
                                               self._api.text_media)
        except (SendError, self._api.neonize_error) as exc:
            log.info("typing indicator not sent", session=self._session, error=str(exc))

    def mark_read(self, chat: str, sender_jid: str, message_ids: list[str]) -> None:
        """One read receipt (whatsmeow ``MarkRead``) for ``message_ids`` of ``chat``,
        written by ``sender_jid``. Refused locally without a live connection."""
        conn = self._current()
        if conn is None or not conn.connected:
            raise SendError(_NOT_CONNECTED, "the session is not connected", permanent=False)
        chat_jid, sender = _jid_of(self._api, chat), _jid_of(self._api, sender_jid)
        with conn.go_call():
            try:
                conn.client.mark_read(*message_ids, chat=chat_jid, sender=sender,
                                      receipt=self._api.read_receipt)
            except self._api.neonize_error as exc:
                raise SendError("REJECTED", str(exc), permanent=False) from exc

    def request_pairing_code(self, phone: str) -> str:
        """Ask WhatsApp for an 8-character code to type on the phone instead of
        scanning. Needs the live socket of a pairing connection, which the first QR
        code proves (docs/engine-behaviour.md, "A pairing code needs a live socket").
        Blocks for a server round trip."""
        conn = self._current()
        if conn is None or not conn.qr_seen or conn.connected or conn.stop_requested:
            raise SendError("NOT_PAIRING", "the session is not pairing right now; call "
                            "whatsAppConnect first", permanent=True)
        digits = "".join(c for c in phone if c.isdigit())
        with conn.go_call():
            try:
                # The client type is given: with device properties set, neonize would
                # read it from their platformType, whose numbers are another enum's
                # (Safari's 5 is ClientType OPERA), and the phone would be told "Opera".
                return str(conn.client.PairPhone(digits, show_push_notification=True,
                                                 client_type=self._api.pairing_client_type))
            except self._api.neonize_error as exc:
                raise SendError("PAIRING_FAILED", str(exc), permanent=True) from exc

    def logout(self) -> None:
        """Unlink the device on the server if connected (best effort), stop the
        client and delete the stored device.

        Blocks for a server round trip when connected. Without a live connection
        the server is not told (the phone keeps listing the device until it is
        removed there). With a Postgres store the rows can only be deleted by
        whatsmeow's own logout, i.e. when connected; otherwise only the marker goes.
        Like whatsmeow, no ``LoggedOut`` is reported for it.
        """
        conn = self._current()
        if conn is not None and conn.connected:
            try:
                with conn.go_call():
                    conn.client.logout()
            except (SendError, self._api.neonize_error) as exc:
                log.warning("unlinking on the server failed; deleting locally",
                            session=self._session, error=str(exc))
        if conn is not None:
            conn.request_stop()
        self._forget_paired()
        if not self._store:
            for suffix in DB_SUFFIXES:
                with contextlib.suppress(FileNotFoundError):
                    (self._db_path.parent / (DB_NAME + suffix)).unlink()

    def close(self) -> None:
        """Drop every later event and stop the Go client(s) in the background.

        Returns at once (a stop can block for a minute while a dial hangs);
        ``wait_closed`` tells when the background work is done. Idempotent.
        """
        with self._emit_lock:  # waits for an event being delivered right now
            self._closed = True
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.request_stop()

    # ------------------------------------------------------------------ helpers

    def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection's Go call has returned and its stop is done
        (for tests and orderly shutdown). Returns whether that happened in time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            connections = list(self._connections)
        return all(conn.join(deadline) for conn in connections)

    def _open(self, on_event: EventSink) -> _Connection | None:
        """Create the next connection, its client and handlers, without starting it
        (tests drive the handlers through neonize's ctypes dispatch from here)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this NeonizeTransport is closed; create a new one")
            current = self._conn
            if current is not None and not current.finished and not current.stop_requested:
                return None
            conn = _Connection(self, on_event, f"{self._session}-{next(_SEQUENCE)}")
            self._conn = conn
            self._connections.append(conn)
        return conn

    def _current(self) -> _Connection | None:
        with self._lock:
            return None if self._closed else self._conn

    def _deliver(self, conn: _Connection, event: TransportEvent) -> bool:
        """Hand ``event`` to the connection's sink unless it must stay silent."""
        with self._emit_lock:
            if self._closed or conn.stop_requested:
                return False
            try:
                conn.on_event(event)
            except Exception:
                log.exception("the transport event sink failed", session=self._session,
                              event=type(event).__name__)
            return True

    def _dsn(self) -> str:
        if self._store:
            return self._store
        return urllib.parse.quote(str(self._db_path), safe="/") + _SQLITE_PARAMS

    def _prepare_storage(self) -> None:
        """Private directories, and the SQLite file created 0600 before Go opens it
        (SQLite gives its -wal and -shm files the database file's permissions)."""
        make_private_dir(self._session_dir.parent)
        make_private_dir(self._session_dir)
        if not self._store:
            fd = os.open(self._db_path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            self._tighten_db_files()

    def _tighten_db_files(self) -> None:
        """Make the database and its companion files 0600 (those that exist)."""
        if self._store:
            return
        for suffix in DB_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self._db_path.parent / (DB_NAME + suffix), 0o600)

    def _mark_paired(self) -> None:
        if self._store:
            with contextlib.suppress(OSError):
                make_private_dir(self._session_dir)
                (self._session_dir / PAIRED_MARKER).touch(mode=0o600)

    def _forget_paired(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._session_dir / PAIRED_MARKER).unlink()


# --------------------------------------------------------------------------- connection


class _Connection:
    """One Go client, from ``connect`` until its Go call returned and it is stopped.

    Threads: ``neonize-<uuid>`` runs the connection (prepares storage, starts Go
    under ``_GO_LOCK``, waits for the end, reports it); ``neonize-<uuid>-call`` sits
    in neonize's blocking ``connect``, which itself runs Go on a thread named after
    the uuid (that is where every callback arrives); ``neonize-<uuid>-stop`` stops it.
    """

    def __init__(self, transport: NeonizeTransport, on_event: EventSink, uuid: str) -> None:
        self.transport = transport
        self.on_event = on_event
        self.uuid = uuid
        api = transport._api
        self.api = api
        # Our device properties: the phone lists the device under this name (neonize's
        # default would be "Neonize"). neonize merges them into whatsmeow's
        # store.DeviceProps at connect (goneonize main.go Neonize).
        props = api.device_props(transport._config.transport.device_name)
        self.client: Any = api.client_class(transport._dsn(), props=props, uuid=uuid)
        global _CLIENTS_CREATED
        with _KEEP_ALIVE_LOCK:
            _KEEP_ALIVE.append(self.client)  # never collected: see the module docstring
            _CLIENTS_CREATED += 1
        # neonize also stops every client at interpreter exit, from the main thread
        # and outside _GO_LOCK, racing a stop thread still at work: a concurrent map
        # write that aborts the exit. The process's end closes the socket anyway.
        with contextlib.suppress(AttributeError):
            self.client._stop_finalizer.atexit = False
        proxy = transport._config.transport.proxy
        self.proxy = api.proxy_settings(proxy_address=proxy) if proxy else None
        self.lock = threading.Lock()  # guards the flags below and _go_calls
        self.connected = False  # between Connected and Disconnected
        self.keepalive_lost = False  # pings failing on a socket still open (not connected)
        self.qr_seen = False
        self.stop_requested = False  # once set: no more events, no new Go calls
        self.finished = False  # the Go call returned (or was never made)
        self._qr_count = 0
        self._go_entered = False  # the Go call was started: a stop must reach Go
        self._go_closed = False  # Stop was called: Go calls could now abort the process
        self._go_calls: dict[int, float] = {}
        self._call_ids = itertools.count()
        self._settled = threading.Event()  # Go wrote its maps (it called back or returned)
        self._outcome: str | None = None  # the error connect() raised, if any
        self._started_at = time.monotonic()
        # Pairing. whatsmeow's QR channel is open from the first code until a closing
        # status; a Go stop inside that window leaves neonize's Go call waiting forever
        # (the QR emitter exits on the expected disconnect without closing the channel).
        # After a passkey request the channel stays open by design, so a stop then waits
        # for it to close, at most until the codes run out.
        self._qr_closed = threading.Event()
        self._qr_window_end: float | None = None  # monotonic: when the last code expires
        self._passkey_requested = False
        self.stop_deferred = threading.Event()  # a stop is waiting for the QR channel
        # A pairing end whose reason is still to come from the event pump (see
        # actors.transport.engine_events.DETAIL_STATUSES), and its deadline's timer.
        self._pending_end: str | None = None
        self._pending_timer: threading.Timer | None = None
        self._thread: threading.Thread | None = None
        self._stop_thread: threading.Thread | None = None
        self._register()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"neonize-{self.uuid}")
        self._thread.start()

    def request_stop(self) -> None:
        """Silence this connection and stop its Go client on a thread; idempotent."""
        with self.lock:
            self.stop_requested = True
            self.connected = False
            if self._stop_thread is not None:
                return
            # Started under the lock: ``join`` on another thread must never find it
            # set but not yet started ("cannot join thread before it is started").
            self._stop_thread = threading.Thread(target=self._stop_worker, daemon=True,
                                                 name=f"neonize-{self.uuid}-stop")
            self._stop_thread.start()

    def join(self, deadline: float) -> bool:
        """Wait (until the monotonic ``deadline``) for this connection's threads."""
        for thread in (self._thread, self._stop_thread):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    return False
        return True

    @contextlib.contextmanager
    def go_call(self) -> Iterator[None]:
        """Bracket a call into this client's Go side (send, pair, logout): refused
        once a stop is under way, and remembered so the stop waits for its entry."""
        with self.lock:
            if self.stop_requested or self._go_closed:
                raise SendError(_NOT_CONNECTED, "the connection is closing", permanent=False)
            call = next(self._call_ids)
            self._go_calls[call] = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                self._go_calls.pop(call, None)

    def bounded_send(self, call: Callable[[], Any], deadline: float) -> Any:
        """Run one send into Go on a thread of its own and wait at most ``deadline``.

        whatsmeow serialises a client's sends and holds that lock across the recipient's
        device lookup, the server's ack (75 s each) and, after the socket dropped, a
        retry that waits for the reconnect without any limit (neonize gives it no
        context that could end it). A send still running at the deadline therefore
        stops this client (reported as ``Disconnected``, so the session reconnects):
        whatsmeow's ``Disconnect`` wakes every waiter, and the send ends with the
        engine's own answer (a send cut off after its node left is ``AMBIGUOUS``). If
        the engine has not let go after as long again, its thread is left behind (a
        daemon, on a stopped client) and the send is ``AMBIGUOUS`` all the same.
        """
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = call()
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, daemon=True, name=f"neonize-{self.uuid}-send").start()
        if done.wait(deadline):
            return self._send_outcome(outcome, "")
        log.warning("a send passed its deadline; stopping the client", uuid=self.uuid,
                    deadline_seconds=deadline)
        self._end(Disconnected(
            f"a send got no answer within {deadline:g} s (transport.send_deadline_seconds); "
            "the client was stopped to free it"))
        cut = f"no answer within {deadline:g} s, so the client was stopped"
        if not done.wait(deadline):
            raise SendError("AMBIGUOUS", f"{cut}, and the engine did not return the send; "
                            "it may have been delivered", permanent=True, uncertain=True)
        return self._send_outcome(outcome, cut)

    def _send_outcome(self, outcome: dict[str, Any], cut: str) -> Any:
        """The send's response, or its engine error as a ``SendError`` (prefixed with
        ``cut`` when the deadline stopped the client)."""
        error = outcome.get("error")
        if error is None:
            return outcome["value"]
        if not isinstance(error, self.api.neonize_error):
            raise error
        mapped = send_error_from(str(error))
        if cut:
            raise SendError(mapped.reason, f"{cut}: {error}", permanent=mapped.permanent,
                            uncertain=mapped.uncertain) from error
        raise mapped from error

    def _run(self) -> None:
        """The connection thread: start Go, wait for it to end, report the end.

        The end is reported as ``Disconnected`` with neonize's error, or as an
        unexpected stop; after a requested stop (close, a final event) it is silent.
        """
        try:
            try:
                self.transport._prepare_storage()
            except OSError as exc:
                self._outcome = f"cannot prepare the session storage: {exc}"
            else:
                self._run_go()
            self.finished = True
            self.connected = False
            self._qr_closed.set()
            self.transport._tighten_db_files()
            self._take_pending_end()
            ban = None
            if unencodable_event(self._outcome or "") == ("TemporaryBan", "Code"):
                ban = _ENGINE_LOG.ban_since(
                    self._started_at, self.transport._config.transport.engine_detail_seconds)
            event = event_for_call_end(self._outcome, ban, time.time())
            if isinstance(event, LoggedOut):
                self.transport._forget_paired()  # whatsmeow deleted the device itself
            self._emit(event)
        except Exception:
            log.exception("the neonize connection thread failed", uuid=self.uuid)
        finally:
            self.finished = True
            self._stop_go()  # releases Go's resources (a no-op if already stopped)
            self._detach()

    def _run_go(self) -> None:
        """Enter Go under ``_GO_LOCK`` until its maps are written, then wait for the end."""
        with _GO_LOCK:
            if self.stop_requested:  # closed before Go was entered: nothing to undo
                return
            self._go_entered = True
            caller = threading.Thread(target=self._call_go, daemon=True,
                                      name=f"neonize-{self.uuid}-call")
            caller.start()
            self._settled.wait(_CONNECT_SETTLE_SECONDS)
        self.transport._tighten_db_files()  # Go has opened (and created) the database
        caller.join()

    def _call_go(self) -> None:
        """Sit in neonize's blocking connect for the life of the session."""
        try:
            self.client.connect(self.proxy)
        except self.api.neonize_error as exc:
            self._outcome = str(exc) or type(exc).__name__
        except Exception as exc:
            self._outcome = f"neonize failed: {exc!r}"
        finally:
            self._settled.set()

    def _stop_worker(self) -> None:
        try:
            self._take_pending_end()
            self._await_qr_channel_close()
            self._await_go_call_entry()
            self._stop_go()
        except Exception:
            log.exception("stopping the neonize client failed", uuid=self.uuid)

    def _await_qr_channel_close(self) -> None:
        """After a passkey request whatsmeow's QR channel stays open, and a Go stop
        would leave the Go call waiting forever: wait for the channel to close by
        itself (a final status, or its codes running out), at most until the last code
        expires (``qr.first_seconds + (qr.codes - 1) * qr.next_seconds`` after the
        first). The connection is silent meanwhile. (A stop while ordinary codes are
        shown still has that limit: see the module docstring.)"""
        with self.lock:
            window_end = self._qr_window_end if self._passkey_requested else None
        if window_end is None or self._qr_closed.is_set():
            return
        self.stop_deferred.set()
        log.info("stopping the client once its QR channel closes", uuid=self.uuid)
        self._qr_closed.wait(max(0.0, window_end - time.monotonic()))

    def _await_go_call_entry(self) -> None:
        """Wait until every Go call in flight has had time to read the client map."""
        while True:
            with self.lock:
                started = list(self._go_calls.values())
            now = time.monotonic()
            wait = max((start + _GO_CALL_ENTRY_GRACE_SECONDS - now for start in started),
                       default=0.0)
            if wait <= 0:
                return
            time.sleep(wait)

    def _stop_go(self) -> None:
        """Go ``Stop`` under the process-wide lock (it writes Go's client maps), at most
        once per client: both the stop thread and the connection thread's end come here,
        and a second ``Stop`` is one more unsynchronised map write racing the next
        client's start (goneonize ``Stop`` deletes from ``clients``, ``StopSignal`` and
        ``eventChannel``)."""
        with _GO_LOCK:
            if self._go_closed:
                return
            self._go_closed = True
            if not self._go_entered:
                return
            try:
                self.client.stop()
            except Exception:
                log.exception("neonize stop failed", uuid=self.uuid)

    def _register(self) -> None:
        """Subscribe the handlers; neonize tells Go the subscriptions at connect()."""
        api, event = self.api, self.client.event
        event.qr(self._on_qr)
        self.client.login_status_sink = self._on_login_status
        event(api.connected)(self._on_connected)
        event(api.disconnected)(self._on_disconnected)
        event(api.logged_out)(self._on_logged_out)
        event(api.stream_replaced)(self._on_stream_replaced)
        event(api.temporary_ban)(self._on_temporary_ban)
        event(api.client_outdated)(self._on_client_outdated)
        event(api.connect_failure)(self._on_connect_failure)
        event(api.keepalive_timeout)(self._on_keepalive_timeout)
        event(api.keepalive_restored)(self._on_keepalive_restored)
        event(api.receipt)(self._on_receipt)
        event(api.message_event)(self._on_message)
        event(api.pair_status)(self._on_pair_status)

    def _detach(self) -> None:
        """Drop the handlers once Go has returned, so the kept-alive client does not
        keep this connection (and its transport) alive too."""
        self.client.event.qr(_ignore_qr)
        self.client.login_status_sink = None
        self.client.event.list_func.clear()

    # ------------------------------------------------------------------ callbacks

    @contextlib.contextmanager
    def _callback(self, what: str) -> Iterator[None]:
        """Around every Go callback: Go is past its map writes once it calls back;
        an exception is logged here because ctypes would swallow it."""
        self._settled.set()
        if what not in ("qr", "login-status"):
            # The event pump only runs once goneonize's QR loop has ended.
            self._qr_closed.set()
        try:
            yield
        except Exception:
            log.exception("neonize callback failed", callback=what, uuid=self.uuid)

    def _emit(self, event: TransportEvent) -> bool:
        return self.transport._deliver(self, event)

    def _end(self, event: TransportEvent) -> None:
        """Report a final event, then stop the client (whatsmeow will not recover)."""
        self.connected = False
        self._emit(event)
        self.request_stop()

    def _on_qr(self, _client: Any, data: bytes) -> None:
        with self._callback("qr"):
            qr = self.transport._config.qr
            ttl = qr.first_seconds if self._qr_count == 0 else qr.next_seconds
            if self._qr_count == 0:
                with self.lock:
                    self._qr_window_end = (time.monotonic() + qr.first_seconds
                                           + max(0, qr.codes - 1) * qr.next_seconds)
            self._qr_count += 1
            self.qr_seen = True
            self._emit(QrCode(code=bytes(data).decode("utf-8", "replace"),
                              expires_at=time.time() + ttl))

    def _on_login_status(self, status: str) -> None:
        with self._callback("login-status"):
            if closes_qr_channel(status):
                self._qr_closed.set()
            if status == "success":
                self._emit(PairingClosed("success"))
            elif status == "err-client-outdated":
                self._end(ClientOutdated())
            elif pairing_needs_detail(status):
                self._await_pairing_detail(status)
            else:  # passkey-request/-confirmation, err-scanned-without-multidevice ...
                if status in PASSKEY_STATUSES:
                    with self.lock:
                        self._passkey_requested = True
                    log.warning("WhatsApp asked for passkey linking, which neonize cannot "
                                "complete", uuid=self.uuid, status=status)
                self._end(PairingClosed(status))

    def _await_pairing_detail(self, status: str) -> None:
        """Hold a pairing end whose reason the event pump delivers next (it starts once
        the QR loop has ended); report the bare status only if none came in time."""
        if self.stop_requested:
            return  # nothing is reported any more
        timer = threading.Timer(self.transport._config.transport.engine_detail_seconds,
                                self._pairing_detail_missed)
        timer.daemon = True
        timer.name = f"neonize-{self.uuid}-pairing"
        with self.lock:
            self._pending_end, self._pending_timer = status, timer
        timer.start()

    def _pairing_detail_missed(self) -> None:
        status = self._take_pending_end()
        if status is not None:
            self._end(PairingClosed(status))

    def _take_pending_end(self) -> str | None:
        """The pairing end still waiting for its reason (None if none); it is settled
        from now on, by the caller."""
        with self.lock:
            status, timer = self._pending_end, self._pending_timer
            self._pending_end = self._pending_timer = None
        if timer is not None:
            timer.cancel()
        return status

    def _on_pair_status(self, _client: Any, event: Any) -> None:
        """whatsmeow's PairSuccess / PairError; only an error's text is news (success
        came as the login status)."""
        with self._callback("pair-status"):
            if event.Status != self.api.pair_status_error:
                return
            self._take_pending_end()
            text = str(event.Error) if event.HasField("Error") else "no reason given"
            self._end(PairingClosed(f"error: {text}"))

    def _on_connected(self, client: Any, _event: Any) -> None:
        with self._callback("connected"):
            self._take_pending_end()  # "err-unexpected-state": it was paired already
            self._back(client)

    def _back(self, client: Any) -> None:
        """Connected again (a fresh login, or pings answered again)."""
        phone = self._own_phone(client)
        with self.lock:
            self.keepalive_lost = False
            self.connected = True
        self.qr_seen = False
        self.transport._mark_paired()
        self.transport._tighten_db_files()
        self._emit(Connected(phone))

    def _on_keepalive_timeout(self, _client: Any, event: Any) -> None:
        """A ping went unanswered (whatsmeow keepalive.go, every 20-30 s while it lasts).
        The socket may be black-holed: after 3 minutes whatsmeow drops it with its own
        ``Disconnect`` (an expected disconnect, so no ``Disconnected`` event) and
        reconnects silently. So the first one already counts as lost, recovering: sends
        are refused locally, the session shows RECONNECTING and its watchdog runs."""
        with self._callback("keepalive-timeout"):
            with self.lock:
                if not self.connected:
                    return  # already down, or another failed ping of the same outage
                self.connected = False
                self.keepalive_lost = True
            self._emit(Disconnected(_keepalive_reason(event), recovering=True))

    def _on_keepalive_restored(self, client: Any, _event: Any) -> None:
        """Pings are answered again on the same socket: connected, as after a login."""
        with self._callback("keepalive-restored"):
            with self.lock:
                if not self.keepalive_lost:
                    return  # a late one: the socket went down meanwhile (or never was)
            self._back(client)

    def _on_disconnected(self, _client: Any, _event: Any) -> None:
        with self._callback("disconnected"):
            with self.lock:
                self.connected = False
                self.keepalive_lost = False
            if self._take_pending_end() is not None:
                # whatsmeow's QR channel says "timeout" for a dropped socket too
                self._end(PairingClosed(CONNECTION_LOST))
                return
            self._emit(Disconnected("connection lost", recovering=True))

    def _on_logged_out(self, _client: Any, event: Any) -> None:
        with self._callback("logged-out"):
            self._take_pending_end()
            self.transport._forget_paired()  # whatsmeow deleted the device itself
            self._end(LoggedOut(_enum_name(event, "Reason")))

    def _on_stream_replaced(self, _client: Any, _event: Any) -> None:
        with self._callback("stream-replaced"):
            self._take_pending_end()
            self._end(StreamReplaced())

    def _on_temporary_ban(self, _client: Any, event: Any) -> None:
        with self._callback("temporary-ban"):
            self._take_pending_end()
            self._end(TemporaryBan(until=ban_until(int(event.Expire), time.time()),
                                   reason=_enum_name(event, "Code")))

    def _on_client_outdated(self, _client: Any, _event: Any) -> None:
        with self._callback("client-outdated"):
            self._take_pending_end()
            self._end(ClientOutdated())

    def _on_connect_failure(self, _client: Any, event: Any) -> None:
        with self._callback("connect-failure"):
            with self.lock:  # as every other handler that changes these flags
                self.connected = False
                self.keepalive_lost = False
            detail = f": {event.Message}" if event.Message else ""
            lost = Disconnected(f"connect failure {_enum_name(event, 'Reason')}{detail}")
            if self._take_pending_end() is not None:
                self._end(lost)  # the pairing's real end (whatsmeow does not reconnect)
                return
            self._emit(lost)

    def _on_receipt(self, _client: Any, event: Any) -> None:
        with self._callback("receipt"):
            kind = self.api.receipt_kinds.get(event.Type)
            if kind is None:
                return  # played, read-self, retry ...: nothing the gateway tracks
            phone = self._peer_phone(event.MessageSource)
            at = _unix_seconds(event.Timestamp) if event.Timestamp > 0 else 0.0
            for message_id in event.MessageIDs:
                self._emit(Receipt(message_id=message_id, kind=kind, phone=phone, at=at))

    def _on_message(self, _client: Any, event: Any) -> None:
        with self._callback("message"):
            incoming = incoming_from_event(event, self._sender_phone)
            if incoming is not None:
                self._emit(self._with_media(incoming, event))

    def _with_media(self, incoming: IncomingMessage, event: Any) -> IncomingMessage:
        """A picture, video, audio, document or sticker with its file: downloaded with
        the engine's ``download_any`` (decrypted by whatsmeow), unless it is larger than
        any media may be (``media.max_<kind>_mb``; then only its description is kept) or
        the download fails (logged; the message still arrives, without its file).
        READ, NOT RUN here: the download needs WhatsApp's media servers."""
        if incoming.kind not in DOWNLOADABLE_KINDS:
            return incoming
        meta = dict(incoming.meta)
        size = int(meta["fileLength"]) if meta.get("fileLength", "").isdigit() else 0
        if size > self.transport._max_media_bytes:
            log.info("a received file is larger than any media may be; not downloaded",
                     kind=incoming.kind, size=size)
            return incoming
        try:
            data = self.client.download_any(event.Message)
        except Exception as exc:  # the engine's DownloadError, or a dropped connection
            log.warning("a received file could not be downloaded", kind=incoming.kind,
                        error=str(exc))
            return incoming
        if not isinstance(data, bytes) or not data:
            return incoming
        return replace(incoming, media_data=data, file_name=meta.get("fileName", ""))

    def _sender_phone(self, source: Any) -> str:
        """The number of a message's author: in a group the sender, not the chat."""
        sender = source.Sender if source.Sender.User else source.Chat
        alternates = ([(source.SenderAlt.User, source.SenderAlt.Server)]
                      if source.HasField("SenderAlt") else [])
        return peer_phone(sender.User, sender.Server, alternates,
                          lambda _user: self._phone_of_lid(sender))

    def _peer_phone(self, source: Any) -> str:
        """The number of whoever a receipt (or message) came from: its chat's own number,
        or for a LID the number WhatsApp sent along (``sender_pn``), else the one the
        engine's LID store holds (filled by whatsmeow's lookup before every send)."""
        chat = source.Chat
        alternates = ([(source.SenderAlt.User, source.SenderAlt.Server)]
                      if source.HasField("SenderAlt") else [])
        return peer_phone(chat.User, chat.Server, alternates,
                          lambda _user: self._phone_of_lid(chat))

    def _phone_of_lid(self, lid: Any) -> str:
        """The engine's LID store (a local lookup; refused while the client stops)."""
        with self.go_call():
            return str(self.client.get_pn_from_lid(lid).User)

    def _own_phone(self, client: Any) -> str:
        """The linked account's number. ``get_me`` aborts the process on a client Go
        no longer knows, so it is only called under ``_GO_LOCK`` before any stop."""
        if not _GO_LOCK.acquire(timeout=_GET_ME_LOCK_SECONDS):
            return _phone_of(client.me)  # from neonize's Device event, if it came
        try:
            if self._go_closed:
                return _phone_of(client.me)
            return _phone_of(client.get_me())
        finally:
            _GO_LOCK.release()


# --------------------------------------------------------------------------- utilities


def send_error_from(text: str) -> SendError:
    """Map whatsmeow's error text for a failed send to a ``SendError``.

    First whether anything left: a failure of the lookups SendMessage makes before it
    writes the message never delivered it, so it is retryable (``NOT_CONNECTED``,
    ``LOOKUP_TIMEOUT``, ``SERVER_ERROR``, ``LOOKUP_FAILED``), or says the number has
    no account (``NOT_ON_WHATSAPP``), or that WhatsApp rate-limits the account's
    lookups (``RATE_OVERLIMIT``: the outbox pauses the session's sends). A send that
    was written but never acknowledged (a timeout, a socket closed before the ack)
    may still have been delivered, so it is ``AMBIGUOUS`` and ``uncertain``: the
    outbox flags it, and sends it again only as ``delivery.on_uncertain`` says.
    """
    lowered = text.lower()
    if _NO_ACCOUNT.search(lowered):
        return SendError(NOT_ON_WHATSAPP, text, permanent=True)
    if any(marker in lowered for marker in _PRE_SEND_MARKERS):
        return _pre_send_error(text, lowered)
    if any(marker in lowered for marker in _AMBIGUOUS_MARKERS):
        return SendError("AMBIGUOUS", text, permanent=True, uncertain=True)
    if _REACHOUT_TIMELOCK.search(text):
        return SendError("REACHOUT_TIMELOCK", text, permanent=True)
    ack = _ERROR_ACK.search(lowered)
    if ack is not None:
        code = ack.group(1)
        meaning = _ERROR_ACK_MEANINGS.get(code, "the server refused the message")
        return SendError("SERVER_ERROR_ACK", f"{text} ({meaning}; WhatsApp error {code})",
                         permanent=True)
    if any(marker in lowered for marker in _NOT_CONNECTED_MARKERS):
        return SendError(_NOT_CONNECTED, text, permanent=False)
    if _RATE_OVERLIMIT.search(lowered):
        return SendError(RATE_OVERLIMIT, text, permanent=False)
    return SendError("REJECTED", text, permanent=True)


def _pre_send_error(text: str, lowered: str) -> SendError:
    """A lookup before the message was written failed: nothing was sent."""
    if "not connected" in lowered or "disconnected" in lowered:
        return SendError(_NOT_CONNECTED, text, permanent=False)
    if _RATE_OVERLIMIT.search(lowered):
        return SendError(RATE_OVERLIMIT, text, permanent=False)
    if "timed out" in lowered:
        return SendError("LOOKUP_TIMEOUT", text, permanent=False)
    if _SERVER_TROUBLE.search(lowered):
        return SendError("SERVER_ERROR", text, permanent=False)
    return SendError("LOOKUP_FAILED", text, permanent=False)


def lookup_error_from(text: str) -> SendError:
    """Map whatsmeow's error text for a failed lookup: never a verdict on the numbers,
    always "unknown" (a lookup changes nothing, so none is ``uncertain``)."""
    lowered = text.lower()
    if any(marker in lowered for marker in _NOT_CONNECTED_MARKERS):
        return SendError(_NOT_CONNECTED, text, permanent=False)
    if _RATE_OVERLIMIT.search(lowered):  # WhatsApp refuses more lookups for now
        return SendError("RATE_LIMITED", text, permanent=False)
    if "timed out" in lowered or "timeout" in lowered:
        return SendError("TIMEOUT", text, permanent=False)
    return SendError("LOOKUP_FAILED", text, permanent=False)


def numbers_from_responses(phones: list[str], responses: Any) -> list[NumberInfo]:
    """Pair ``IsOnWhatsAppResponse``s (Query, JID, IsIn, VerifiedName) with the numbers
    asked. The server may answer out of order or leave some out: a number is matched
    by the digits of its ``Query``; one without an answer raises (unknown, never "no")."""
    by_digits: dict[str, NumberInfo] = {}
    for response in responses or ():
        digits = "".join(c for c in str(getattr(response, "Query", "")) if c.isdigit())
        on = bool(getattr(response, "IsIn", False))
        jid = _jid_text(getattr(response, "JID", None)) if on else ""
        # A verified business name marks a business account; its absence says nothing.
        business = True if on and _has_field(response, "VerifiedName") else None
        by_digits[digits] = NumberInfo(digits, on, jid, business=business)
    missing = [phone for phone in phones if phone not in by_digits]
    if missing:
        raise SendError("LOOKUP_FAILED", f"WhatsApp did not answer for {len(missing)} of "
                        f"{len(phones)} numbers", permanent=False)
    return [by_digits[phone] for phone in phones]


def _jid_text(jid: Any) -> str:
    """``user@server`` of a protobuf JID ("" when absent)."""
    user, server = str(getattr(jid, "User", "") or ""), str(getattr(jid, "Server", "") or "")
    return f"{user}@{server}" if user and server else ""


def _has_field(message: Any, name: str) -> bool:
    try:
        return bool(message.HasField(name))
    except (AttributeError, ValueError):
        return getattr(message, name, None) is not None


def _phone_of(device: Any) -> str:
    """Digits of a device's own JID user ("4917...:7" or "4917..." -> "4917...")."""
    try:
        user = str(device.JID.User) if device is not None and device.HasField("JID") else ""
    except (AttributeError, ValueError):
        return ""
    return "".join(c for c in user.split(":", 1)[0].split(".", 1)[0] if c.isdigit())


def _keepalive_reason(event: Any) -> str:
    """What a ``KeepAliveTimeout`` says, for the session's lastError."""
    try:
        last = time.strftime("%H:%M:%S UTC", time.gmtime(int(event.LastSuccess)))
    except (OverflowError, OSError, ValueError):
        last = "unknown"
    return (f"keepalive timed out: WhatsApp did not answer {int(event.ErrorCount)} ping(s), "
            f"last answer at {last}; the engine is recovering the connection")


def _enum_name(event: Any, field: str) -> str:
    """The symbolic name of an enum field (``LOGGED_OUT``), or its number."""
    value = getattr(event, field)
    try:
        return str(event.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[value].name)
    except (KeyError, AttributeError):
        return str(value)


def _jid_of(api: _Api, address: str) -> Any:
    """A ``user@server`` address as the engine's JID."""
    user, _, server = address.partition("@")
    return api.build_jid(user, server or "s.whatsapp.net")


def _unix_seconds(value: float) -> float:
    """neonize reports send timestamps in unix seconds; tolerate ms or ns too, as
    other neonize encoders use them."""
    value = float(value)
    if value > 1e17:
        return value / 1e9
    if value > 1e11:
        return value / 1e3
    return value


def _store_dsn(store: str, session_id: str) -> str:
    """The configured device store for this session: "" (SQLite) or a Postgres DSN."""
    if not store:
        return ""
    if store.startswith(("postgres://", "postgresql://")):
        return store.replace("{session}", session_id)
    raise ValueError("transport.session_store must be empty (one SQLite file per session) "
                     "or a postgres:// / postgresql:// DSN")


