"""Scenarios that load neonize, each run in a child process by ``tests/neonize``.

Why a child process: neonize starts a Go runtime in whatever process imports it,
and a process that has it must never fork (its children hang: docs/engine-behaviour.md,
"A process that loaded the engine must not fork"); a Go
panic would also take pytest down with it. So the pytest process never imports
neonize: each scenario runs here, in ``python -m tests.neonize.scenarios NAME DIR``
(inside ``unshare -n`` when the host allows it), and writes what it observed as
JSON to ``DIR/result.json`` for the test to assert on.

Nothing here may reach beyond 127.0.0.0/8: every client that dials gets a proxy on
127.0.0.1 (a ``FaultProxy`` or a refused port), and the event scenarios never dial
at all (they drive the handlers through neonize's own ctypes dispatch, with the Go
side replaced by ``FakeGo`` where a handler or a send would call into it).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from actors.transport.base import EngineSetupError, OutgoingMedia, SendError, TransportEvent
from actors.transport.neonize import NeonizeTransport, send_error_from
from gateway.core.config import Config, LoggingConfig, QrConfig, TransportConfig
from tests.neonize.fault_proxy import FaultProxy, refused_port

SESSION = "s1"
# whatsmeow's own error texts of a failed SendMessage (send.go, request.go, errors.go),
# fed back through neonize's real return path (tests/neonize/test_neonize_transport.py).
ENGINE_SEND_ERRORS = (
    # the client stopped (reconnect, watchdog, deadline, shutdown) after the node left
    "websocket disconnected before message send returned response",
    "websocket disconnected before message send (retry) returned response",
    # lookups before the node is written: nothing left
    "failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
    "failed to send usync query: info query timed out",
    # a device JID whose device number is 463 is not the 463 reach-out timelock
    "failed to get user info for 4917011111111:463@s.whatsapp.net to fill LID cache: "
    "failed to send usync query: info query timed out",
    "failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
    "failed to send usync query: info query returned status 429: rate-overlimit",
    "failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
    "failed to send usync query: info query returned status 500: internal-server-error",
    "failed to get device list: failed to send usync query: info query returned status "
    "503: service-unavailable",
    "failed to get device list: failed to send usync query: websocket disconnected before "
    "info query returned response",
    "no LID found for 4917011111111@s.whatsapp.net from server",
    "failed to send message node: websocket not connected",
    # the engine's own store, read before encrypting: nothing left
    "failed to prefetch sessions: database is locked",
)
FIRST_QR_SECONDS = 60.0
NEXT_QR_SECONDS = 20.0
# How long a pairing end waits for the engine's event that says why (shrunk for tests).
ENGINE_DETAIL_SECONDS = 0.3


# --------------------------------------------------------------------------- helpers


class Recorder:
    """A thread-safe event sink that notes when each event arrived."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[tuple[float, TransportEvent]] = []
        self.threads: list[str] = []  # the thread each event was delivered on

    def __call__(self, event: TransportEvent) -> None:
        with self._cond:
            self.events.append((time.monotonic(), event))
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[TransportEvent]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([event for _, event in self.events]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def after(self, moment: float) -> list[dict[str, Any]]:
        with self._cond:
            return [describe(event) for at, event in self.events if at > moment]

    def all(self) -> list[dict[str, Any]]:
        with self._cond:
            return [describe(event) for _, event in self.events]


def describe(event: TransportEvent) -> dict[str, Any]:
    """An event as JSON: its class name and fields (bytes as hex)."""
    fields = {name: getattr(event, name) for name in getattr(event, "__slots__", ())}
    fields = {name: value.hex() if isinstance(value, bytes) else value
              for name, value in fields.items()}
    return {"type": type(event).__name__, **fields}


DOWNLOADED = b"\x89PNG\r\n\x1a\n what the engine downloaded"


def config(proxy: str = "") -> Config:
    return Config(transport=TransportConfig(proxy=proxy,
                                            engine_detail_seconds=ENGINE_DETAIL_SECONDS),
                  qr=QrConfig(first_seconds=FIRST_QR_SECONDS, next_seconds=NEXT_QR_SECONDS))


def mode_of(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def storage_modes(data_dir: Path) -> dict[str, int | None]:
    session_dir = data_dir / "sessions" / SESSION
    return {
        "sessions": mode_of(data_dir / "sessions"),
        "session": mode_of(session_dir),
        **{name: mode_of(session_dir / name)
           for name in ("neonize.db", "neonize.db-wal", "neonize.db-shm")},
    }


def non_daemon_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread()]


def send_error_fields(exc: SendError) -> dict[str, Any]:
    return {"reason": exc.reason, "permanent": exc.permanent, "message": str(exc)}


def fabricate_device(db_path: Path, user: str = "4917012345678") -> None:
    """Insert a device row satisfying whatsmeow's schema (random keys): what a linked
    session stores, minus anything that would let it log in."""
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key,"
            " signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details,"
            " adv_account_sig, adv_account_sig_key, adv_device_sig)"
            " VALUES (?, 1, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            (f"{user}:7@s.whatsapp.net", secrets.token_bytes(32), secrets.token_bytes(32),
             secrets.token_bytes(32), secrets.token_bytes(64), secrets.token_bytes(32),
             secrets.token_bytes(16), secrets.token_bytes(64), secrets.token_bytes(32),
             secrets.token_bytes(64)))


# --------------------------------------------------------------------------- dialing


def dial_failure(workdir: Path, mode: str) -> dict[str, Any]:
    """One connect through a failing proxy: what it reports, and a clean close."""
    data_dir = workdir / "data"
    proxy = None if mode == "refused" else FaultProxy(mode).start()
    address = proxy.address if proxy else f"http://127.0.0.1:{refused_port()}"
    try:
        transport = NeonizeTransport(SESSION, data_dir, config(address))
        sink = Recorder()
        try:
            transport.send_text("4917012345678", "hi")
            early_send: dict[str, Any] | None = None
        except SendError as exc:
            early_send = send_error_fields(exc)
        try:
            transport.check_numbers(["4917012345678"])
            early_lookup: dict[str, Any] | None = None
        except SendError as exc:
            early_lookup = send_error_fields(exc)
        started = time.monotonic()
        transport.connect(sink)
        connect_returned = time.monotonic() - started
        got = sink.wait_for(lambda events: bool(events), timeout=10.0)
        first_after = time.monotonic() - started
        time.sleep(0.5)  # any second event would arrive now
        before_close = time.monotonic()
        transport.close()
        close_took = time.monotonic() - before_close
        transport.close()  # idempotent
        closed = transport.wait_closed(15.0)
        time.sleep(0.2)  # a quiet spell in which a late event would show up
        result = {
            "got_event": got,
            "events": sink.all(),
            "events_after_close": sink.after(before_close),
            "first_event_seconds": first_after,
            "connect_returned_seconds": connect_returned,
            "close_seconds": close_took,
            "wait_closed": closed,
            "early_send": early_send,
            "early_lookup": early_lookup,
            "modes": storage_modes(data_dir),
            "has_credentials": transport.has_credentials(),
            "non_daemon_threads": non_daemon_threads(),
        }
    finally:
        if proxy is not None:
            proxy.stop()
    if proxy is not None:
        result.update(proxy_connections=proxy.connections, proxy_requests=proxy.requests,
                      proxy_threads=proxy.threads_alive())
    return result


def tls_hang(workdir: Path) -> dict[str, Any]:
    """Close while the TLS handshake through the proxy hangs (Go waits 10 s)."""
    data_dir = workdir / "data"
    with FaultProxy("tls_hang") as proxy:
        transport = NeonizeTransport(SESSION, data_dir, config(proxy.address))
        sink = Recorder()
        started = time.monotonic()
        transport.connect(sink)
        deadline = time.monotonic() + 5.0  # until the client sent its TLS hello
        while proxy.drained_bytes == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        before_close = time.monotonic()
        transport.close()
        close_took = time.monotonic() - before_close
        closed = transport.wait_closed(20.0)
        stop_done = time.monotonic() - before_close
        time.sleep(0.2)  # a quiet spell in which a late event would show up
        result = {
            "proxy_requests": proxy.requests,
            "tls_hello_bytes": proxy.drained_bytes,
            "dialing_for": before_close - started,
            "close_seconds": close_took,
            "wait_closed": closed,
            "stop_done_seconds": stop_done,
            "events": sink.all(),
            "events_after_close": sink.after(before_close),
            "non_daemon_threads": non_daemon_threads(),
        }
    result["proxy_threads"] = proxy.threads_alive()
    return result


