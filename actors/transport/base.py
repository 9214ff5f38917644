"""The one interface every WhatsApp transport implements, and its closed set of events.

A transport is owned by exactly one session actor and lives in that actor's process.
Its calls may block (a real dial can hang for a minute), so the session actor calls
them from worker threads; events come back on the transport's own threads through
the ``on_event`` callback, which must never block (the session actor hands them to
its main thread through a queue and a self-pipe).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import WagateError
from gateway.core.names import is_session_name


@dataclass(frozen=True, slots=True)
class QrCode:
    """A new pairing code to show; replaces the previous one."""

    code: str  # the raw pairing string, rendered as a QR by the web tier
    expires_at: float  # unix time at which this code stops being scannable


@dataclass(frozen=True, slots=True)
class PairingClosed:
    """The pairing window ended: ``success``, ``timeout`` (all codes expired) or an error."""

    reason: str


@dataclass(frozen=True, slots=True)
class Connected:
    """Authenticated and ready to send; ``phone`` is the linked account's number (digits)."""

    phone: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection is gone (or a connect attempt failed); the session may reconnect.

    ``recovering`` means the client is already reconnecting by itself (whatsmeow does
    after a successful login): the session then only watches, with a watchdog,
    instead of closing the client and starting its own attempts.
    """

    reason: str
    recovering: bool = False


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """The device was unlinked (from the phone or by the server); credentials are void."""

    reason: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """The recipient's device confirmed a message: ``kind`` is ``delivered`` or ``read``.

    ``phone`` is the number (digits) of whoever sent the receipt. WhatsApp names more
    and more people by LID instead of their number: the transport maps a LID to the
    number (``peer_phone``); ``""`` when it cannot.
    """

    message_id: str
    kind: str
    phone: str = ""
    # When the recipient's device sent it (unix time, from the receipt itself); 0 when
    # the engine does not say. The message's DELIVERED/READ time is this one, not the
    # moment the receipt happened to reach the outbox (it may have waited there).
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """Someone wrote to the linked account (a reply to a notification, usually).

    ``kind`` is ``text`` for plain or extended text (``text`` holds it); any other kind
    (``image``, ``audio``, ``reaction`` ...) keeps ``text`` empty (or the caption) and
    describes itself in ``meta`` (small, str -> str; media bytes are never fetched
    here). ``sender_phone`` is the sender's number (digits, "" when WhatsApp named
    the sender only by LID and the engine could not map it); ``sender_jid`` the
    address WhatsApp used; ``sender_lid`` the LID where one was given. ``chat`` is the
    conversation's address: the sender's own for a direct chat, the group's for a
    group (``is_group``). ``at`` is WhatsApp's timestamp (unix seconds).
    """

    message_id: str  # WhatsApp's id (what a read receipt names)
    chat: str
    sender_jid: str
    sender_phone: str = ""
    sender_lid: str = ""
    push_name: str = ""
    is_group: bool = False
    kind: str = "text"
    text: str = field(default="", repr=False)  # personal data: never in a log line
    quoted_id: str = ""  # the WhatsApp id of the message this one replies to
    at: float = 0.0
    meta: tuple[tuple[str, str], ...] = ()
    # A media message's file as the engine downloaded it (None: no media, or not
    # downloaded); the session stores it in the media store at once.
    media_data: bytes | None = field(default=None, repr=False)
    file_name: str = ""


@dataclass(frozen=True, slots=True)
class TemporaryBan:
    """The account is banned until ``until`` (unix time); reconnecting earlier is refused.

    ``until`` is None when the engine could not report the ban's end (a ban code it has
    no name for: its event is lost, see ``actors.transport.engine_events``).
    """

    until: float | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StreamReplaced:
    """The same device connected elsewhere; reconnecting would fight over it."""


@dataclass(frozen=True, slots=True)
class ClientOutdated:
    """The server refuses this client version; an upgrade is needed."""


TransportEvent = (
    QrCode
    | PairingClosed
    | Connected
    | Disconnected
    | LoggedOut
    | Receipt
    | IncomingMessage
    | TemporaryBan
    | StreamReplaced
    | ClientOutdated
)

EventSink = Callable[[TransportEvent], None]


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What the server said when it accepted a message."""

    message_id: str  # WhatsApp's id for the message (matches later receipts)
    timestamp: float  # server time, unix seconds


