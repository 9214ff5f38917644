"""A simulated WhatsApp service: the ``simulator`` transport and its operator controls.

It exists so demos, tests and benchmarks can exercise the whole gateway (pairing by
QR code, reconnects, logouts, rejected sends, message counting) without a phone or
the network, and so they can do it from *outside* the gateway, the way a real
service is driven: the gateway's session processes and an operator's CLI in another
process must see the same world.

Hence two sides, like the real thing:

* the **server side** lives in ``<data_dir>/simulator/``: a ``diskcache.Cache``
  (SQLite, safe across threads and processes) holding pending QR codes, linked
  devices, dropped connections, outages and injected send failures, plus a
  ``diskcache.Deque`` (``inbox/``) with every message that reached a recipient.
  ``SimulatorServer`` is the operator's handle on it (``wagate sim ...``).
  Every connection's up and down is appended to ``connections.jsonl`` there too
  (``actors.transport.connection_log``: session, account, host, pid), so a test can
  prove that no account was ever connected from two processes at once.
* the **client side** (the linked-device credentials) lives in
  ``<data_dir>/sessions/<session>/simulator.json``, like a real session database,
  so a restarted gateway resumes without a new QR code.

``SimulatorTransport`` is one client: each ``connect`` runs one daemon thread that
talks to the server side by polling it every ``simulator.poll_interval_seconds``
(there is no socket to wake it up; polling is what makes it work across processes).
A poll costs one ``stat`` of two "bells" (``bells/``: one per session, one for all):
every write a connection must notice (an incoming message, a receipt, a drop, an
unlink) rings its session's bell after it is stored, by setting the file's modification
time to the writer's nanosecond clock; the connection reads the server only when a
bell's time changed, and otherwise every ``simulator.idle_check_seconds`` as a safety
net. Between looks the thread sleeps on an inotify watch of its two bells
(``actors.transport.bells``; plain polling where inotify is missing), so an idle linked
session does not wake at all until a ring or the safety net. Five idle simulated
sessions used to wake the machine about 250 times a second and cost 2.3 % of a core
each.
A send reads one row of the server (``_SEND_STATE_KEY``, a version every write a send
must heed increases) and reuses what it read of the device, drop marks, injected
failures and automatic receipts while that version holds; a batch of sends
(``send_texts``) lands in the inbox in one transaction.
The key names and value layout of the server side are private to this module.

A QR code's window is a duration, so it runs on ``CLOCK_BOOTTIME``
(``gateway.core.clock.boot_clock``: one clock for every process of the host) as the
real engine's does on the monotonic clock; its ``expires_at`` is the date shown. On
the wall clock a session process stepped back an hour offered codes that
``wagate sim scan`` (on the host's clock) found expired an hour ago, and a step
forward expired every code at once.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import diskcache

from actors.transport.base import (
    NOT_ON_WHATSAPP,
    RATE_OVERLIMIT,
    Connected,
    Disconnected,
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
    Transport,
    TransportEvent,
    check_session_id,
    make_private_dir,
    peer_phone,
)
from actors.transport.bells import BellWatch, open_watch
from actors.transport.connection_log import ConnectionRecord, Kind, parse_records
from gateway.core.clock import boot_clock
from gateway.core.config import QrConfig, SimulatorConfig
from gateway.core.disk_caches import open_disk_cache
from gateway.core.errors import WagateError
from gateway.core.files import write_atomic

# The connection log in the server directory (actors/transport/connection_log.py).
CONNECTIONS_LOG = "connections.jsonl"
BELLS_DIR = "bells"  # under the server side: see the module's docstring

# A closing transport waits this long for its connection thread; the thread only
# ever sleeps one poll interval, so this bound is generous.
_JOIN_TIMEOUT_SECONDS = 2.0

_UNLINKED_FROM_PHONE = "unlinked from phone"
_UNKNOWN_DEVICE = "device not linked on the server"

# The result of polling a pending QR code: still waiting, expired (or replaced),
# or the new device when the code was scanned.
_ScanOutcome = Literal["waiting", "expired"] | dict[str, Any]


class SimulatorError(WagateError):
    """An operator action the simulated service cannot perform; the message says what to do."""


# --------------------------------------------------------------------------- keys
# Server-side layout. ``None`` as a session stands for "every session", as in the API.


def _qr_key(session: str) -> tuple[str, str]:
    """The session's pending QR code: {code, expires_at (the date shown), window_ends
    (on the boot clock: what expires it), phone (set once scanned)}."""
    return ("qr", session)


def _device_key(session: str) -> tuple[str, str]:
    """The device linked for a session: {device_id, phone, linked_at}."""
    return ("device", session)


def _unlinked_key(device_id: str) -> tuple[str, str]:
    """A tombstone for a device unlinked from the phone, so stale credentials learn why."""
    return ("unlinked", device_id)


def _drops_key(session: str | None) -> tuple[str, str | None]:
    """How many times connections of a session (or of all) were dropped; only ever grows."""
    return ("drops", session)


# Kinds of injected send failures: rejected for good, a transient server error worth
# retrying, delivered but never acknowledged (the sender cannot tell which), or the
# real engine's recipient lookup before a send answered 429 rate-overlimit or found
# no account for the number (nothing sent in either case).
_FAILURE_KINDS = ("rejected", "transient", "ambiguous", "rate_overlimit", "no_account")


def _fail_key(session: str | None, kind: str = "rejected") -> tuple[str, str | None]:
    """How many of the next sends of a session (or of any) must fail, by kind."""
    return ({"rejected": "fail", "transient": "fail-transient"}.get(kind, f"fail-{kind}"),
            session)


def _failure(kind: str) -> SendError:
    if kind == "transient":
        return SendError("SERVER_ERROR", "the simulated server had a temporary error "
                         "(injected with fail_next --transient)", permanent=False)
    if kind == "rate_overlimit":
        return SendError(RATE_OVERLIMIT, "failed to get user info to fill LID cache: failed "
                         "to send usync query: info query returned status 429: rate-overlimit "
                         "(injected with fail_next --rate-overlimit)", permanent=False)
    if kind == "no_account":
        return SendError(NOT_ON_WHATSAPP, "no LID found for the number from server (injected "
                         "with fail_next --no-account)", permanent=True)
    if kind == "ambiguous":
        return SendError("AMBIGUOUS", "timed out waiting for message send response (the "
                         "simulated server delivered it; injected with fail_next --ambiguous)",
                         permanent=True, uncertain=True)
    return SendError("REJECTED", "the simulated server rejected the message (injected "
                     "with fail_next)", permanent=True)


# A counter every write that a send must heed increases (a device linked or unlinked,
# a drop, an injected failure set or consumed, automatic receipts, a number's account):
# a sending client reads only this between such writes and reuses what it last read
# (``SimulatorTransport._view``). A plain string: diskcache stores it without pickling.
_SEND_STATE_KEY = "send-state-version"

# {session | None: when the outage ends on the boot clock}: a duration ("down for N
# s") set by one process (wagate sim drop) and checked by others, whose wall clocks
# may be stepped apart.
_OUTAGES_KEY = ("boot-outages",)
# {kind, lid}: every message delivered from now on gets such a receipt at once, before
# its sender hears the server's ack (as a fast recipient's device can manage).
_AUTO_RECEIPT_KEY = ("auto-receipt",)
RECEIPT_KINDS = ("delivered", "read")


def _receipts_key(session: str) -> tuple[str, str]:
    """Receipts waiting for the session's client: [{id, kind, user, server}, ...]."""
    return ("receipts", session)