def storage(workdir: Path) -> dict[str, Any]:
    """Files after a failed connect; has_credentials on an empty and a linked store;
    the real Go error texts of a stopped client; logout deletes the files."""
    data_dir = workdir / "data"
    transport = NeonizeTransport(SESSION, data_dir, config(f"http://127.0.0.1:{refused_port()}"))
    before = transport.has_credentials()
    sink = Recorder()
    transport.connect(sink)
    sink.wait_for(bool, timeout=10.0)
    conn = transport._conn
    assert conn is not None
    transport.wait_closed(10.0)  # the connection thread also stopped the Go client
    db_path = data_dir / "sessions" / SESSION / "neonize.db"
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
        columns = [(row[1], bool(row[3]), row[4] is not None)
                   for row in db.execute("PRAGMA table_info(whatsmeow_device)")]
    empty = transport.has_credentials()
    fabricate_device(db_path)
    linked = transport.has_credentials()
    # What the real Go side answers a stopped client, mapped as send_text would.
    from neonize.exc import NeonizeError  # only in this child process
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message
    try:
        conn.client.send_message("4917012345678", Message(conversation="x"))
        go_send: dict[str, Any] | None = None
    except NeonizeError as exc:
        go_send = send_error_fields(send_error_from(str(exc)))
    modes = storage_modes(data_dir)
    transport.logout()
    transport.close()
    closed = transport.wait_closed(10.0)
    left = sorted(p.name for p in (data_dir / "sessions" / SESSION).iterdir())
    return {
        "events": sink.all(), "before": before, "empty": empty, "linked": linked,
        "journal_mode": journal, "device_columns": columns, "go_send": go_send,
        "modes": modes, "after_logout": transport.has_credentials(), "files_left": left,
        "wait_closed": closed, "non_daemon_threads": non_daemon_threads(),
    }


# --------------------------------------------------------------------------- events


class FakeGo:
    """Stands in for neonize's Go library on one client (``_NewClient__client``):
    records what would be sent and answers like Go would."""

    def __init__(self, own_user: str = "4917012345678") -> None:
        from neonize.proto import Neonize_pb2 as proto

        self.proto = proto
        self.own_user = own_user
        self.sent: list[tuple[Any, Any]] = []
        self.send_error = ""
        self.pair_error = ""
        self.pair_calls: list[Any] = []
        self.logouts = 0
        self.stops = 0
        self.lids: dict[str, str] = {}
        self.lid_lookups: list[str] = []
        self.presences: list[dict[str, Any]] = []
        self.presence_error = ""
        self.lookups: list[list[str]] = []
        self.lookup_error = ""
        self.registered: set[str] = set()
        self.business = ""
        self.read_marks: list[dict[str, Any]] = []
        self.uploads: list[tuple[int, int]] = []  # (bytes, neonize MediaType value)
        self.upload_error = ""
        self.downloads = 0
        self.download_error = ""

    def Upload(self, uuid: bytes, binary: bytes, length: int, media_type: int) -> bytes:
        self.uploads.append((int(length), int(media_type)))
        if self.upload_error:
            return self.proto.UploadReturnFunction(Error=self.upload_error).SerializeToString()
        response = self.proto.UploadResponse(
            url="https://mmg.whatsapp.net/d/f/x.enc", DirectPath="/v/t62/x.enc", Handle="",
            MediaKey=b"k" * 32, FileEncSHA256=b"e" * 32, FileSHA256=b"s" * 32,
            FileLength=int(length))
        return self.proto.UploadReturnFunction(UploadResponse=response).SerializeToString()

    def DownloadAny(self, uuid: bytes, msg: bytes, msg_len: int) -> bytes:
        self.downloads += 1
        if self.download_error:
            return self.proto.DownloadReturnFunction(
                Error=self.download_error).SerializeToString()
        return self.proto.DownloadReturnFunction(Binary=DOWNLOADED).SerializeToString()

    def MarkRead(self, uuid: bytes, ids: bytes, timestamp: int, chat: bytes, chat_len: int,
                 sender: bytes, sender_len: int, receipt: bytes) -> bytes:
        to = self.proto.JID.FromString(bytes(chat)[:chat_len])
        by = self.proto.JID.FromString(bytes(sender)[:sender_len])
        self.read_marks.append({"ids": bytes(ids).decode().split(" "),
                                "chat": f"{to.User}@{to.Server}",
                                "sender": f"{by.User}@{by.Server}",
                                "receipt": bytes(receipt).decode()})
        return b""

    def GetMe(self, uuid: bytes) -> bytes:
        jid = self.proto.JID(User=self.own_user, RawAgent=0, Device=12, Integrator=0,
                             Server="s.whatsapp.net", IsEmpty=False)
        return self.proto.Device(JID=jid, Platform="", BussinessName="", PushName="gw",
                                 Initialized=True).SerializeToString()

    def SendMessage(self, uuid: bytes, to: bytes, to_len: int, msg: bytes,
                    msg_len: int) -> bytes:
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

        self.sent.append((self.proto.JID.FromString(bytes(to)), Message.FromString(bytes(msg))))
        if self.send_error:
            return self.proto.SendMessageReturnFunction(Error=self.send_error).SerializeToString()
        response = self.proto.SendResponse(
            Timestamp=1_700_000_000, ID="3EB0C0FFEE", ServerID=0,
            DebugTimings=self.proto.MessageDebugTimings(
                Queue=0, Marshal=0, GetParticipants=0, GetDevices=0, GroupEncrypt=0,
                PeerEncrypt=0, Send=0, Resp=0, Retry=0))
        return self.proto.SendMessageReturnFunction(SendResponse=response).SerializeToString()

    def PairPhone(self, uuid: bytes, payload: bytes, size: int) -> bytes:
        self.pair_calls.append(self.proto.PairPhoneParams.FromString(bytes(payload)))
        if self.pair_error:
            return self.proto.PairPhoneReturnFunction(Error=self.pair_error).SerializeToString()
        return self.proto.PairPhoneReturnFunction(Code="ABCD-EFGH").SerializeToString()

    def Logout(self, uuid: bytes) -> bytes:
        self.logouts += 1
        return b""

    def SendChatPresence(self, uuid: bytes, jid: bytes, size: int, state: int,
                         media: int) -> bytes:
        to = self.proto.JID.FromString(bytes(jid)[:size])
        self.presences.append({"to": f"{to.User}@{to.Server}", "state": state, "media": media})
        return self.presence_error.encode()

    def GetPNFromLID(self, uuid: bytes, jid: bytes, size: int) -> bytes:
        """The engine's LID store: ``lids`` maps LID users to numbers."""
        lid = self.proto.JID.FromString(bytes(jid)[:size])
        self.lid_lookups.append(f"{lid.User}@{lid.Server}")
        user = self.lids.get(lid.User)
        if user is None:
            return self.proto.GetJIDFromStoreReturnFunction(
                Error="no phone number known for this LID").SerializeToString()
        return self.proto.GetJIDFromStoreReturnFunction(
            Jid=self.proto.JID(User=user, RawAgent=0, Device=0, Integrator=0,
                               Server="s.whatsapp.net", IsEmpty=False)).SerializeToString()

    def IsOnWhatsApp(self, uuid: bytes, numbers: bytes, size: int) -> bytes:
        """A usync lookup: ``registered`` numbers have an account (one of them a
        verified business); ``lookup_error`` fails the query as Go would."""
        asked = bytes(numbers)[:size].decode().split(" ")
        self.lookups.append(asked)
        if self.lookup_error:
            return self.proto.IsOnWhatsAppReturnFunction(
                Error=self.lookup_error).SerializeToString()
        answers = []
        for query in asked:
            user = query.removeprefix("+")
            on = user in self.registered
            answers.append(self.proto.IsOnWhatsAppResponse(
                Query=query, IsIn=on,
                JID=self.proto.JID(User=user, RawAgent=0, Device=0, Integrator=0,
                                   Server="s.whatsapp.net", IsEmpty=False),
                **({"VerifiedName": self.proto.VerifiedName()}
                   if on and user == self.business else {})))
        return self.proto.IsOnWhatsAppReturnFunction(
            IsOnWhatsAppResponse=answers).SerializeToString()

    def Stop(self, uuid: bytes) -> None:
        self.stops += 1