@dataclass(frozen=True, slots=True)
class OutgoingMedia:
    """A media message to send: the file's bytes (decrypted from the media store by the
    session, never from the caller's request again), checked kind and MIME type."""

    kind: str  # IMAGE, VIDEO, AUDIO, VOICE, DOCUMENT, STICKER (actors.media.kinds.Kind)
    mime: str
    data: bytes = field(repr=False)
    caption: str = field(default="", repr=False)
    file_name: str = ""


@dataclass(frozen=True, slots=True)
class NumberInfo:
    """What WhatsApp said about one number in a lookup.

    ``jid``/``lid``: its addresses ("" when not on WhatsApp or not given);
    ``business``: None when the engine does not say.
    """

    phone: str
    on_whatsapp: bool
    jid: str = ""
    lid: str = ""
    business: bool | None = None


class SendError(WagateError):
    """A send the server did not accept.

    ``permanent`` tells whether retrying the same message can ever succeed (an
    invalid recipient: no; a dropped socket: yes). ``uncertain``: the message may
    have reached WhatsApp all the same (the ack never came), so sending it again may
    deliver it twice; the outbox flags it and applies ``delivery.on_uncertain``.
    ``reason`` is a stable, upper-case token for ``extensions.reason``
    (``NOT_CONNECTED``, ``REJECTED``, ``AMBIGUOUS`` ...).
    """

    def __init__(self, reason: str, message: str, *, permanent: bool,
                 uncertain: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent
        self.uncertain = uncertain


# ``SendError.reason`` tokens the outbox acts on (beyond retrying or failing):
NOT_ON_WHATSAPP = "NOT_ON_WHATSAPP"  # the number has no account: failed, and remembered
RATE_OVERLIMIT = "RATE_OVERLIMIT"  # WhatsApp rate-limits the account: pause its sends


class EngineSetupError(WagateError):
    """The engine cannot be used in this process; the message names the cause and what
    the operator does about it (shown as the session's ``lastError``)."""


class Transport(ABC):
    """One WhatsApp client for one session."""

    def clients_created(self) -> int:
        """Engine clients created in this process so far, by every transport of it
        (0 for an engine whose clients leave nothing behind): the session replaces its
        process once this reaches ``transport.max_clients_per_process``."""
        return 0

    @abstractmethod
    def connect(self, on_event: EventSink) -> None:
        """Start connecting and return at once.

        With stored credentials it resumes the linked device; without, it begins
        pairing and reports ``QrCode`` events. Every outcome arrives as an event
        (``Connected``, ``Disconnected`` for a failed attempt, ``PairingClosed`` ...).
        """

    @abstractmethod
    def send_text(self, phone: str, text: str) -> SentMessage:
        """Send plain text to a normalised number (digits only). Blocks until the
        server accepts it; raises ``SendError`` otherwise."""

    def sends_quickly(self) -> bool:
        """Whether ``send_texts`` returns within a moment (local work only, never a
        network wait), so the session may call it on its own thread. The real engine
        waits for WhatsApp's ack: its sends stay on worker threads (the default)."""
        return False

    def send_texts(self, items: Sequence[tuple[str, str]]) -> list[SentMessage | SendError]:
        """Send several (phone, text) in order; each answer (or ``SendError``) in order.
        It stops after an answer of RATE_OVERLIMIT (WhatsApp asks to hold back): the
        list is then shorter, and the rest were not tried. Another exception means
        nobody knows which were sent. One by one by default; an engine may do better
        (the simulator: one transaction)."""
        outcomes: list[SentMessage | SendError] = []
        for phone, text in items:
            try:
                outcomes.append(self.send_text(phone, text))
            except SendError as exc:
                outcomes.append(exc)
                if exc.reason == RATE_OVERLIMIT:
                    break
        return outcomes

    def send_media(self, phone: str, media: OutgoingMedia) -> SentMessage:
        """Upload and send a media message; blocks like ``send_text``. An engine without
        media refuses it for good (the message fails, it is not retried)."""
        raise SendError("UNSUPPORTED", f"this engine cannot send {media.kind} messages",
                        permanent=True)

    @abstractmethod
    def logout(self) -> None:
        """Unlink the device on the server (best effort) and delete stored credentials."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect and release threads and files; no event is reported after it returns."""

    def send_typing(self, phone: str) -> None:
        """Show "typing..." in the chat with ``phone`` (best effort: a failure only
        means the indicator is missing). Engines without chat presence do nothing."""
        return None

    def mark_read(self, chat: str, sender_jid: str, message_ids: list[str]) -> None:
        """Tell the sender the messages were read (blue ticks): one read receipt naming
        ``message_ids`` of ``chat`` from ``sender_jid``. Blocks; raises ``SendError``."""
        raise SendError("UNSUPPORTED", "this engine cannot mark messages read", permanent=True)

    def check_numbers(self, phones: list[str]) -> list[NumberInfo]:
        """Whether each normalised number has a WhatsApp account, in one query where
        the engine allows (WhatsApp watches these lookups for abuse). Blocks; raises
        ``SendError`` when the answer is unknown (not connected, timed out ...)."""
        raise SendError("UNSUPPORTED", "this engine cannot look numbers up", permanent=True)

    def request_pairing_code(self, phone: str) -> str:
        """Pair by phone number instead of QR: returns the 8-character code the user
        types on the phone. Only while pairing (after the first ``QrCode``). Blocks."""
        raise SendError("UNSUPPORTED", "this engine cannot pair by phone code", permanent=True)

    @abstractmethod
    def has_credentials(self) -> bool:
        """Whether a linked device is stored, so ``connect`` resumes without a QR."""


# ---- helpers shared by the engines ------------------------------------------------------


# WhatsApp's servers of user addresses: phone numbers, and LIDs (hidden user ids that do
# not reveal the number). "hosted" ones are business-hosted variants of the same.
PHONE_SERVERS = frozenset({"s.whatsapp.net", "c.us", "hosted"})
LID_SERVERS = frozenset({"lid", "hosted.lid"})


def peer_phone(user: str, server: str, alternates: Iterable[tuple[str, str]],
               lid_lookup: Callable[[str], str]) -> str:
    """The phone number (digits) behind a WhatsApp address, or ``""``.

    A phone address is its own number. A LID is mapped through the alternate
    addresses WhatsApp sent along (``sender_pn``), else through the engine's LID store
    (``lid_lookup``, which whatsmeow fills whenever it looks a recipient up before a
    send). Anything else (a group, a newsletter, an unknown LID) has no number here.
    """
    if server in PHONE_SERVERS:
        return _user_digits(user)
    if server not in LID_SERVERS:
        return ""
    for alt_user, alt_server in alternates:
        if alt_server in PHONE_SERVERS and _user_digits(alt_user):
            return _user_digits(alt_user)
    try:
        return _user_digits(lid_lookup(user))
    except Exception:  # a failed lookup is an unknown LID, never a crash
        return ""


def _user_digits(user: str) -> str:
    """The digits of a user part, without a device ("4917...:7") or agent suffix."""
    bare = user.split(":", 1)[0].split(".", 1)[0]
    return bare if bare.isdigit() and bare.isascii() else ""


def check_session_id(session_id: str) -> None:
    """The id becomes a directory name: refuse anything but a name the API accepts
    (``gateway/core/names.py``), so nothing can leave ``sessions/``."""
    if not is_session_name(session_id):
        raise ValueError(f"invalid session id {session_id!r}")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) and make ``path`` itself mode 0700:
    stored credentials are the keys to a phone number."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
