"""A received WhatsApp message (the engine's ``Message`` event) as an ``IncomingMessage``.

Pure: it reads the event's protobuf by field name and never imports the engine, so it
is tested with neonize's real protobuf classes in any process, and the engine's
session process only calls it. The event's layout (neonize's ``Neonize_pb2.Message``):
``Info`` (``MessageSource`` with ``Chat``/``Sender``/``SenderAlt``/``IsFromMe``/
``IsGroup``, then ``ID``, ``Pushname``, ``Timestamp``) and ``Message``
(WhatsApp's ``waE2E.Message``: one of ``conversation``, ``extendedTextMessage``,
``imageMessage`` ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.transport.base import LID_SERVERS, IncomingMessage

# The content fields of waE2E.Message we name, by the kind the API reports.
MEDIA_KINDS = {
    "imageMessage": "image", "videoMessage": "video", "ptvMessage": "video",
    "audioMessage": "audio", "documentMessage": "document", "stickerMessage": "sticker",
    "locationMessage": "location", "liveLocationMessage": "location",
    "contactMessage": "contact", "contactsArrayMessage": "contact",
    "reactionMessage": "reaction", "pollCreationMessage": "poll",
    "pollCreationMessageV3": "poll",
}
# Small, non-personal metadata worth passing on, per content field (field -> key).
# The kinds whose file the transport downloads with the message (reactions, locations
# and contacts have none; a video note (ptv) is a video).
DOWNLOADABLE_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})
_META_FIELDS = ("mimetype", "fileLength", "seconds", "fileName", "degreesLatitude",
                "degreesLongitude")
# Wrappers whose ``message`` field holds the real content.
_WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2",
             "viewOnceMessageV2Extension", "documentWithCaptionMessage")
# Carry nothing a person wrote: key distribution, protocol (revokes, edits' envelopes,
# history sync notices). Such an event is not a message to report.
_SILENT = ("senderKeyDistributionMessage", "protocolMessage", "messageContextInfo")
_MAX_META = 256  # characters of one metadata value
LATEST_SECONDS = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last moment ISO 8601 writes


def incoming_from_event(event: Any, phone_of: Callable[[Any], str]) -> IncomingMessage | None:
    """The message ``event`` carries, or None for one to ignore: sent by this account
    itself (from the phone or another linked device), a status broadcast, or one with
    no content a person wrote. ``phone_of(source)`` maps the sender to a number (the
    transport's LID store lookup)."""
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe or source.Chat.Server == "broadcast":
        return None
    content = _unwrapped(event.Message)
    kind, text, meta, quoted = _content(content)
    if kind is None:
        return None
    sender = source.Sender if source.Sender.User else source.Chat
    alt = source.SenderAlt if source.HasField("SenderAlt") else None
    lid = _jid(sender) if sender.Server in LID_SERVERS else (
        _jid(alt) if alt is not None and alt.Server in LID_SERVERS else "")
    return IncomingMessage(
        message_id=_str(info.ID), chat=_jid(source.Chat), sender_jid=_jid(sender),
        sender_phone=_str(phone_of(source)), sender_lid=lid, push_name=_str(info.Pushname),
        is_group=bool(source.IsGroup), kind=kind, text=text, quoted_id=quoted,
        at=_seconds(info.Timestamp), meta=meta)


def _unwrapped(message: Any) -> Any:
    """The content inside ephemeral / view-once / document-with-caption wrappers."""
    for _ in range(4):  # wrappers nest at most a couple deep; never loop forever
        wrapper = next((name for name in _WRAPPERS if message.HasField(name)), None)
        if wrapper is None:
            return message
        message = getattr(message, wrapper).message
    return message


def _content(message: Any) -> tuple[str | None, str, tuple[tuple[str, str], ...], str]:
    """(kind, text, meta, quoted message id); kind None: nothing a person wrote."""
    if message.conversation:
        return "text", _str(message.conversation), (), ""
    if message.HasField("extendedTextMessage"):
        ext = message.extendedTextMessage
        return "text", _str(ext.text), (), _quoted(ext)
    for name, kind in MEDIA_KINDS.items():
        if message.HasField(name):
            return kind, *_media(getattr(message, name), kind)
    fields = [field.name for field, _ in message.ListFields()]
    if not fields or all(name in _SILENT for name in fields):
        return None, "", (), ""
    return "other", "", (("type", fields[0][:_MAX_META]),), ""


def _media(part: Any, kind: str) -> tuple[str, tuple[tuple[str, str], ...], str]:
    """Caption (the text), metadata and quoted id of a non-text message. A reaction's
    text is its emoji and the message it reacts to is its "quoted" id."""
    if kind == "reaction":
        return _str(part.text), (), _str(part.key.ID)
    names = {field.name for field, _ in part.ListFields()}
    meta = tuple((name, _str(getattr(part, name))[:_MAX_META]) for name in _META_FIELDS
                 if name in names)
    caption = _str(part.caption) if "caption" in names else ""
    return caption, meta, _quoted(part)


def _quoted(part: Any) -> str:
    """The id of the message ``part`` replies to ("" when it is no reply)."""
    names = {field.name for field, _ in part.ListFields()}
    if "contextInfo" not in names:
        return ""
    return _str(part.contextInfo.stanzaID)


def _jid(jid: Any) -> str:
    """``user@server`` (the device and agent dropped: a person, not one of their phones)."""
    return f"{_str(jid.User)}@{_str(jid.Server)}" if jid.User else ""


def _str(value: Any) -> str:
    """``value`` as text that is valid UTF-8. The sender's client writes the message's
    protobuf and its push name: a proto2 ``string`` field is not checked for UTF-8 by
    Go's encoder or Python's decoder, and upb hands invalid bytes back as ``bytes``.
    Passed on as they are, they fail the store's hash and JSON, and the reply is lost;
    decoded with replacement characters, it is kept (its odd bytes shown as U+FFFD)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates too


def _seconds(timestamp: int) -> float:
    """Unix seconds; 0 means not given. neonize 0.5 sends seconds; milliseconds and
    nanoseconds (other encoders of the same event) are recognised by their size."""
    value = float(timestamp)
    if value > 1e17:
        value /= 1e9
    elif value > 1e11:
        value /= 1e3
    # The sender's client sets it: a time no calendar shows (past 9999-12-31, or before
    # 1970) is not given, rather than a row that breaks every page of the list holding it.
    return value if 0.0 < value <= LATEST_SECONDS else 0.0