class EventHarness:
    """One transport whose connections are opened but never dialed; events go in
    through neonize's real ctypes callback path."""

    def __init__(self, workdir: Path) -> None:
        from neonize._binder import func_callback_bytes, func_string
        from neonize.events import EVENT_TO_INT
        from neonize.proto import Neonize_pb2 as proto

        self.proto = proto
        self.func_callback_bytes = func_callback_bytes
        self.func_string = func_string
        self.codes = EVENT_TO_INT
        self.transport = NeonizeTransport(SESSION, workdir / "data", config())
        self.sink = Recorder()
        self.go = FakeGo()
        self.conn: Any = None
        self.fresh()

    def fresh(self) -> Any:
        """A new connection with FakeGo behind it (the previous one must be over)."""
        conn = self.transport._open(self.sink)
        assert conn is not None, "the previous connection is still live"
        conn.client._NewClient__client = self.go
        self.conn = conn
        return conn

    def feed(self, event: Any) -> None:
        data = event.SerializeToString()
        code = self.codes[type(event)]
        callback = self.func_callback_bytes(self.conn.client.event.execute)
        if data:
            buffer = ctypes.create_string_buffer(data, len(data))
            callback(self.conn.client.uuid, ctypes.addressof(buffer), len(data), code)
        else:  # empty payloads come as (NULL, 0) from Go 0.5.2
            callback(self.conn.client.uuid, None, 0, code)

    def qr(self, payload: bytes) -> None:
        buffer = ctypes.create_string_buffer(payload)
        self.func_string(self.conn.client._NewClient__onQr)(None, ctypes.addressof(buffer))

    def login_status(self, status: bytes) -> None:
        buffer = ctypes.create_string_buffer(status)
        self.func_string(self.conn.client._NewClient__onLoginStatus)(
            None, ctypes.addressof(buffer))

    def wait_for_more(self, timeout: float = 10.0) -> bool:
        """Wait until an event arrived since the last take."""
        taken = getattr(self, "_taken", 0)
        return self.sink.wait_for(lambda events: len(events) > taken, timeout)

    def take(self) -> list[dict[str, Any]]:
        """Events since the last take."""
        events = self.sink.all()
        taken = events[getattr(self, "_taken", 0):]
        self._taken = len(events)
        return taken

    def jid(self, user: str, server: str = "s.whatsapp.net") -> Any:
        return self.proto.JID(User=user, RawAgent=0, Device=0, Integrator=0,
                              Server=server, IsEmpty=not user)

    def receipt(self, ids: list[str], kind: int, chat: Any = None, alt: Any = None,
                timestamp: int = 1_700_000_000) -> Any:
        """A receipt from ``chat`` (a number by default); ``alt``: the number WhatsApp
        sends along with a LID (``sender_pn``), an empty address when it sends none."""
        chat = chat if chat is not None else self.jid("4917099999999")
        alt = alt if alt is not None else (chat if chat.Server == "s.whatsapp.net"
                                           else self.jid("", ""))
        source = self.proto.MessageSource(Chat=chat, Sender=chat, IsFromMe=False, IsGroup=False,
                                          SenderAlt=alt, RecipientAlt=self.jid("", ""),
                                          BroadcastListOwner=self.jid("", ""))
        return self.proto.Receipt(MessageSource=source, MessageIDs=ids,
                                  Timestamp=timestamp, Type=kind)


def keepalive(h: EventHarness) -> dict[str, Any]:
    """A black-holed link on a connected client: whatsmeow's pings fail (it reports
    each failed one, and drops the socket itself after 3 minutes without telling),
    then either they are answered again or the socket goes down for real."""
    proto = h.proto
    out: dict[str, Any] = {}
    sent_before = len(h.go.sent)
    h.feed(proto.KeepAliveTimeout(ErrorCount=1, LastSuccess=1_700_000_000))
    h.feed(proto.KeepAliveTimeout(ErrorCount=2, LastSuccess=1_700_000_000))  # same outage
    try:
        h.transport.send_text("4917011111111", "into a dead socket?")
    except SendError as exc:
        out["send_while_lost"] = send_error_fields(exc)
    out["sends_reaching_go"] = len(h.go.sent) - sent_before
    h.feed(proto.KeepAliveRestored())
    h.feed(proto.KeepAliveRestored())  # nothing was lost any more
    out["lost_then_restored"] = h.take()
    out["send_after_restored"] = h.transport.send_text("4917011111111", "back").message_id
    # Lost, then whatsmeow's forced reconnect: a late "restored" of the old socket is
    # no comeback; only the new login's Connected is.
    h.feed(proto.KeepAliveTimeout(ErrorCount=1, LastSuccess=1_700_000_000))
    h.feed(proto.Disconnected(status=True))
    h.feed(proto.KeepAliveRestored())
    h.feed(proto.Connected(status=True))
    out["lost_then_reconnected"] = h.take()
    # A timeout while not connected (a socket already reported down) says nothing new.
    h.feed(proto.Disconnected(status=True))
    h.feed(proto.KeepAliveTimeout(ErrorCount=1, LastSuccess=1_700_000_000))
    h.feed(proto.Connected(status=True))
    out["timeout_while_down"] = h.take()
    return out


def incoming_messages(h: EventHarness) -> dict[str, Any]:
    """Messages written to the account, as WhatsApp's Message events (neonize's real
    protobufs through its ctypes dispatch), then one read receipt back through Go."""
    from neonize.proto.waCommon import WACommon_pb2 as common
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    proto, empty = h.proto, h.jid("", "")
    ann, lid, group = h.jid("4917099999999"), h.jid("123456789012345", "lid"), \
        h.jid("120363000000000001", "g.us")
    h.go.lids["123456789012345"] = "4917077777777"

    def event(message: Any, *, chat: Any = ann, sender: Any = ann, alt: Any = empty,
              from_me: bool = False, msg_id: str = "3EB0M1", name: str = "Ann") -> Any:
        source = proto.MessageSource(Chat=chat, Sender=sender, IsFromMe=from_me,
                                     IsGroup=chat.Server == "g.us", SenderAlt=alt,
                                     RecipientAlt=empty, BroadcastListOwner=empty)
        info = proto.MessageInfo(MessageSource=source, ID=msg_id, ServerID=0, Type="text",
                                 Pushname=name, Timestamp=1_700_000_000, Category="",
                                 Multicast=False, MediaType="", Edit="")
        return proto.Message(Info=info, Message=message, IsEphemeral=False, IsViewOnce=False,
                             IsViewOnceV2=False, IsViewOnceV2Extension=False,
                             IsDocumentWithCaption=False, IsLottieSticker=False,
                             IsEdit=False, UnavailableRequestID="", RetryCount=0)

    quote = e2e.ContextInfo(stanzaID="3EB0AAA")
    h.feed(event(e2e.Message(conversation="STOP")))
    h.feed(event(e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(
        text="thanks!", contextInfo=quote)), msg_id="3EB0M2"))
    h.feed(event(e2e.Message(conversation="by lid"), chat=lid, sender=lid, msg_id="3EB0M3"))
    h.feed(event(e2e.Message(imageMessage=e2e.ImageMessage(
        caption="look", mimetype="image/jpeg", fileLength=2048)), chat=group, sender=ann,
        msg_id="3EB0M4"))
    h.go.download_error = "failed to download: 404"  # arrives all the same, without a file
    h.feed(event(e2e.Message(documentMessage=e2e.DocumentMessage(
        fileName="a.pdf", mimetype="application/pdf", fileLength=10)), msg_id="3EB0M8"))
    h.go.download_error = ""
    h.feed(event(e2e.Message(videoMessage=e2e.VideoMessage(  # more than any media may be
        mimetype="video/mp4", fileLength=3 * 1024**3)), msg_id="3EB0M9"))
    h.feed(event(e2e.Message(conversation="mine"), from_me=True, msg_id="3EB0M5"))
    h.feed(event(e2e.Message(protocolMessage=e2e.ProtocolMessage()), msg_id="3EB0M6"))
    h.feed(event(e2e.Message(reactionMessage=e2e.ReactionMessage(
        text="👍", key=common.MessageKey(ID="3EB0BBB"))), msg_id="3EB0M7"))
    received = h.take()
    downloads = h.go.downloads
    h.transport.mark_read("4917099999999@s.whatsapp.net", "4917099999999@s.whatsapp.net",
                          ["3EB0M1", "3EB0M2"])
    return {"received": received, "read_marks": h.go.read_marks, "downloads": downloads}