def _incoming_key(session: str) -> tuple[str, str]:
    """Messages written to the session's account, waiting for its client: [{id, from,
    text, quote, at}, ...]."""
    return ("incoming", session)


_READ_MARKS_KEY = ("read-marks",)  # [{session, chat, sender, ids, at}]: what clients marked read


def _media_key(message_id: str) -> tuple[str, str]:
    """The bytes of a media message that reached its recipient."""
    return ("media", message_id)


def _typing_key(session: str, recipient: str) -> tuple[str, str, str]:
    """Since when the session's client shows "typing..." to the recipient."""
    return ("typing", session, recipient)


def _unregistered_key(phone: str) -> tuple[str, str]:
    """A number with no WhatsApp account (every number has one unless marked so)."""
    return ("unregistered", phone)


# How many lookups (usync queries) reached the server, and whether they fail now.
_LOOKUPS_KEY = ("lookups",)
_LOOKUPS_DOWN_KEY = ("lookups-down",)
_LOOKUP_DELAY_KEY = ("lookup-delay",)  # seconds every lookup takes before it answers
# Seconds every send's answer takes AFTER the message reached its recipient: the ack is
# on its way, the sender does not know yet (``SimulatorServer.stall_after_send``).
_SEND_STALL_KEY = ("send-stall",)
_STALL_POLL_SECONDS = 0.05  # a stalled send looks whether the stall ended this often


@functools.lru_cache(maxsize=4096)  # a hash per send otherwise, always to the same numbers
def lid_of(phone: str) -> str:
    """The simulated service's LID for a number: stable, and not the number's digits
    (as on WhatsApp, a LID does not reveal the number)."""
    digest = hashlib.sha256(f"lid:{phone}".encode()).digest()
    return f"2{int.from_bytes(digest[:8], 'big') % 10**14:014d}"


# --------------------------------------------------------------------------- server


# Every process of the gateway opens these databases, one connection per thread, and
# the inbox grows with every message: with diskcache's SQLite defaults, each process's
# memory grew with the inbox for as long as it ran (issue 16's soak). They are opened
# like every store of ours (gateway.core.disk_caches).
_SETTINGS: dict[str, Any] = {"eviction_policy": "none"}