def media_sends(h: EventHarness) -> dict[str, Any]:
    """send_media against FakeGo: each kind uploaded with the engine's own upload (no
    ffmpeg), the message naming the upload; an upload error is UPLOAD_FAILED, retried."""
    from tests import media_fixtures as fx

    out: dict[str, Any] = {}
    for kind, data, mime in (("IMAGE", fx.png(), "image/png"),
                             ("DOCUMENT", fx.pdf(), "application/pdf"),
                             ("VOICE", fx.ogg_opus(), "audio/ogg"),
                             ("VIDEO", fx.mp4(), "video/mp4"),
                             ("STICKER", fx.webp(), "image/webp")):
        media = OutgoingMedia(kind=kind, mime=mime, data=data, caption="cap",
                              file_name="a.pdf")
        sent = h.transport.send_media("4917011111111", media)
        _, message = h.go.sent[-1]
        field = next(f.name for f, _ in message.ListFields())
        part = getattr(message, field)
        out[kind] = {"id": sent.message_id, "field": field, "url": part.URL,
                     "length": part.fileLength, "mimetype": part.mimetype,
                     "upload": list(h.go.uploads[-1]),
                     "caption": part.caption if part.DESCRIPTOR.fields_by_name.get("caption")
                     else None,
                     "ptt": part.PTT if field == "audioMessage" else None,
                     "file_name": part.fileName if field == "documentMessage" else None}
    h.go.upload_error = "failed to upload: 500"
    try:
        h.transport.send_media("4917011111111", OutgoingMedia(
            kind="DOCUMENT", mime="application/pdf", data=fx.pdf()))
    except SendError as exc:
        out["upload_failed"] = send_error_fields(exc)
    h.go.upload_error = ""
    return out


def events(workdir: Path) -> dict[str, Any]:
    """Every mapped event, fed through neonize's ctypes dispatch; sends and pairing
    codes against FakeGo; terminal events silence their connection."""
    h = EventHarness(workdir)
    proto = h.proto
    out: dict[str, Any] = {}

    # Pairing: QR codes (payload untouched), a pairing code, then success.
    payload = (b"https://wa.me/settings/linked_devices#2@AbC+/=,nOiSe+/=,iDeNt=,aDv=,1")
    try:
        h.transport.request_pairing_code("4917012345678")
    except SendError as exc:
        out["pair_before_qr"] = send_error_fields(exc)
    before = time.time()
    h.qr(payload)
    h.qr(payload + b"2")
    after = time.time()
    out["qr"] = h.take()
    out["qr_window"] = [before, after]
    out["qr_payload"] = payload.decode()
    out["pair_code"] = h.transport.request_pairing_code("+49 170 1234-5678")
    out["pair_params"] = {"phone": h.go.pair_calls[-1].phone,
                          "push": h.go.pair_calls[-1].showPushNotification,
                          "client_type": h.go.pair_calls[-1].clientType,
                          "display_name": h.go.pair_calls[-1].clientDisplayName}
    h.go.pair_error = "websocket not connected"
    try:
        h.transport.request_pairing_code("4917012345678")
    except SendError as exc:
        out["pair_error"] = send_error_fields(exc)
    h.login_status(b"success")
    out["login_success"] = h.take()

    # Connected, sends, receipts, a drop and whatsmeow's own reconnect.
    h.feed(proto.Connected(status=True))
    out["connected"] = h.take()
    sent = h.transport.send_text("4917011111111", "hello @4917022222222 https://example.com")
    to, message = h.go.sent[-1]
    out["send"] = {"id": sent.message_id, "timestamp": sent.timestamp,
                   "to_user": to.User, "to_server": to.Server,
                   "conversation": message.conversation,
                   "has_extended": message.HasField("extendedTextMessage")}
    h.transport.send_typing("+4917011111111")
    h.go.presence_error = "websocket not connected"
    h.transport.send_typing("4917011111111")  # a failure is only a missing indicator
    h.go.presence_error = ""
    h.transport.send_typing("not-a-number")  # never reaches Go
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia
    out["typing"] = {"calls": list(h.go.presences),
                     "composing": ChatPresence.CHAT_PRESENCE_COMPOSING.value,
                     "text": ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT.value}
    out["send_errors"] = {}
    for text in ("failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
                 "failed to send usync query: websocket not connected",
                 "client is nil",
                 "timed out waiting for message send response",
                 "server returned error 463",
                 "server returned error 479",
                 "websocket disconnected before info query returned response",
                 "failed to get user info for 4917011111111@s.whatsapp.net to fill LID cache: "
                 "failed to send usync query: websocket disconnected before info query "
                 "returned response",
                 *ENGINE_SEND_ERRORS):
        h.go.send_error = text
        try:
            h.transport.send_text("4917011111111", "x")
        except SendError as exc:
            out["send_errors"][text] = send_error_fields(exc)
    h.go.send_error = ""
    h.go.registered = {"4917011111111", "4917033333333"}
    h.go.business = "4917033333333"
    infos = h.transport.check_numbers(["4917011111111", "4917022222222", "4917033333333"])
    out["lookup"] = {"asked": list(h.go.lookups),
                     "answers": [[i.phone, i.on_whatsapp, i.jid, i.business] for i in infos]}
    out["lookup_errors"] = {}
    for text in ("failed to send usync query: websocket not connected",
                 "info query timed out", "Function returned nothing.",
                 "failed to send usync query: info query returned status 429: rate-overlimit"):
        h.go.lookup_error = text
        try:
            h.transport.check_numbers(["4917011111111"])
        except SendError as exc:
            out["lookup_errors"][text] = send_error_fields(exc)
    h.go.lookup_error = ""
    try:
        h.transport.send_text("not-a-number", "x")
    except SendError as exc:
        out["send_bad_number"] = send_error_fields(exc)
    h.feed(h.receipt(["3EB0AAA", "3EB0BBB"], proto.Receipt.DELIVERED))
    h.feed(h.receipt(["3EB0AAA"], proto.Receipt.READ))
    h.feed(h.receipt(["3EB0AAA"], proto.Receipt.PLAYED))
    h.feed(h.receipt(["3EB0AAA"], proto.Receipt.READ_SELF))
    # whatsmeow's "inactive": delivered to a device of the recipient's not active lately.
    h.feed(h.receipt(["3EB0FFF"], proto.Receipt.INACTIVE, timestamp=1_700_000_123))
    h.feed(h.receipt(["3EB0FFF"], proto.Receipt.DELIVERED, timestamp=0))  # no time given
    out["receipts"] = h.take()
    # Receipts from people WhatsApp names by LID: with the number sent along, through
    # the engine's LID store, and a LID nobody knows.
    lid = h.jid("123456789012345", "lid")
    h.go.lids = {"123456789012345": "4917088888888"}
    h.feed(h.receipt(["3EB0CCC"], proto.Receipt.DELIVERED, chat=lid,
                     alt=h.jid("4917077777777")))
    h.feed(h.receipt(["3EB0DDD"], proto.Receipt.DELIVERED, chat=lid))
    h.feed(h.receipt(["3EB0EEE"], proto.Receipt.READ, chat=h.jid("999000111", "lid")))
    out["lid_receipts"] = h.take()
    out["lid_lookups"] = list(h.go.lid_lookups)
    out["incoming"] = incoming_messages(h)
    out["media_sends"] = media_sends(h)
    h.feed(proto.Disconnected(status=True))
    out["disconnected"] = h.take()
    try:
        h.transport.send_text("4917011111111", "x")
    except SendError as exc:
        out["send_while_down"] = send_error_fields(exc)
    out["sends_reaching_go"] = len(h.go.sent)
    h.feed(proto.ConnectFailure(Reason=proto.ConnectFailureReason.SERVICE_UNAVAILABLE,
                                Message="503 service unavailable",
                                Raw=proto.Node(Tag="failure", Nil=True)))
    out["connect_failure"] = h.take()
    h.feed(proto.Connected(status=True))
    h.take()
    out["keepalive"] = keepalive(h)

    # Terminal events: each reported once, then the connection is silent.
    terminal = {
        "logged_out": proto.LoggedOut(OnConnect=True,
                                      Reason=proto.ConnectFailureReason.MAIN_DEVICE_GONE),
        "stream_replaced": proto.StreamReplaced(),
        "temporary_ban": proto.TemporaryBan(Code=proto.TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE,
                                            Expire=3600),
        # an end no clock can show (int64 seconds from the server's attribute)
        "temporary_ban_absurd": proto.TemporaryBan(
            Code=proto.TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE, Expire=2**62),
        "client_outdated": proto.ClientOutdated(),
    }
    for name, event in terminal.items():
        if name != "logged_out":
            h.fresh()
        fed_at = time.time()
        h.feed(event)
        h.feed(proto.Connected(status=True))  # must be dropped: the connection is over
        out[name] = {"events": h.take(), "at": fed_at,
                     "stop_requested": h.conn.stop_requested}
    for status in (b"timeout", b"err-client-outdated", b"err-scanned-without-multidevice"):
        h.fresh()
        h.qr(payload)
        h.take()
        h.login_status(status)
        h.wait_for_more()  # "timeout" waits for its reason first (none comes here)
        h.qr(payload)  # dropped
        out[f"login_{status.decode()}"] = {"events": h.take(),
                                           "stop_requested": h.conn.stop_requested}

    # Logout while connected: unlink through Go, files gone, nothing reported.
    h.fresh()
    h.feed(proto.Connected(status=True))
    h.take()
    db_dir = workdir / "data" / "sessions" / SESSION
    db_dir.mkdir(parents=True, exist_ok=True)
    (db_dir / "neonize.db").write_bytes(b"")
    h.transport.logout()
    out["logout"] = {"go_logouts": h.go.logouts, "events": h.take(),
                     "files": sorted(p.name for p in db_dir.iterdir())}

    # After close: nothing more, whatever Go still calls back with.
    h.fresh()
    h.transport.close()
    h.qr(payload)
    h.feed(proto.Connected(status=True))
    h.feed(proto.Disconnected(status=True))
    out["after_close"] = h.take()
    try:
        h.transport.connect(h.sink)
    except RuntimeError as exc:
        out["connect_after_close"] = str(exc)
    out["wait_closed"] = h.transport.wait_closed(5.0)
    out["go_stops"] = h.go.stops  # never entered Go, so never stopped there
    out["non_daemon_threads"] = non_daemon_threads()
    return out


class FakeGoSession(FakeGo):
    """FakeGo with a ``Neonize`` that behaves like the Go call of a pairing session:
    it calls back on neonize's worker thread, then blocks until ``Stop`` (or returns
    ``result`` at once when one is given, as a failed or dying Go call does)."""

    def __init__(self, result: bytes | None = None) -> None:
        super().__init__()
        self.result = result
        self.stopped = threading.Event()
        self.subscribed: list[int] = []
        self.log_level = b""
        self.proxy_given = False
        self.thread = ""
        self.thread_is_daemon = False

    def Neonize(self, db: bytes, uuid: bytes, jid: bytes, jid_size: int, new_device: int,
                log_level: bytes, qr_cb: Any, login_cb: Any, event_cb: Any, log_cb: Any,
                subscribers: Any, n_subscribers: int, props: bytes, props_size: int,
                pairphone: bytes, pairphone_size: int, proxy: Any) -> bytes:
        self.subscribed = sorted(bytes(subscribers)[:n_subscribers])
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        self.props = DeviceProps.FromString(bytes(props[:props_size]))
        self.log_level = log_level
        self.proxy_given = proxy is not None
        self.thread = threading.current_thread().name
        self.thread_is_daemon = threading.current_thread().daemon
        if self.result is not None:
            return self.result
        payload = ctypes.create_string_buffer(b"https://wa.me/settings/linked_devices#ref,k,i,a,1")
        qr_cb(None, ctypes.addressof(payload))
        self.stopped.wait(30.0)
        return b""

    def Stop(self, uuid: bytes) -> None:
        super().Stop(uuid)
        self.stopped.set()