class SimulatorServer:
    """The server side of the simulated service, shared by every process using ``data_dir``.

    The public methods are the operator's controls (used by ``wagate sim ...`` and by
    tests); the underscored ones are the "wire protocol" used by ``SimulatorTransport``.
    """

    def __init__(self, data_dir: Path, root: Path | None = None) -> None:
        """``root``: the server side's directory (``simulator.server_dir``; None =
        ``data_dir/simulator``); the hosts of a cluster share one."""
        root = Path(data_dir) / "simulator" if root is None else Path(root)
        make_private_dir(root)
        # No eviction: this is state, not a cache; losing a key would fake a logout.
        self._cache = open_disk_cache(root, **_SETTINGS)
        self._connections_path = root / CONNECTIONS_LOG
        self._inbox = diskcache.Deque.fromcache(open_disk_cache(root / "inbox", **_SETTINGS))
        self._bells = root / BELLS_DIR
        make_private_dir(self._bells)

    # ----------------------------------------------------------- operator controls

    def scan(self, session: str = "default", phone: str | None = None,
             code: str | None = None) -> str:
        """Scan the session's pending QR code with a phone whose number is ``phone``,
        or (with ``code``) type the pairing code the session requested for a number.

        The waiting client notices within one poll interval and links the device.
        Returns the phone number used.
        """
        with self._cache.transact(retry=True):
            pending = self._cache.get(_qr_key(session))
            problem = _scan_problem(session, pending, boot_clock())
            if problem is not None:
                raise SimulatorError(problem)
            if code is not None:
                if pending.get("pairing_code") != code.strip().upper():
                    raise SimulatorError(f"pairing code {code!r} does not match the one "
                                         f"session '{session}' requested")
                phone = pending["pairing_phone"]
            phone = _default_phone(session) if phone is None else checked_phone(phone)
            self._cache.set(_qr_key(session), {**pending, "phone": phone})
        return phone

    def drop(self, session: str | None = None, down_for: float = 0.0) -> None:
        """Cut the connections of ``session`` (all sessions when None).

        Only connected clients notice (a client still showing QR codes is not linked
        yet). With ``down_for > 0`` the server also stays unreachable for those
        sessions for that many seconds: connect attempts fail with
        ``Disconnected("server unreachable")`` until then (or until ``restore``).
        """
        if down_for > 0:
            self._extend_outage(session, boot_clock() + down_for)
        # After the outage is recorded, so a client reconnecting at once sees it.
        self._cache.incr(_drops_key(session), default=0, retry=True)
        self._bump()
        self._ring(session)

    def restore(self) -> None:
        """End every outage now."""
        self._cache.delete(_OUTAGES_KEY, retry=True)

    def logout(self, session: str) -> None:
        """Unlink the session's device "from the phone": its client gets ``LoggedOut``."""
        with self._cache.transact(retry=True):
            device = self._cache.get(_device_key(session))
            if device is None:
                raise SimulatorError(
                    f"session {session!r} has no linked device; pair it first "
                    "(connect the session, then scan its QR code)"
                )
            self._cache.delete(_device_key(session))
            self._cache.set(_unlinked_key(device["device_id"]), time.time())
            self._bump()
        self._ring(session)

    def fail_next(self, n: int, session: str | None = None, transient: bool = False,
                  ambiguous: bool = False, *, rate_overlimit: bool = False,
                  no_account: bool = False) -> None:
        """Reject the next ``n`` sends of ``session`` (of any session when None); with
        ``transient`` the server answers a temporary error that is worth retrying; with
        ``ambiguous`` it delivers the message but the ack never comes (as a send that
        times out: the sender cannot tell whether it arrived); ``rate_overlimit`` and
        ``no_account`` fail the recipient lookup before anything is sent, as the real
        engine's 429 rate-overlimit and "no LID found" do.

        Replaces any earlier count for the same scope and kind; ``n = 0`` cancels it.
        """
        if n < 0:
            raise SimulatorError(f"fail_next needs a count of 0 or more (got {n})")
        kind = ("ambiguous" if ambiguous else "transient" if transient
                else "rate_overlimit" if rate_overlimit else "no_account" if no_account
                else "rejected")
        self._cache.set(_fail_key(session, kind), n, retry=True)
        self._bump()

    def receipt(self, message_id: str, kind: str = "delivered", via_lid: bool = False,
                from_phone: str | None = None, session: str | None = None,
                at: float | None = None) -> dict[str, Any]:
        """Have the recipient's device confirm a delivered message (``message_id`` as
        in ``inbox``): the session's client reports it within one poll interval.

        ``via_lid``: the receipt names the sender by LID, as WhatsApp increasingly
        does; the client maps it back with its LID store. ``from_phone`` and
        ``session`` make it come from someone else, or reach another session; ``at``
        is the time the device wrote it (unix; default now).
        """
        if kind not in RECEIPT_KINDS:
            raise SimulatorError(f"a receipt is one of {', '.join(RECEIPT_KINDS)}, not {kind!r}")
        message = next((m for m in self._inbox if m["id"] == message_id), None)
        if message is None:
            raise SimulatorError(f"no delivered message has the id {message_id!r}; take one "
                                 "from `wagate sim inbox`")
        sender = checked_phone(from_phone) if from_phone is not None else message["to"]
        # Timed like a real receipt: when the recipient's device wrote it.
        entry = {"id": message_id, "kind": kind, "at": time.time() if at is None else at,
                 **_address(sender, via_lid)}
        self._queue_receipts(session or message["session"], [entry])
        return entry

    def reply(self, session: str, from_phone: str, text: str, quote: str | None = None,
              push_name: str = "", media: bytes | None = None,
              file_name: str = "") -> dict[str, Any]:
        """Someone (``from_phone``) writes ``text`` to the session's account, quoting
        ``quote`` (a WhatsApp message id, as in ``inbox``) when given: the session's
        client reports it within one poll interval (or at its next connect). With
        ``media`` they send a file (``text`` is its caption, and may be empty)."""
        if not text and media is None:
            raise SimulatorError("a reply needs some text (--text) or a file (--file)")
        if media is not None and not media:
            raise SimulatorError("the file is empty; send a file with content")
        for flag, value in (("--text", text), ("--name", push_name), ("--quote", quote or "")):
            _check_utf8(flag, value)
        entry: dict[str, Any] = {
            "id": "3EB0" + secrets.token_hex(9).upper(), "from": checked_phone(from_phone),
            "text": text, "quote": quote or "", "push_name": push_name, "at": time.time()}
        if media is not None:
            entry.update(media=True, file_name=file_name, size=len(media),
                         sha256=hashlib.sha256(media).hexdigest())
            self._cache.set(_media_key(entry["id"]), media, retry=True)
        with self._cache.transact(retry=True):
            waiting = self._cache.get(_incoming_key(session), [])
            self._cache.set(_incoming_key(session), [*waiting, entry])
        self._ring(session)
        return entry

    def read_marks(self) -> list[dict[str, Any]]:
        """Every read receipt a session's client sent (``whatsAppMarkRead``), oldest first."""
        return list(self._cache.get(_READ_MARKS_KEY, []))

    def auto_receipt(self, kind: str | None, via_lid: bool = False) -> None:
        """From now on every delivered message gets a ``kind`` receipt at once, reported
        before the send's own answer; ``None`` stops it."""
        if kind is None:
            self._cache.delete(_AUTO_RECEIPT_KEY, retry=True)
            self._bump()
            return
        if kind not in RECEIPT_KINDS:
            raise SimulatorError(f"a receipt is one of {', '.join(RECEIPT_KINDS)}, not {kind!r}")
        self._cache.set(_AUTO_RECEIPT_KEY, {"kind": kind, "lid": via_lid}, retry=True)
        self._bump()

    def unregister(self, phone: str) -> str:
        """``phone`` has no WhatsApp account from now on: lookups answer "not on
        WhatsApp" and messages to it are acked but never reach anyone (no receipts)."""
        digits = checked_phone(phone)
        self._cache.set(_unregistered_key(digits), time.time(), retry=True)
        self._bump()
        return digits

    def register(self, phone: str) -> str:
        """``phone`` has a WhatsApp account again (the default for every number)."""
        digits = checked_phone(phone)
        self._cache.delete(_unregistered_key(digits), retry=True)
        self._bump()
        return digits

    def is_registered(self, phone: str) -> bool:
        return self._cache.get(_unregistered_key(phone)) is None

    def lookups_down(self, down: bool) -> None:
        """While ``down``, every lookup fails (as a usync query that times out);
        sends are not affected."""
        if down:
            self._cache.set(_LOOKUPS_DOWN_KEY, True, retry=True)
        else:
            self._cache.delete(_LOOKUPS_DOWN_KEY, retry=True)

    def lookup_delay(self, seconds: float) -> None:
        """Every lookup answers only after ``seconds`` (0: at once), as a slow usync
        query; a closing client stops waiting."""
        if not 0 <= seconds <= 3600:
            raise SimulatorError(f"a lookup delay is 0 to 3600 seconds (got {seconds})")
        self._cache.set(_LOOKUP_DELAY_KEY, float(seconds), retry=True)

    def stall_after_send(self, seconds: float) -> None:
        """From now on every send stores its message in the recipient's inbox, then
        keeps its sender waiting ``seconds`` before the answer; 0 ends the stall, and the
        sends waiting then are answered at once. A closing client does not end the
        wait: the message is WhatsApp's already, and the answer is on its way (how a
        process stopped meanwhile loses a result whose message was delivered; the sent
        journal's test, issue 16)."""
        if not 0 <= seconds <= 3600:
            raise SimulatorError(f"a send stall is 0 to 3600 seconds (got {seconds})")
        self._cache.set(_SEND_STALL_KEY, float(seconds), retry=True)
        self._bump()

    def _stall(self, seconds: float) -> None:
        """A send's answer waits ``seconds``, or until the stall is set to 0."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, _STALL_POLL_SECONDS))
            if not self._cache.get(_SEND_STALL_KEY, 0.0):
                return

    def lookup_count(self) -> int:
        """How many lookup queries reached the server (one per batch, as a usync query)."""
        return int(self._cache.get(_LOOKUPS_KEY, 0))

    def media_bytes(self, message_id: str) -> bytes:
        """The file a media message in the inbox carried."""
        data = self._cache.get(_media_key(message_id))
        if data is None:
            raise SimulatorError(f"no media message {message_id!r} reached a recipient; "
                                 "`wagate sim inbox` lists the ids")
        return bytes(data)

    def inbox(self) -> list[dict[str, Any]]:
        """Every message that reached a recipient, oldest first."""
        return [dict(message) for message in self._inbox]

    def connection_records(self) -> list[ConnectionRecord]:
        """Every connection's up and down so far, oldest first (``connection_log``)."""
        try:
            text = self._connections_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return parse_records(text)

    def pending_qr(self, session: str) -> dict[str, Any] | None:
        """The session's scannable QR code as {code, expires_at}, or None."""
        pending = self._cache.get(_qr_key(session))
        if _scan_problem(session, pending, boot_clock()) is not None:
            return None
        return {"code": pending["code"], "expires_at": pending["expires_at"]}

    def devices(self) -> list[dict[str, Any]]:
        """The linked devices as {session, phone, linked_at}, by session name."""
        found = []
        for key in self._cache.iterkeys():
            if isinstance(key, tuple) and len(key) == 2 and key[0] == "device":
                device = self._cache.get(key)
                if device is not None:  # unlinked between listing and reading
                    found.append(
                        {"session": key[1], "phone": device["phone"],
                         "linked_at": device["linked_at"]}
                    )
        return sorted(found, key=lambda device: device["session"])

    def close(self) -> None:
        """Close the calling thread's database connections. diskcache opens an SQLite
        connection per thread and keeps it in a thread-local, and a thread that ends does
        not close it: a simulated connection's thread that ended without this call left
        four descriptors and their page caches open per reconnect (the soak benchmark
        saw a session process grow at every drop). The server works on afterwards: a
        thread that uses it again opens new ones."""
        self._inbox.cache.close()
        self._cache.close()

    # ----------------------------------------------------------- client protocol

    def _record_connection(self, kind: Kind, session: str, link: _Link, host: str) -> None:
        """Append one record with a single ``write`` on an ``O_APPEND`` descriptor: the
        kernel keeps the records of concurrent processes whole and in the order written."""
        line = ConnectionRecord(time.time_ns(), kind, session, link.phone, host, os.getpid(),
                                link.conn).to_line().encode()
        fd = os.open(self._connections_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _outage_until(self, session: str) -> float:
        """When the outage affecting ``session`` ends on the boot clock (0 when there is
        none)."""
        outages: dict[str | None, float] = self._cache.get(_OUTAGES_KEY, {})
        return max(outages.get(None, 0.0), outages.get(session, 0.0))

    def _extend_outage(self, session: str | None, until: float) -> None:
        with self._cache.transact(retry=True):
            outages = self._cache.get(_OUTAGES_KEY, {})
            outages[session] = max(outages.get(session, 0.0), until)
            self._cache.set(_OUTAGES_KEY, outages)

    def _bell(self, session: str | None) -> str:
        """The bell file of ``session`` (None: the one every session listens to). A
        plain string, not a ``Path``: it is built for every send and every look, and
        ``pathlib`` interns each part, which dies with the path. That churn alone made
        CPython rebuild its table of interned strings, at twice the size (+0.9 MiB in
        each session process of the soak, never given back)."""
        name = "all" if session is None else hashlib.sha256(session.encode()).hexdigest()[:32]
        return os.path.join(self._bells, name)

    def _ring(self, session: str | None) -> None:
        """Tell ``session``'s connection (every one when None) to read the server: called
        after the write it must notice. The time is set, not taken from the file system,
        whose timestamps are coarse: two rings within one clock tick still differ."""
        stamp = time.time_ns()
        try:
            fd = os.open(self._bell(session), os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return  # the write itself is stored: the safety-net read finds it
        try:
            os.utime(fd, ns=(stamp, stamp))
        except OSError:
            pass  # as above
        finally:
            os.close(fd)

    def _bells_of(self, session: str) -> tuple[int, int]:
        """The times of ``session``'s bell and of the shared one (0: never rung)."""
        stamps = []
        for path in (self._bell(session), self._bell(None)):
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:  # never rung, or unreadable: the safety net still reads
                stamps.append(0)
        return stamps[0], stamps[1]

    def _watch_bells(self, session: str) -> BellWatch | None:
        """An inotify watch on ``session``'s bell and the shared one (None: poll)."""
        return open_watch([Path(self._bell(session)), Path(self._bell(None))])

    def _bump(self) -> None:
        """Called after (or in the transaction of) a write a send must heed, so that a
        sending client reads the state again (``_SEND_STATE_KEY``)."""
        self._cache.incr(_SEND_STATE_KEY, default=0, retry=True)

    def _send_state_version(self) -> int:
        """The counter ``_bump`` increases: one small read per send (or per batch)."""
        return int(self._cache.get(_SEND_STATE_KEY, 0, retry=True))

    def _send_state(self, session: str, device_id: str) -> _SendState:
        """What a send of ``session``'s ``device_id`` must heed, with the version it is
        valid for; the version is read first, so a write during these reads makes it
        stale at once."""
        version = self._send_state_version()
        failures = any(self._cache.get(_fail_key(scope, kind), 0)
                       for kind in _FAILURE_KINDS for scope in (session, None))
        return _SendState(version, device_id, self._device_problem(session, device_id),
                          self._drop_marks(session), failures,
                          self._cache.get(_AUTO_RECEIPT_KEY),
                          stall=float(self._cache.get(_SEND_STALL_KEY, 0.0)))

    def _drop_marks(self, session: str) -> tuple[int, int]:
        """The drop counters a connection remembers; a change means it was dropped."""
        return (self._cache.get(_drops_key(session), 0), self._cache.get(_drops_key(None), 0))

    def _dropped(self, session: str, marks: tuple[int, int]) -> bool:
        return self._drop_marks(session) != marks

    def _device_problem(self, session: str, device_id: str) -> str | None:
        """Why ``device_id`` may not connect for ``session`` (None when it is linked)."""
        device = self._cache.get(_device_key(session))
        if device is not None and device["device_id"] == device_id:
            return None
        if self._cache.get(_unlinked_key(device_id)) is not None:
            return _UNLINKED_FROM_PHONE
        return _UNKNOWN_DEVICE

    def _offer_qr(self, session: str, code: str, expires_at: float, window_ends: float
                  ) -> None:
        """Make ``code`` the session's scannable QR code, replacing any earlier one
        (a pairing code requested during this pairing stays valid, as on WhatsApp)."""
        with self._cache.transact(retry=True):
            earlier = self._cache.get(_qr_key(session)) or {}
            kept = {k: earlier[k] for k in ("pairing_code", "pairing_phone") if k in earlier}
            self._cache.set(_qr_key(session), {"code": code, "expires_at": expires_at,
                                               "window_ends": window_ends,
                                               "phone": None, **kept})

    def _offer_pairing_code(self, session: str, phone: str) -> str:
        """Attach a phone-number pairing code to the session's current pairing."""
        alphabet = "ABCDEFGHJKLMNPQRSTVWXYZ23456789"
        code = "".join(secrets.choice(alphabet) for _ in range(8))
        code = f"{code[:4]}-{code[4:]}"
        with self._cache.transact(retry=True):
            pending = self._cache.get(_qr_key(session))
            if pending is None or pending["phone"] is not None:
                raise SendError("NOT_PAIRING", "the session is not pairing right now; call "
                                "whatsAppConnect first", permanent=True)
            self._cache.set(_qr_key(session), {**pending, "pairing_code": code,
                                               "pairing_phone": phone})
        return code

    def _poll_qr(self, session: str, code: str) -> _ScanOutcome:
        """Check the QR code ``code``; once scanned, link a new device and return it.

        One transaction with ``scan`` semantics on both sides, so a scan accepted just
        before the expiry is never lost to a client that saw the code as expired.
        """
        with self._cache.transact(retry=True):
            pending = self._cache.get(_qr_key(session))
            if pending is None or pending["code"] != code:
                return "expired"  # withdrawn or replaced by another client
            if pending["phone"] is None:
                return "waiting" if boot_clock() < _window_ends(pending) else "expired"
            device = {"device_id": secrets.token_hex(8), "phone": pending["phone"],
                      "linked_at": time.time()}  # a date
            self._cache.set(_device_key(session), device)
            self._cache.delete(_qr_key(session))
            self._bump()
            return device

    def _withdraw_qr(self, session: str, code: str) -> None:
        """Remove the session's pending QR code if it is still ``code``."""
        with self._cache.transact(retry=True):
            pending = self._cache.get(_qr_key(session))
            if pending is not None and pending["code"] == code:
                self._cache.delete(_qr_key(session))

    def _remove_device(self, session: str, device_id: str) -> None:
        """Unlink ``device_id`` (a logout by the client itself: no tombstone)."""
        with self._cache.transact(retry=True):
            device = self._cache.get(_device_key(session))
            if device is not None and device["device_id"] == device_id:
                self._cache.delete(_device_key(session))
                self._bump()
        self._ring(session)

    def _take_failure(self, session: str) -> SendError | None:
        """Consume one injected failure for ``session`` if any applies (atomically, so
        two concurrent senders never both consume the same one)."""
        keys = [_fail_key(scope, kind) for kind in _FAILURE_KINDS for scope in (session, None)]
        if not any(self._cache.get(key, 0) for key in keys):
            return None  # the usual case: plain reads, no write lock per send
        with self._cache.transact(retry=True):
            for kind in _FAILURE_KINDS:
                for key in (_fail_key(session, kind), _fail_key(None, kind)):
                    left = self._cache.get(key, 0)
                    if left > 0:
                        self._cache.set(key, left - 1)
                        self._bump()
                        return _failure(kind)
        return None

    def _lookup(self, phones: list[str]) -> list[bool]:
        """One batched lookup: whether each number has an account. Raises ``SendError``
        while lookups are down (``lookups_down``)."""
        self._cache.incr(_LOOKUPS_KEY, default=0, retry=True)
        if self._cache.get(_LOOKUPS_DOWN_KEY):
            raise SendError("TIMEOUT", "the simulated lookup timed out (injected with "
                            "lookups_down)", permanent=False)
        return [self.is_registered(phone) for phone in phones]

    def _deliver(self, session: str, sender: str, recipient: str, text: str,
                 media: OutgoingMedia | None = None) -> SentMessage:
        """Hand one message to its recipient (``_deliver_many``)."""
        return self._deliver_many(session, sender, [(recipient, text, media)])[0]

    def _deliver_many(self, session: str, sender: str,
                      items: list[tuple[str, str, OutgoingMedia | None]],
                      state: _SendState | None = None,
                      typed: Callable[[str], bool] | None = None) -> list[SentMessage]:
        """Hand messages (recipient, text, media) to their recipients: append them to the
        inbox with fresh ids in one transaction, so a batch lands whole or not at all
        (and queue the automatic receipts, when configured). A number with no account
        gets nothing: the server acks, but no recipient ever sees it or confirms it. A
        media message's bytes are kept beside the inbox (``media_bytes``).

        ``state``: the sender's current ``_SendState`` (automatic receipts and known
        accounts from it, not read again); ``typed``: whether a recipient may have a
        "typing..." mark to take (None: look for one every time)."""
        auto = self._cache.get(_AUTO_RECEIPT_KEY) if state is None else state.auto
        sent: list[SentMessage] = []
        landed: list[dict[str, Any]] = []
        for recipient, text, media in items:
            message: dict[str, Any] = {"id": "3EB0" + secrets.token_hex(9).upper(),
                                       "session": session, "from": sender, "to": recipient,
                                       "text": text, "time": time.time()}
            sent.append(SentMessage(message_id=message["id"], timestamp=message["time"]))
            registered = (self.is_registered(recipient) if state is None
                          else state.registered(recipient, self.is_registered))
            if not registered:
                continue
            if media is not None:
                message.update(kind=media.kind, mime=media.mime, size=len(media.data),
                               sha256=hashlib.sha256(media.data).hexdigest(),
                               file_name=media.file_name)
                self._cache.set(_media_key(message["id"]), media.data, retry=True)
            if typed is None or typed(recipient):
                typing_since = self._cache.pop(_typing_key(session, recipient), None,
                                               retry=True)
                if typing_since is not None:
                    message["typing_since"] = typing_since  # "typing..." showed from then on
            landed.append(message)
        if landed:
            # What ``Deque.append`` does, less its length check per message (the inbox
            # has no maximum length): concurrent appends of other processes all land.
            inbox = self._inbox.cache
            with inbox.transact(retry=True):
                for message in landed:
                    inbox.push(message, retry=True)
        if auto is not None and landed:
            self._queue_receipts(session, [{"id": message["id"], "kind": auto["kind"],
                                            "at": time.time(),
                                            **_address(message["to"], auto["lid"])}
                                           for message in landed])
        return sent

    def _typing(self, session: str, recipient: str) -> None:
        """The session's client shows "typing..." to ``recipient`` (until a message)."""
        self._cache.add(_typing_key(session, recipient), time.time(), retry=True)

    def _queue_receipts(self, session: str, entries: list[dict[str, Any]]) -> None:
        with self._cache.transact(retry=True):
            waiting = self._cache.get(_receipts_key(session), [])
            self._cache.set(_receipts_key(session), [*waiting, *entries])
        self._ring(session)

    def _take_incoming(self, session: str) -> list[dict[str, Any]]:
        """The messages waiting for ``session``, removed (each reported once)."""
        if not self._cache.get(_incoming_key(session)):
            return []
        with self._cache.transact(retry=True):
            waiting = self._cache.get(_incoming_key(session), [])
            self._cache.delete(_incoming_key(session))
        return list(waiting)

    def _requeue_incoming(self, session: str, entries: list[dict[str, Any]]) -> None:
        with self._cache.transact(retry=True):
            waiting = self._cache.get(_incoming_key(session), [])
            self._cache.set(_incoming_key(session), [*entries, *waiting])
        self._ring(session)

    def _mark_read(self, session: str, chat: str, sender: str, ids: list[str]) -> None:
        with self._cache.transact(retry=True):
            marks = self._cache.get(_READ_MARKS_KEY, [])
            self._cache.set(_READ_MARKS_KEY, [*marks, {"session": session, "chat": chat,
                                                       "sender": sender, "ids": list(ids),
                                                       "at": time.time()}])

    def _take_receipts(self, session: str) -> list[dict[str, Any]]:
        """The receipts waiting for ``session``, removed (each reported once)."""
        if not self._cache.get(_receipts_key(session)):
            return []  # the usual case: a plain read, no write lock per poll
        with self._cache.transact(retry=True):
            waiting = self._cache.get(_receipts_key(session), [])
            self._cache.delete(_receipts_key(session))
        return list(waiting)


def _window_ends(pending: dict[str, Any]) -> float:
    """When a pending QR code expires, on the boot clock (an entry written before the
    window was kept there has none: expired)."""
    return float(pending.get("window_ends", 0.0))


def _scan_problem(session: str, pending: dict[str, Any] | None, boot_now: float
                  ) -> str | None:
    """Why the session's pending QR code cannot be scanned at ``boot_now`` (the boot
    clock, see ``_window_ends``); None when it can."""
    if pending is None:
        return (f"no QR code is pending for session {session!r}; start pairing "
                "(connect the session without credentials) and scan while a code is shown")
    if pending["phone"] is not None:
        return f"the QR code of session {session!r} was already scanned; wait for it to link"
    if boot_now >= _window_ends(pending):
        return (f"the QR code of session {session!r} has expired; wait for the next code "
                "and scan again")
    return None


def _address(phone: str, via_lid: bool) -> dict[str, str]:
    """How a receipt names its sender: by number, or by the number's LID."""
    if via_lid:
        return {"user": lid_of(phone), "server": "lid"}
    return {"user": phone, "server": "s.whatsapp.net"}


def incoming_of(entry: dict[str, Any]) -> IncomingMessage:
    """A message as the simulated server queued it, as the client reports it: always a
    direct text chat from a number, as most replies to notifications are."""
    jid = f"{entry['from']}@s.whatsapp.net"
    return IncomingMessage(message_id=entry["id"], chat=jid, sender_jid=jid,
                           sender_phone=entry["from"], sender_lid=f"{lid_of(entry['from'])}@lid",
                           push_name=entry.get("push_name", ""), text=entry["text"],
                           quoted_id=entry.get("quote", ""), at=entry["at"],
                           kind="media" if entry.get("media") else "text",
                           file_name=entry.get("file_name", ""))


def _default_phone(session: str) -> str:
    """A fake but stable number per session, so repeated demo runs show the same one."""
    digest = hashlib.sha256(session.encode("utf-8")).digest()
    return f"1555{int.from_bytes(digest[:8], 'big') % 10_000_000:07d}"


def checked_phone(phone: str) -> str:
    digits = phone.removeprefix("+")
    if not digits.isdigit() or not 7 <= len(digits) <= 15 or not digits.isascii():
        raise SimulatorError(f"{phone!r} is not a phone number; give 7 to 15 digits "
                             "with the country code, e.g. 15551234567")
    return digits


# --------------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class _Link:
    """What a connected client knows about its link: enough to check it is still valid."""

    device_id: str
    phone: str
    marks: tuple[int, int]  # the server's drop counters when it connected
    conn: str = ""  # this connection's id in the connection log


@dataclass(slots=True)
class _SendState:
    """What a client last read of the server's state that its sends must heed, valid
    while the server's ``_SEND_STATE_KEY`` still holds ``version``."""

    version: int
    device_id: str  # the linked device it was read for
    problem: str | None  # why that device may not send (None: it is linked)
    marks: tuple[int, int]  # the drop counters then
    failures: bool  # an injected failure may apply: ask the server at each send
    auto: dict[str, Any] | None  # the automatic receipts configured then
    accounts: dict[str, bool] = field(default_factory=dict)  # numbers looked up since
    stall: float = 0.0  # seconds each send's answer waits after delivery (stall_after_send)

    def lost(self, link: _Link) -> bool:
        """Whether ``link`` was unlinked or dropped as of this state."""
        return self.problem is not None or self.marks != link.marks

    def registered(self, phone: str, ask: Callable[[str], bool]) -> bool:
        """Whether ``phone`` has an account, asking the server once per state."""
        known = self.accounts.get(phone)
        if known is None:
            known = self.accounts[phone] = ask(phone)
        return known


@dataclass(eq=False, slots=True)
class _Connection:
    """One ``connect`` call: its thread, its stop flag and its current link."""

    on_event: EventSink
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    link: _Link | None = None  # set while connected; sends need it
    logged: _Link | None = None  # the link whose "up" is in the connection log
    ended: bool = False  # the thread is done reporting (set before its last event)
    watch: BellWatch | None = None  # the bells' inotify watch while linked (None: polling)
    watch_lock: threading.Lock = field(default_factory=threading.Lock)  # guards its close


class _BadCredentials(WagateError):
    """The credentials file exists but cannot be read as credentials."""


_SERVERS: weakref.WeakValueDictionary[tuple[int, Path, Path | None], SimulatorServer] = (
    weakref.WeakValueDictionary())
_SERVERS_LOCK = threading.Lock()
_last_server: SimulatorServer | None = None  # kept while no client holds it


def shared_server(data_dir: Path, root: Path | None = None) -> SimulatorServer:
    """This process's one handle on the server at ``data_dir`` / ``root``.

    diskcache keeps an SQLite connection per thread and per handle, and closes only the
    calling thread's. A session makes a new client at every drop; had each its own
    handle, the session's long-lived send threads would keep every old handle's
    connections open (two descriptors and their page caches per drop). One handle per
    process bounds them by the number of threads. The last one asked for stays between
    a client's close and the next client; others go with their last client (a test
    process meets many data dirs)."""
    global _last_server
    key = (os.getpid(), Path(data_dir).resolve(), None if root is None else Path(root).resolve())
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = _SERVERS[key] = SimulatorServer(data_dir, root)
        _last_server = server
        return server


class SimulatorTransport(Transport):
    """One simulated WhatsApp client for one session (lives in a session actor process)."""

    def __init__(self, session_id: str, data_dir: Path, qr: QrConfig,
                 sim: SimulatorConfig, *, store_dir: Path | None = None,
                 server_dir: Path | None = None, host_name: str = "") -> None:
        """``store_dir`` holds the credentials (default ``data_dir/sessions/<session>``;
        with encrypted stores, the session's private working copy); ``host_name`` names
        this host in the connection log ("" = the machine's hostname)."""
        check_session_id(session_id)
        self._session = session_id
        self._host = host_name or socket.gethostname()
        self._qr = qr
        self._sim = sim
        store = Path(data_dir) / "sessions" / session_id if store_dir is None else store_dir
        self._creds_path = store / "simulator.json"
        self._server = shared_server(data_dir, server_dir)
        self._lock = threading.Lock()  # guards _conn and _closed
        # Held while an event is delivered, and to stop a connection: once stop()
        # returned no event of that connection can still be on its way.
        self._emit_lock = threading.RLock()
        self._conn: _Connection | None = None
        self._closed = False
        # The client's LID store: like whatsmeow, it learns a recipient's LID when it
        # looks the recipient up before a send (kept in memory here).
        self._lids: dict[str, str] = {}
        self._state: _SendState | None = None  # what the last send read (``_state_for``)
        self._typing_to: set[str] = set()  # recipients shown "typing..." (``_typed``)

    # ------------------------------------------------------------------ interface

    def has_credentials(self) -> bool:
        return self._creds_path.is_file()

    def connect(self, on_event: EventSink) -> None:
        """Start one connection thread; a no-op while a connection is still running."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this SimulatorTransport is closed")
            previous = self._conn
            if previous is not None and not previous.ended and not previous.stop.is_set():
                return
            if previous is not None:
                _join(previous)  # it reported its last event; let it finish exiting
            conn = _Connection(on_event)
            conn.thread = threading.Thread(target=self._run, args=(conn,), daemon=True,
                                           name=f"simulator-{self._session}")
            self._conn = conn
            conn.thread.start()

    def send_text(self, phone: str, text: str) -> SentMessage:
        return self._send(phone, text, None)

    def send_media(self, phone: str, media: OutgoingMedia) -> SentMessage:
        """Like a text, with the file: the recipient keeps its bytes (``wagate sim media``)."""
        return self._send(phone, media.caption, media)

    def sends_quickly(self) -> bool:
        """Without an artificial delay a send is a few local database writes."""
        return self._sim.send_delay_seconds <= 0

    def send_texts(self, items: Sequence[tuple[str, str]]) -> list[SentMessage | SendError]:
        """Without a delay: one read of the server's state version for the batch, and
        one inbox transaction for every message delivered (``_deliver_many``)."""
        if self._sim.send_delay_seconds > 0:
            return super().send_texts(items)
        return self._send_now([(phone, text, None) for phone, text in items])

    def _send(self, phone: str, text: str, media: OutgoingMedia | None) -> SentMessage:
        with self._lock:
            conn = self._conn
        delay = self._sim.send_delay_seconds
        if conn is not None and conn.link is not None and delay > 0 and conn.stop.wait(delay):
            raise SendError("NOT_CONNECTED", "the connection was closed while sending",
                            permanent=False)
        outcome = self._send_now([(phone, text, media)])[0]
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    def _send_now(self, items: list[tuple[str, str, OutgoingMedia | None]]
                  ) -> list[SentMessage | SendError]:
        """Send ``items`` in order; stops after a RATE_OVERLIMIT (as ``send_texts``)."""
        with self._lock:
            conn = self._conn
        link = conn.link if conn is not None else None
        if conn is None or link is None:
            return [SendError("NOT_CONNECTED", "the session is not connected",
                              permanent=False) for _ in items]
        # Ask the server rather than trust the local flag: a drop the poller has not
        # noticed yet must still fail the send, as a dead socket would. One read of the
        # state's version says whether what this client read last still holds.
        state = self._state_for(link)
        if state.lost(link):
            return [SendError("NOT_CONNECTED", "the connection was lost", permanent=False)
                    for _ in items]
        outcomes: list[SentMessage | SendError | None] = []
        delivered: list[tuple[str, str, OutgoingMedia | None]] = []
        slots: list[int] = []  # which outcome each delivered message answers (-1: none)
        for phone, text, media in items:
            failure = self._server._take_failure(self._session) if state.failures else None
            if failure is not None:
                if failure.uncertain:  # it did arrive; only the answer was lost
                    delivered.append((phone, text, media))
                    slots.append(-1)
                outcomes.append(failure)
                if failure.reason == RATE_OVERLIMIT:
                    break  # the caller holds back the rest (``send_texts``)
                continue
            self._lids[lid_of(phone)] = phone
            delivered.append((phone, text, media))
            slots.append(len(outcomes))
            outcomes.append(None)
        if delivered:
            sent = self._server._deliver_many(self._session, link.phone, delivered, state,
                                              self._typed)
            for slot, message in zip(slots, sent, strict=True):
                if slot >= 0:
                    outcomes[slot] = message
            if state.auto is not None:
                self._report_receipts(conn)  # an automatic receipt arrives before the ack
            if state.stall > 0:  # delivered; the ack is slow (stall_after_send)
                self._server._stall(state.stall)
        return [outcome for outcome in outcomes if outcome is not None]

    def _state_for(self, link: _Link) -> _SendState:
        """The server's state for sends over ``link``: what was read last while the
        server's version is unchanged (one small read), else read again."""
        state = self._state
        if (state is None or state.device_id != link.device_id
                or state.version != self._server._send_state_version()):
            state = self._state = self._server._send_state(self._session, link.device_id)
        return state

    def _typed(self, phone: str) -> bool:
        """Whether this client showed "typing..." to ``phone`` since its last message
        to it (then the server has a mark to take); forgets it."""
        with self._lock:
            if phone in self._typing_to:
                self._typing_to.discard(phone)
                return True
            return False

    def check_numbers(self, phones: list[str]) -> list[NumberInfo]:
        """One lookup for all of ``phones``; needs a live connection, as a usync query."""
        with self._lock:
            conn = self._conn
        link = conn.link if conn is not None else None
        if conn is None or link is None:
            raise SendError("NOT_CONNECTED", "the session is not connected", permanent=False)
        delay = float(self._server._cache.get(_LOOKUP_DELAY_KEY, 0.0))
        if delay > 0 and conn.stop.wait(delay):
            raise SendError("NOT_CONNECTED", "the connection was closed while looking up",
                            permanent=False)
        answers = self._server._lookup(list(phones))
        return [NumberInfo(phone, on, f"{phone}@s.whatsapp.net" if on else "",
                           lid=f"{lid_of(phone)}@lid" if on else "")
                for phone, on in zip(phones, answers, strict=True)]

    def mark_read(self, chat: str, sender_jid: str, message_ids: list[str]) -> None:
        """Recorded by the server (``SimulatorServer.read_marks``); needs a live link."""
        with self._lock:
            conn = self._conn
        if conn is None or conn.link is None:
            raise SendError("NOT_CONNECTED", "the session is not connected", permanent=False)
        self._server._mark_read(self._session, chat, sender_jid, message_ids)

    def send_typing(self, phone: str) -> None:
        """Recorded by the server: the message that follows carries ``typing_since``
        in ``wagate sim inbox``."""
        with self._lock:
            conn = self._conn
        if conn is not None and conn.link is not None:
            self._server._typing(self._session, phone)
            with self._lock:
                self._typing_to.add(phone)

    def request_pairing_code(self, phone: str) -> str:
        """The code ``wagate sim scan --code`` must type, like WhatsApp's 'link with
        phone number instead'. Only while this client shows a QR code."""
        with self._lock:
            conn = self._conn
        if conn is None or conn.ended or conn.link is not None:
            raise SendError("NOT_PAIRING", "the session is not pairing right now; call "
                            "whatsAppConnect first", permanent=True)
        return self._server._offer_pairing_code(self._session, phone)

    def logout(self) -> None:
        """Unlink the device and forget it; like whatsmeow, no ``LoggedOut`` is reported."""
        with self._lock:
            conn = self._conn
        if conn is not None:
            self._stop(conn)
        with contextlib.suppress(_BadCredentials):
            creds = self._read_credentials()
            if creds is not None:
                self._server._remove_device(self._session, creds["device_id"])
        self._delete_credentials()
        if conn is not None:
            _join(conn)

    def close(self) -> None:
        with self._lock:
            first = not self._closed
            self._closed = True
            conn = self._conn
        if conn is not None:
            self._stop(conn)  # every caller, so no event follows any close() that returned
            _join(conn)
        if first:
            self._server.close()

    # ---------------------------------------------------------- connection thread

    def _run(self, conn: _Connection) -> None:
        """The body of one connection: resume or pair, then watch the link."""
        try:
            if self._server._outage_until(self._session) > boot_clock():
                self._finish(conn, Disconnected("server unreachable"))
                return
            try:
                creds = self._read_credentials()
            except _BadCredentials:
                self._delete_credentials()
                self._finish(conn, LoggedOut("stored credentials are unreadable"))
                return
            if creds is None:
                creds = self._pair(conn)
            elif (problem := self._server._device_problem(self._session,
                                                          creds["device_id"])) is not None:
                self._delete_credentials()
                self._finish(conn, LoggedOut(problem))
                return
            if creds is not None:
                self._serve(conn, creds)
        except Exception as exc:  # a broken simulator dir must not leave the actor waiting
            self._finish(conn, Disconnected(f"simulator error: {exc!r}"))
        finally:
            with conn.watch_lock:
                watch, conn.watch = conn.watch, None
            if watch is not None:
                watch.close()
            conn.link = None
            conn.ended = True
            logged, conn.logged = conn.logged, None
            if logged is not None:  # after the poller stopped: the connection is down
                self._server._record_connection("down", self._session, logged, self._host)
            self._server.close()  # this thread's connections (SimulatorServer.close)

    def _pair(self, conn: _Connection) -> dict[str, Any] | None:
        """Show up to ``qr.codes`` QR codes; return the new credentials once one is scanned."""
        keys = _pairing_keys()  # like whatsmeow: the keys stay, only the reference rotates
        code = ""
        try:
            for index in range(self._qr.codes):
                code = _qr_payload(keys)
                ttl = self._qr.first_seconds if index == 0 else self._qr.next_seconds
                expires_at = time.time() + ttl  # the date shown; the window is:
                self._server._offer_qr(self._session, code, expires_at, boot_clock() + ttl)
                if not self._emit(conn, QrCode(code, expires_at)):
                    return None
                device = self._await_scan(conn, code)
                if device is not None:
                    creds = {key: device[key] for key in ("device_id", "phone", "linked_at")}
                    _write_private_json(self._creds_path, creds)
                    return creds if self._emit(conn, PairingClosed("success")) else None
                if conn.stop.is_set():
                    return None
            self._server._withdraw_qr(self._session, code)
            self._finish(conn, PairingClosed("timeout"))
            return None
        finally:
            self._server._withdraw_qr(self._session, code)  # no-op once scanned

    def _await_scan(self, conn: _Connection, code: str) -> dict[str, Any] | None:
        """Poll one QR code until it is scanned (the device) or expires/stops (None)."""
        while True:
            outcome = self._server._poll_qr(self._session, code)
            if isinstance(outcome, dict):
                return outcome
            if outcome == "expired" or conn.stop.wait(self._sim.poll_interval_seconds):
                return None

    def _serve(self, conn: _Connection, creds: dict[str, Any]) -> None:
        """Report ``Connected`` and watch the server until the link ends."""
        # Watching before the link is up: nothing rung after "Connected" goes unheard.
        conn.watch = self._server._watch_bells(self._session)
        link = _Link(creds["device_id"], creds["phone"], self._server._drop_marks(self._session),
                     secrets.token_hex(8))
        # Up before anything can use the link, down (in _run) after nothing can: the
        # recorded interval contains the real one.
        self._server._record_connection("up", self._session, link, self._host)
        conn.logged = conn.link = link
        if not self._emit(conn, Connected(link.phone)):
            return
        heard: tuple[int, int] | None = None
        look_at = 0.0
        while True:
            # The bells first: a ring after this look is heard at the next poll.
            bells = self._server._bells_of(self._session)
            if bells != heard or time.monotonic() >= look_at:
                heard, look_at = bells, time.monotonic() + self._sim.idle_check_seconds
                if not self._look(conn, link):
                    return
            # At most one look per poll interval, however often the bells ring; then,
            # with inotify, sleep until a ring (or the safety net's time, or a stop).
            if conn.stop.wait(self._sim.poll_interval_seconds):
                return
            if conn.watch is not None:
                conn.watch.wait(look_at - time.monotonic())
                if conn.stop.is_set():
                    return

    def _look(self, conn: _Connection, link: _Link) -> bool:
        """Report what waits on the server; False once the link ended (unlinked, dropped)."""
        self._report_incoming(conn)
        if conn.stop.is_set():
            return False
        self._report_receipts(conn)
        problem = self._server._device_problem(self._session, link.device_id)
        if problem is not None:
            self._delete_credentials()
            self._finish(conn, LoggedOut(problem))
            return False
        if self._server._dropped(self._session, link.marks):
            self._finish(conn, Disconnected("connection lost"))
            return False
        return True

    # ------------------------------------------------------------------- helpers

    def _report_receipts(self, conn: _Connection) -> None:
        """Report the receipts waiting on the server, a LID mapped to its number."""
        for entry in self._server._take_receipts(self._session):
            phone = peer_phone(entry["user"], entry["server"], (), self._lids.__getitem__)
            self._emit(conn, Receipt(entry["id"], entry["kind"], phone, entry.get("at", 0.0)))

    def _report_incoming(self, conn: _Connection) -> None:
        """Report the messages written to this account (a direct chat, by number)."""
        waiting = self._server._take_incoming(self._session)
        for index, entry in enumerate(waiting):
            event = incoming_of(entry)
            if entry.get("media"):  # the engine downloads the file with the message
                event = replace(event, media_data=self._server.media_bytes(entry["id"]))
            if not self._emit(conn, event):
                self._server._requeue_incoming(self._session, waiting[index:])
                return  # stopped: the next connection reports them

    def _emit(self, conn: _Connection, event: TransportEvent) -> bool:
        """Deliver ``event`` unless the connection was stopped; returns whether it was."""
        with self._emit_lock:
            if conn.stop.is_set():
                return False
            conn.on_event(event)
            return True

    def _finish(self, conn: _Connection, event: TransportEvent) -> None:
        """Report the connection's last event, marked ended first so that a
        ``connect`` triggered by this event starts a fresh connection."""
        conn.link = None
        conn.ended = True
        self._emit(conn, event)

    def _stop(self, conn: _Connection) -> None:
        with self._emit_lock:  # waits for an event being delivered right now
            conn.stop.set()
            with conn.watch_lock:
                if conn.watch is not None:
                    conn.watch.wake()

    def _read_credentials(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._creds_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _BadCredentials(str(exc)) from exc
        if not isinstance(data, dict) or not {"device_id", "phone"} <= data.keys():
            raise _BadCredentials(f"{self._creds_path} lacks device_id/phone")
        return data

    def _delete_credentials(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._creds_path.unlink()


# --------------------------------------------------------------------------- utilities


def _pairing_keys() -> tuple[bytes, bytes, bytes]:
    """Stand-ins for the noise public key, identity key and adv secret of a new device."""
    return secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)


def _qr_payload(keys: tuple[bytes, bytes, bytes]) -> str:
    """A pairing string in WhatsApp's format: ``2@ref,noise,identity,adv`` (base64)."""
    parts = [secrets.token_bytes(24), *keys]
    return "2@" + ",".join(base64.b64encode(part).decode("ascii") for part in parts)


def _join(conn: _Connection) -> None:
    thread = conn.thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(_JOIN_TIMEOUT_SECONDS)




def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temp file + rename) as a 0600 file in 0700 directories,
    so a crash never leaves half-written credentials behind."""
    make_private_dir(path.parent.parent)
    make_private_dir(path.parent)
    write_atomic(path, json.dumps(data))


def _check_utf8(flag: str, value: str) -> None:
    """Refuse text that is not valid Unicode. Python decodes argv bytes that are not
    UTF-8 (a Latin-1 terminal's ``café``) to lone surrogates; queued as they are, the
    session's client would take the reply off the queue and the outbox fail to store
    it: gone, while the command said it was sent. Said here, the user can fix it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SimulatorError(
            f"{flag} is not valid UTF-8 text (the terminal sent bytes in another "
            "encoding); set a UTF-8 locale, e.g. LANG=C.UTF-8, and type it again") from None