class FakeGoFetchMeSpin(FakeGoSession):
    """The Go call of a pairing whose codes all expired: goneonize's ``Neonize`` calls
    the login-status callback with ``timeout``, then enters ``CallbackFunction``,
    whose ``FetchMe`` polls ``Store.ID`` every 100 ms until it is set, which never
    happens for a device that did not pair; it does not look at the context, so
    ``Stop`` cannot end it. ``release`` ends the stand-in at the scenario's end."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def Neonize(self, db: bytes, uuid: bytes, jid: bytes, jid_size: int, new_device: int,
                log_level: bytes, qr_cb: Any, login_cb: Any, event_cb: Any, log_cb: Any,
                subscribers: Any, n_subscribers: int, props: bytes, props_size: int,
                pairphone: bytes, pairphone_size: int, proxy: Any) -> bytes:
        code = ctypes.create_string_buffer(b"https://wa.me/settings/linked_devices#ref,k,i,a,1")
        qr_cb(None, ctypes.addressof(code))
        status = ctypes.create_string_buffer(b"timeout")
        login_cb(None, ctypes.addressof(status))
        while not self.release.wait(0.1):  # FetchMe: "for cli.ID == nil { sleep }"
            pass
        return b""


def fetchme_spin(workdir: Path) -> dict[str, Any]:
    """A QR timeout whose Go call never returns: reported once, the close returns at
    once, and the next client of the process is not held up by the stuck one."""
    transport = NeonizeTransport(SESSION, workdir / "data", config())
    sink = Recorder()
    conn = transport._open(sink)
    assert conn is not None
    go = FakeGoFetchMeSpin()
    conn.client._NewClient__client = go
    conn.start()
    got = sink.wait_for(lambda events: len(events) >= 2, timeout=5.0)
    before_close = time.monotonic()
    transport.close()
    close_seconds = time.monotonic() - before_close
    stuck = not transport.wait_closed(0.5)
    # A second transport in the same process connects as usual meanwhile.
    second = NeonizeTransport(SESSION, workdir / "data", config())
    sink2 = Recorder()
    conn2 = second._open(sink2)
    assert conn2 is not None
    conn2.client._NewClient__client = FakeGoSession()
    conn2.start()
    second_qr = sink2.wait_for(bool, timeout=5.0)
    second.close()
    second_closed = second.wait_closed(5.0)
    go.release.set()
    return {"got": got, "events": sink.all(), "close_seconds": close_seconds,
            "stuck_after_close": stuck, "go_stops": go.stops, "second_qr": second_qr,
            "second_closed": second_closed, "non_daemon_threads": non_daemon_threads()}


def fake_session(workdir: Path) -> dict[str, Any]:
    """The connection threads against a Go stand-in: callbacks from neonize's worker
    thread, a close that stops Go, an unexpected return and a failed Go call."""
    from neonize.events import EVENT_TO_INT

    transport = NeonizeTransport(SESSION, workdir / "data",
                                 config(f"http://127.0.0.1:{refused_port()}"))
    sink = Recorder()
    out: dict[str, Any] = {}
    go = FakeGoSession()
    conn = transport._open(sink)
    assert conn is not None
    conn.client._NewClient__client = go
    conn.start()
    out["qr_arrived"] = sink.wait_for(lambda events: bool(events), timeout=5.0)
    out["events"] = sink.all()
    out["event_threads"] = list(sink.threads)
    out["go_thread"] = go.thread
    out["go_thread_is_daemon"] = go.thread_is_daemon
    out["uuid"] = conn.uuid
    out["subscribed"] = go.subscribed
    wanted = {"Connected", "Disconnected", "LoggedOut", "StreamReplaced", "TemporaryBan",
              "ClientOutdated", "ConnectFailure", "Receipt", "Message", "KeepAliveTimeout",
              "KeepAliveRestored", "PairStatus"}
    out["codes"] = {type_.__name__: code for type_, code in EVENT_TO_INT.items()
                    if type_.__name__ in wanted}
    out["log_level"] = go.log_level.decode()
    out["proxy_given"] = go.proxy_given
    out["device_props"] = {"os": go.props.os, "platform": go.props.platformType}
    out["connect_again_is_noop"] = transport._open(sink) is None
    before_close = time.monotonic()
    transport.close()
    out["close_seconds"] = time.monotonic() - before_close
    out["wait_closed"] = transport.wait_closed(10.0)
    out["go_stops"] = go.stops
    out["events_after_close"] = sink.after(before_close)

    for name, result in (("returns", b""), ("fails", b"boom from go")):
        transport = NeonizeTransport(SESSION, workdir / "data", config())
        sink = Recorder()
        conn = transport._open(sink)
        assert conn is not None
        conn.client._NewClient__client = FakeGoSession(result)
        conn.start()
        sink.wait_for(lambda events: bool(events), timeout=5.0)
        time.sleep(0.2)  # a quiet spell in which a second event would show up
        out[name] = sink.all()
        transport.close()
        out[f"{name}_wait_closed"] = transport.wait_closed(5.0)
    out["non_daemon_threads"] = non_daemon_threads()
    return out


class StuckSendGo(FakeGoSession):
    """A resumed session whose send never gets the server's answer, as in whatsmeow's
    retry that waits for a reconnect without a limit: it returns only once the client
    is stopped (whatsmeow's Disconnect wakes the waiter: "websocket disconnected before
    message send returned response"), or, with ``hang``, not even then."""

    def __init__(self, hang: bool) -> None:
        super().__init__()
        self.hang = hang
        self.entered = threading.Event()
        self.sending = threading.Event()
        self.returned_after_stop: bool | None = None
        self._never = threading.Event()

    def Neonize(self, *args: Any) -> bytes:
        self.entered.set()
        self.stopped.wait(30.0)
        return b""

    def SendMessage(self, uuid: bytes, to: bytes, to_len: int, msg: bytes,
                    msg_len: int) -> bytes:
        self.sending.set()
        self.stopped.wait(30.0)
        self.returned_after_stop = self.stopped.is_set()
        if self.hang:
            self._never.wait(30.0)  # the child process ends first
        return self.proto.SendMessageReturnFunction(
            Error="websocket disconnected before message send returned response"
        ).SerializeToString()


SEND_DEADLINE_SECONDS = 0.5


def send_deadline(workdir: Path) -> dict[str, Any]:
    """A send that outlives ``transport.send_deadline_seconds`` stops its client and
    ends AMBIGUOUS, whether the engine then lets go of it or not."""
    from neonize._binder import func_callback_bytes
    from neonize.events import EVENT_TO_INT
    from neonize.proto import Neonize_pb2 as proto

    out: dict[str, Any] = {}
    for name, hang in (("released", False), ("hung", True)):
        settings = Config(transport=TransportConfig(
            proxy=f"http://127.0.0.1:{refused_port()}",
            send_deadline_seconds=SEND_DEADLINE_SECONDS))
        transport = NeonizeTransport(SESSION, workdir / name, settings)
        sink = Recorder()
        go = StuckSendGo(hang)
        conn = transport._open(sink)
        assert conn is not None
        conn.client._NewClient__client = go
        conn.start()
        go.entered.wait(5.0)
        data = proto.Connected(status=True).SerializeToString()
        buffer = ctypes.create_string_buffer(data, len(data))
        func_callback_bytes(conn.client.event.execute)(
            conn.client.uuid, ctypes.addressof(buffer), len(data), EVENT_TO_INT[proto.Connected])
        sink.wait_for(lambda events: bool(events), timeout=5.0)
        started = time.monotonic()
        try:
            transport.send_text("4917011111111", "stuck")
            error: dict[str, Any] | None = None
        except SendError as exc:
            error = {**send_error_fields(exc), "uncertain": exc.uncertain}
        out[name] = {
            "error": error,
            "took": time.monotonic() - started,
            "events": sink.all(),
            "go_stops": go.stops,
            "returned_after_stop": go.returned_after_stop,
            "stop_requested": conn.stop_requested,
        }
        transport.close()
        out[name]["wait_closed"] = transport.wait_closed(10.0)
    out["deadline"] = SEND_DEADLINE_SECONDS
    out["non_daemon_threads"] = non_daemon_threads()
    return out


# --------------------------------------------------------------------------- engine states


# What goneonize's ``Neonize`` returns when its event pump died on an event it could not
# encode (its ``CallbackFunction`` returns the marshal error). Go's protobuf writes the
# space after "proto:" as a plain or a no-break space, decided per build.
def marshal_error(event: str, field: str, nbsp: bool = True) -> bytes:
    space = "\u00a0" if nbsp else " "
    return f"proto:{space}required field neonize.{event}.{field} not set".encode()


def pump_deaths(workdir: Path) -> dict[str, Any]:
    """The Go call ends with the engine's marshal error for one event: each is reported
    as what the event was (a ban is a ban), through neonize's real connect."""
    out: dict[str, Any] = {}
    for name, event, field in (("ban", "TemporaryBan", "Code"),
                               ("connect_failure", "ConnectFailure", "Reason"),
                               ("receipt", "Receipt", "Type"),
                               ("logged_out", "LoggedOut", "Reason")):
        transport = NeonizeTransport(SESSION, workdir / "data", config())
        sink = Recorder()
        conn = transport._open(sink)
        assert conn is not None
        conn.client._NewClient__client = FakeGoSession(marshal_error(event, field,
                                                                     nbsp=name != "receipt"))
        conn.start()
        sink.wait_for(bool, timeout=10.0)
        out[name] = sink.all()
        transport.close()
        out[f"{name}_wait_closed"] = transport.wait_closed(10.0)
    out["non_daemon_threads"] = non_daemon_threads()
    return out


class FakeGoLoggedBan(FakeGoSession):
    """The Go call of a connect refused with a ban code the engine has no name for:
    whatsmeow first logs the server's failure node (through goneonize's log callback,
    as Go does), then the pump dies on the ban event and the call returns its error."""

    LINE = 'Temporary ban connect failure: <failure code="105" expire="{}" reason="402"/>'
    # whatsmeow's logger (goneonize's) passes on only lines at or above the level the
    # Go call was given; the ban line is a warning.
    PASSES_WARNINGS = (b"", b"DEBUG", b"INFO", b"WARN")

    def __init__(self, expire: int = 86400) -> None:
        super().__init__(marshal_error("TemporaryBan", "Code"))
        self.line = self.LINE.format(expire)

    def Neonize(self, db: bytes, uuid: bytes, jid: bytes, jid_size: int, new_device: int,
                log_level: bytes, qr_cb: Any, login_cb: Any, event_cb: Any, log_cb: Any,
                *rest: Any) -> bytes:
        if log_level in self.PASSES_WARNINGS:
            entry = self.proto.LogEntry(Name="Client", Level="WARN", Message=self.line)
            data = entry.SerializeToString()
            buffer = ctypes.create_string_buffer(data, len(data))
            log_cb(ctypes.addressof(buffer), len(data))
        return super().Neonize(db, uuid, jid, jid_size, new_device, log_level, qr_cb,
                               login_cb, event_cb, log_cb, *rest)


def logged_ban(workdir: Path, level: str = "INFO", expire: int = 86400) -> dict[str, Any]:
    """A ban the engine cannot encode, with its end in the engine's log line; the
    gateway logging at ``level`` (the root logger's level, as gateway.observability
    sets it in a session process)."""
    import logging

    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name.startswith("whatsmeow"):
                logged.append(record.getMessage())

    logging.getLogger().setLevel(level)
    logging.getLogger().addHandler(Keep())
    transport = NeonizeTransport(SESSION, workdir / "data",
                                 replace(config(), logging=LoggingConfig(level=level)))
    sink = Recorder()
    conn = transport._open(sink)
    assert conn is not None
    conn.client._NewClient__client = FakeGoLoggedBan(expire)
    started = time.time()
    conn.start()
    sink.wait_for(bool, timeout=10.0)
    out = {"events": sink.all(), "started": started, "ended": time.time(),
           "logged": list(logged)}
    transport.close()
    out["wait_closed"] = transport.wait_closed(10.0)
    out["non_daemon_threads"] = non_daemon_threads()
    return out


def pairing_ends(workdir: Path) -> dict[str, Any]:
    """Pairing statuses that only say *that* pairing ended, followed (or not) by the
    event that says why, each through neonize's real ctypes callbacks."""
    h = EventHarness(workdir)
    proto = h.proto
    payload = b"https://wa.me/settings/linked_devices#2@AbC,nOiSe,iDeNt,aDv,1"
    follow_ups: dict[str, tuple[bytes, Any]] = {
        "ban": (b"err-unexpected-state",
                proto.TemporaryBan(Code=proto.TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE,
                                   Expire=3600)),
        "banned_account": (b"err-unexpected-state",
                           proto.LoggedOut(OnConnect=True,
                                           Reason=proto.ConnectFailureReason.UNKNOWN_LOGOUT)),
        "connect_failure": (b"err-unexpected-state",
                            proto.ConnectFailure(Reason=proto.ConnectFailureReason.GENERIC,
                                                 Message="bad request",
                                                 Raw=proto.Node(Tag="failure", Nil=True))),
        "already_paired": (b"err-unexpected-state", proto.Connected(status=True)),
        "drop": (b"timeout", proto.Disconnected(status=True)),
        "pair_error": (b"error", proto.PairStatus(
            ID=h.jid("4917012345678"), BusinessName="", Platform="android",
            Status=proto.PairStatus.ERROR, Error="failed to verify device identity")),
        "expired": (b"timeout", None),
    }
    out: dict[str, Any] = {}
    h.conn.request_stop()  # the harness's first connection is not used
    for name, (status, event) in follow_ups.items():
        h.fresh()
        h.qr(payload)
        h.take()
        h.login_status(status)
        if event is not None:
            h.feed(event)
        h.wait_for_more()
        h.qr(payload)  # after a final event: dropped
        out[name] = {"events": h.take(), "stop_requested": h.conn.stop_requested}
        h.conn.request_stop()
    # A pair-status success adds nothing (success came as the login status).
    h.fresh()
    h.qr(payload)
    h.login_status(b"success")
    h.feed(proto.PairStatus(ID=h.jid("4917012345678"), BusinessName="", Platform="android",
                            Status=proto.PairStatus.SUCCESS))
    h.feed(proto.Connected(status=True))
    out["success"] = h.take()[1:]
    h.transport.close()
    out["wait_closed"] = h.transport.wait_closed(10.0)
    out["non_daemon_threads"] = non_daemon_threads()
    return out


class FakeGoPasskey(FakeGoSession):
    """The Go call of a pairing the phone turns into passkey linking: a QR code, then the
    status ``passkey-request`` with the QR channel still open. Like the real engine, a
    ``Stop`` while the channel is open leaves the call waiting forever (whatsmeow's QR
    emitter exits on the expected disconnect without closing the channel); the channel
    closes by itself when its codes run out (``release``), with status ``timeout``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.channel_open = True
        self.stopped_during_qr = False

    def Neonize(self, db: bytes, uuid: bytes, jid: bytes, jid_size: int, new_device: int,
                log_level: bytes, qr_cb: Any, login_cb: Any, event_cb: Any, log_cb: Any,
                subscribers: Any, n_subscribers: int, props: bytes, props_size: int,
                pairphone: bytes, pairphone_size: int, proxy: Any) -> bytes:
        code = ctypes.create_string_buffer(b"https://wa.me/settings/linked_devices#2@a,b,c,1")
        qr_cb(None, ctypes.addressof(code))
        status = ctypes.create_string_buffer(b"passkey-request")
        login_cb(None, ctypes.addressof(status))
        self.release.wait(20.0)
        if self.stopped_during_qr:
            return b""  # stands for "never": the real call would not come back
        self.channel_open = False
        status = ctypes.create_string_buffer(b"timeout")
        login_cb(None, ctypes.addressof(status))
        self.stopped.wait(20.0)
        return b""

    def Stop(self, uuid: bytes) -> None:
        if self.channel_open:
            self.stopped_during_qr = True
        super().Stop(uuid)


def passkey(workdir: Path) -> dict[str, Any]:
    """A passkey request is reported once, and the client is stopped only once its QR
    channel has closed, so the stop completes."""
    transport = NeonizeTransport(SESSION, workdir / "data", config())
    sink = Recorder()
    conn = transport._open(sink)
    assert conn is not None
    go = FakeGoPasskey()
    conn.client._NewClient__client = go
    conn.start()
    sink.wait_for(lambda events: any(type(e).__name__ == "PairingClosed" for e in events),
                  timeout=10.0)
    # The stop either went to Go at once (the call would hang) or waits for the channel.
    deferred = getattr(conn, "stop_deferred", threading.Event())
    deadline = time.monotonic() + 10.0
    while not (deferred.is_set() or go.stops) and time.monotonic() < deadline:
        time.sleep(0.01)
    out = {"events": sink.all(), "stopped_during_qr": go.stopped_during_qr,
           "stop_deferred": deferred.is_set()}
    go.release.set()  # the codes run out: whatsmeow closes the channel ("timeout")
    out["wait_closed"] = transport.wait_closed(15.0)
    out["go_stops"] = go.stops
    out["events_after"] = sink.all()[len(out["events"]):]
    transport.close()
    out["non_daemon_threads"] = non_daemon_threads()
    return out


def concurrent(workdir: Path) -> dict[str, Any]:
    """Many transports connecting and closing at once in one process, through failing
    proxies: unserialised, neonize's Go maps see concurrent writes and the process
    aborts ("fatal error: concurrent map writes"; about 1 run in 3 at this load when
    _GO_LOCK is disabled). The result only exists if the process survived."""
    import random

    proxies = [FaultProxy(mode).start() for mode in ("close", "http502", "ok_then_close")]
    addresses = [proxy.address for proxy in proxies]
    addresses.append(f"http://127.0.0.1:{refused_port()}")
    transports: list[NeonizeTransport] = []
    lock = threading.Lock()

    def churn(worker: int) -> None:
        for _ in range(10):
            transport = NeonizeTransport(f"w{worker}", workdir / "data",
                                         config(random.choice(addresses)))
            transport.connect(Recorder())
            time.sleep(random.random() * 0.02)
            transport.close()
            with lock:
                transports.append(transport)

    workers = [threading.Thread(target=churn, args=(n,)) for n in range(30)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30.0)
    closed = all(transport.wait_closed(20.0) for transport in transports)
    for proxy in proxies:
        proxy.stop()
    return {"transports": len(transports), "wait_closed": closed,
            "non_daemon_threads": non_daemon_threads()}


def client_fds(workdir: Path) -> dict[str, Any]:
    """Clients made one after another in one process, each dialing a refused loopback
    port and closed: the open file descriptors after each (goneonize opens a store
    container per client and never closes it, Stop included)."""
    address = f"http://127.0.0.1:{refused_port()}"
    counts, created = [], []
    for _ in range(5):
        transport = NeonizeTransport(SESSION, workdir / "data", config(address))
        sink = Recorder()
        transport.connect(sink)
        sink.wait_for(bool, timeout=10.0)
        transport.close()
        assert transport.wait_closed(10.0)
        counts.append(len(os.listdir("/proc/self/fd")))
        created.append(transport.clients_created())
    return {"fds": counts, "clients_created": created}


def engine_output(workdir: Path) -> dict[str, Any]:
    """The real Go library prints a failed send to descriptor 1 (goneonize
    ``SendMessage``: ``fmt.Println("SendMessage: Error sending message:", ...)``): the
    line must reach the capture's sink, redacted, and not the process's stdout."""
    from actors.transport.engine_output import capture_engine_output

    seen: list[str] = []
    capture = capture_engine_output(seen.append)  # the transport then keeps this one
    transport = NeonizeTransport(SESSION, workdir / "data",
                                 config(f"http://127.0.0.1:{refused_port()}"))
    sink = Recorder()
    transport.connect(sink)
    sink.wait_for(bool, timeout=10.0)
    assert transport.wait_closed(10.0)
    conn = transport._conn
    assert conn is not None
    from neonize.exc import NeonizeError  # only in this child process
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message
    print("python's own print", flush=True)  # still reaches stdout as before
    try:
        conn.client.send_message("4917012345678", Message(conversation="x"))
    except NeonizeError as exc:
        error = str(exc)
    got = capture.wait_for(1, 10.0)
    # The Go side's log, through the callback Go calls (neonize's log_whatsmeow) and
    # neonize's log worker thread, as whatsmeow's send logs a device it skipped.
    import logging

    from neonize.proto.Neonize_pb2 import LogEntry
    from neonize.utils.log import log_whatsmeow

    records: list[str] = []
    arrived = threading.Event()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name} {record.levelname} {record.getMessage()}")
            arrived.set()

    logging.getLogger("whatsmeow.Client").addHandler(Keep())
    entry = LogEntry(Name="Client", Level="WARN", Message=(
        "Failed to encrypt 3EB0C0FFEE for 4917012345678:3@s.whatsapp.net: no signal session"))
    data = entry.SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    log_whatsmeow(ctypes.addressof(buffer), len(data))
    return {"lines": seen, "got": got, "error": error,
            "same_capture": capture_engine_output(print) is capture,
            "log_arrived": arrived.wait(10.0), "log_records": records}


def logging_setup(workdir: Path) -> dict[str, Any]:
    """Building a transport imports neonize without touching the root logger."""
    import logging

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    NeonizeTransport(SESSION, workdir / "data", config())
    return {
        "root_unchanged": (list(root.handlers), root.level) == before,
        "go_log_level": logging.getLogger("neonize.utils.log").level,
        "neonize_loaded": "neonize.client" in sys.modules,
    }


# --------------------------------------------------------------------------- engine set-up


def engine_mapped() -> bool:
    """Whether the engine's native library is loaded in this process."""
    from actors.transport.engine import library_file_name

    return library_file_name() in Path("/proc/self/maps").read_text(encoding="utf-8")


def bot_tag(workdir: Path, mark_as_bot: bool) -> dict[str, Any]:
    """Start the way a gateway's session gets its environment (the launcher's one
    re-exec, which keeps the pid), then load the engine the way a session does."""
    from actors.transport.engine import BOT_TAG, adds_bot_node, exec_environment
    from gateway.cli.wagate import start_with_engine_environment

    start_with_engine_environment(mark_as_bot)  # returns here only once it holds
    NeonizeTransport(SESSION, workdir / "data",
                     Config(transport=TransportConfig(mark_as_bot=mark_as_bot)))
    block = exec_environment()
    return {"pid": os.getpid(), "exec_value": block.get(BOT_TAG),
            "engine_adds_bot_node": adds_bot_node(block.get(BOT_TAG)),
            "engine_loaded": engine_mapped()}


def bot_tag_unset(workdir: Path) -> dict[str, Any]:
    """A process started without the variable: setting it from Python now would not
    reach the engine (Go reads the exec'd block), so the engine must be refused."""
    from actors.transport.engine import BOT_TAG

    os.environ[BOT_TAG] = "off"  # too late for Go: must not fool the check either
    try:
        NeonizeTransport(SESSION, workdir / "data", config())
    except EngineSetupError as exc:
        return {"refused": str(exc), "engine_loaded": engine_mapped()}
    return {"refused": None, "engine_loaded": engine_mapped()}


def engine_library(workdir: Path) -> dict[str, Any]:
    """Build a transport against the neonize found on PYTHONPATH (a copy whose library
    is missing or of another version) and note every network attempt on the way."""
    attempts: list[str] = []
    network = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
               "http.client.connect", "urllib.Request")

    def watch(event: str, args: tuple[Any, ...]) -> None:
        if event in network:
            attempts.append(f"{event} {args!r}"[:200])

    sys.addaudithook(watch)
    try:
        NeonizeTransport(SESSION, workdir / "data", config())
        refused: str | None = None
    except EngineSetupError as exc:
        refused = str(exc)
    except Exception as exc:  # what neonize itself raises after a failed download
        refused = f"not refused by wagate: {exc!r}"
    return {"refused": refused, "network_attempts": attempts,
            "neonize_imported": "neonize.client" in sys.modules}


def number_answers(workdir: Path) -> dict[str, Any]:
    """The engine's IsOnWhatsApp answers (its own protobuf types) matched to the numbers
    asked: by number, business from VerifiedName, a missing answer is a failed lookup.
    Here, not in the unit tests: pytest itself must never import neonize."""
    from neonize.proto.Neonize_pb2 import JID, IsOnWhatsAppResponse, VerifiedName

    from actors.transport.neonize import numbers_from_responses

    yes, no = "4915112345678", "4915112340000"
    responses = [
        IsOnWhatsAppResponse(Query=f"+{no}", IsIn=False),
        IsOnWhatsAppResponse(Query=f"+{yes}", IsIn=True, VerifiedName=VerifiedName(),
                             JID=JID(User=yes, Server="s.whatsapp.net")),
    ]
    infos = numbers_from_responses([yes, no], responses)
    try:
        numbers_from_responses([yes, "4915112349999"], responses)
        missing = None
    except SendError as exc:
        missing = exc.reason
    return {"infos": [[i.phone, i.on_whatsapp, i.jid, i.business] for i in infos],
            "missing": missing}


def unused_imports(workdir: Path) -> dict[str, Any]:
    """Loading the engine leaves its link-preview and URL-fetching modules unloaded;
    neonize's reference to one still reaches the real module on first use."""
    deferred = ("linkpreview", "requests", "httpx", "bs4")
    NeonizeTransport(SESSION, workdir / "data", config())
    loaded_with_engine = sorted(name for name in deferred if name in sys.modules)
    import neonize.utils.iofile as iofile  # already loaded: the engine imported it

    get = iofile.requests.get  # neonize's URL path: loads requests now
    import requests

    return {"loaded_with_engine": loaded_with_engine,
            "engine_loaded": "neonize.client" in sys.modules and engine_mapped(),
            "loaded_on_use": "requests" in sys.modules,
            "same_function": get is requests.get}


def preload_then_fork(workdir: Path) -> dict[str, Any]:
    """What the launcher does before it forks the actor system: the engine's libraries
    and message modules load without the engine, and a process forked afterwards loads the engine
    (it would hang, had the Go runtime been started before the fork) and uses the very
    module objects preloaded."""
    from actors.transport import preload_for_forks

    loaded = preload_for_forks("neonize")
    preloaded = sys.modules["neonize.proto.Neonize_pb2"]
    before_fork = {"preloaded": len(loaded), "engine_mapped": engine_mapped(),
                   "libraries": all(name in sys.modules for name in ("magic", "segno")),
                   "binder": "neonize._binder" in sys.modules,
                   "package": "neonize" in sys.modules}
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the "session": load the engine, report, leave at once
        os.close(read_end)
        try:
            NeonizeTransport(SESSION, workdir / "data", config())
            import neonize.client  # noqa: F401  (loaded by the transport)

            report = {"engine_mapped": engine_mapped(),
                      "same_module": sys.modules["neonize.proto.Neonize_pb2"] is preloaded}
        except BaseException as exc:  # reported to the parent, never raised in a fork
            report = {"error": repr(exc)}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)  # polling the child's exit against the deadline
    else:
        os.kill(child, 9)
        os.waitpid(child, 0)
        return {"before_fork": before_fork, "child": "hung"}
    with os.fdopen(read_end, "rb") as pipe:
        child_report = json.loads(pipe.read() or b"{}")
    return {"before_fork": before_fork, "child": child_report,
            "child_exit": os.waitstatus_to_exitcode(status)}


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "number_answers": number_answers,
    "refused": lambda w: dial_failure(w, "refused"),
    "close": lambda w: dial_failure(w, "close"),
    "http502": lambda w: dial_failure(w, "http502"),
    "ok_then_close": lambda w: dial_failure(w, "ok_then_close"),
    "tls_hang": tls_hang,
    "storage": storage,
    "events": events,
    "fake_session": fake_session,
    "concurrent": concurrent,
    "send_deadline": send_deadline,
    "pump_deaths": pump_deaths,
    "pairing_ends": pairing_ends,
    "logged_ban": logged_ban,
    "logged_ban_error_level": lambda w: logged_ban(w, level="ERROR"),
    "logged_long_ban": lambda w: logged_ban(w, expire=14 * 86400),
    "passkey": passkey,
    "logging": logging_setup,
    "client_fds": client_fds,
    "engine_output": engine_output,
    "fetchme_spin": fetchme_spin,
    "bot_tag_off": lambda w: bot_tag(w, False),
    "bot_tag_on": lambda w: bot_tag(w, True),
    "bot_tag_unset": bot_tag_unset,
    "engine_library": engine_library,
    "unused_imports": unused_imports,
    "preload_then_fork": preload_then_fork,
}


def main(argv: list[str]) -> int:
    name, workdir = argv[0], Path(argv[1])
    result = SCENARIOS[name](workdir)
    (workdir / "result.json").write_text(json.dumps(result, default=repr), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
