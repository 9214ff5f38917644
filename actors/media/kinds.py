"""What a media file may be: its kind, its MIME type sniffed from its bytes, its size.

WhatsApp shows a file by the kind the sender declares (an IMAGE is drawn, a VOICE
note is played with a waveform), so a file that does not fit its kind is refused
before it is accepted: a PDF sent as an IMAGE would be accepted here and fail at
WhatsApp, after the caller was told "accepted". The type comes from the bytes
(libmagic), never from the file name or a client's Content-Type, which any caller
can set to anything.

Pure: no actor, no Flask; raises ``GatewayError("INVALID_MEDIA", ...)`` whose
``extensions`` carry ``reason`` (``TYPE_MISMATCH``, ``TOO_LARGE``, ``UNREADABLE``,
``FETCH_FAILED``) and, where there is one, the ``limit``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.core.config import MediaConfig
from gateway.core.errors import GatewayError

MAX_CAPTION_CHARS = 1024  # WhatsApp's caption limit (Cloud API: "Maximum 1024 characters")
SNIFF_BYTES = 8192  # libmagic needs the head of a file, not all of it
MB = 1024 * 1024


class Kind(enum.StrEnum):
    IMAGE = "IMAGE"
    VIDEO = "VIDEO"
    AUDIO = "AUDIO"
    VOICE = "VOICE"
    DOCUMENT = "DOCUMENT"
    STICKER = "STICKER"


# The MIME types WhatsApp documents per kind (Cloud API, "Supported media types"), as
# libmagic names them. DOCUMENT takes any type (WhatsApp: "any valid MIME type").
ALLOWED: Mapping[Kind, frozenset[str]] = MappingProxyType({
    Kind.IMAGE: frozenset({"image/jpeg", "image/png"}),
    Kind.VIDEO: frozenset({"video/mp4", "video/3gpp"}),
    Kind.AUDIO: frozenset({"audio/aac", "audio/x-hx-aac-adts", "audio/mp4", "audio/x-m4a",
                           "audio/mpeg", "audio/amr", "audio/ogg"}),
    Kind.VOICE: frozenset({"audio/ogg"}),  # and Opus inside: see _is_opus
    Kind.STICKER: frozenset({"image/webp"}),
})
EMPTY_MIME = "application/x-empty"


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """Largest accepted size in bytes per kind (``media.max_<kind>_mb``)."""

    max_bytes: Mapping[Kind, int]

    @classmethod
    def from_config(cls, media: MediaConfig) -> MediaLimits:
        by_kind = {kind: int(getattr(media, f"max_{kind.value.lower()}_mb") * MB)
                   for kind in Kind}
        return cls(MappingProxyType(by_kind))

    @property
    def largest(self) -> int:
        """The most any upload may hold, whatever its kind (the streaming cap)."""
        return max(self.max_bytes.values())


def parse_kind(text: str) -> Kind:
    """``text`` as a kind; anything else is refused naming the choices."""
    try:
        return Kind(text)
    except ValueError:
        raise refused("TYPE_MISMATCH", f"kind {text!r} is not one of "
                      f"{', '.join(k.value for k in Kind)}") from None


def refused(reason: str, message: str, **extensions: object) -> GatewayError:
    """An ``INVALID_MEDIA`` refusal with its ``reason``."""
    return GatewayError("INVALID_MEDIA", message, reason=reason, **extensions)


def check_size(kind: Kind, size: int, limits: MediaLimits) -> None:
    """Refuse an empty file, or one over its kind's limit (``limit`` in bytes)."""
    limit = limits.max_bytes[kind]
    if size <= 0:
        raise refused("UNREADABLE", "the file is empty; send a file with content")
    if size > limit:
        raise refused("TOO_LARGE", f"a {kind.value} may be at most {limit} bytes "
                      f"({limit / MB:g} MB, media.max_{kind.value.lower()}_mb); this one has "
                      f"more: send a smaller file or a DOCUMENT", limit=limit)


def sniff(head: bytes) -> str:
    """The MIME type libmagic reads in the first bytes of a file."""
    import magic  # libmagic: loaded on first use, so importing this module needs no library

    try:
        return str(magic.from_buffer(head[:SNIFF_BYTES], mime=True))
    except Exception as exc:  # libmagic reports a bad file by a bare exception
        raise refused("UNREADABLE", f"the file's type cannot be read ({exc})") from None


def check_type(kind: Kind, head: bytes) -> str:
    """The file's MIME type if it fits ``kind``, else ``TYPE_MISMATCH`` naming both."""
    mime = sniff(head)
    if mime == EMPTY_MIME:
        raise refused("UNREADABLE", "the file is empty; send a file with content")
    allowed = ALLOWED.get(kind)
    if allowed is None:  # DOCUMENT: any type
        return mime
    if mime not in allowed or (kind is Kind.VOICE and not _is_opus(head)):
        wanted = "Ogg/Opus audio" if kind is Kind.VOICE else ", ".join(sorted(allowed))
        raise refused("TYPE_MISMATCH", f"a {kind.value} must be {wanted}; this file is "
                      f"{mime}: choose the kind that fits the file (any file may be a "
                      "DOCUMENT)", mime=mime)
    return mime


def _is_opus(head: bytes) -> bool:
    """An Ogg stream whose first packet is an Opus header (RFC 7845: "OpusHead" is the
    first packet, on the first page): what WhatsApp plays as a voice note."""
    if not head.startswith(b"OggS") or len(head) < 27:
        return False
    segments = head[26]
    start = 27 + segments
    return head[start:start + 8] == b"OpusHead"


def check_media(kind: Kind, head: bytes, size: int, limits: MediaLimits) -> str:
    """Size first (cheap, and a huge file is refused by its size whatever its type),
    then type; returns the MIME type to store with the file."""
    check_size(kind, size, limits)
    return check_type(kind, head)


def check_caption(caption: str | None, kind: Kind) -> str | None:
    """A caption of at most 1024 characters, without NUL; stickers and voice notes have
    none in WhatsApp, so one given with them is refused rather than silently dropped."""
    if caption is None or caption == "":
        return None
    if len(caption) > MAX_CAPTION_CHARS:
        raise GatewayError("INVALID_MESSAGE", f"caption must be at most {MAX_CAPTION_CHARS} "
                           f"characters (got {len(caption)})", field="caption")
    if "\x00" in caption:
        raise GatewayError("INVALID_MESSAGE", "caption must not contain a NUL character",
                           field="caption")
    if kind in (Kind.STICKER, Kind.VOICE, Kind.AUDIO):
        raise GatewayError("INVALID_MESSAGE", f"a {kind.value} has no caption in WhatsApp; "
                           "leave caption out", field="caption")
    return caption


def check_file_name(name: str | None) -> str | None:
    """A display name for a DOCUMENT: the last path part only, at most 255 characters,
    printable (it becomes a Content-Disposition header and a name on a phone)."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not base or len(base) > 255 or not base.isprintable() or base in (".", ".."):
        raise GatewayError("INVALID_MESSAGE", "fileName must be 1 to 255 printable "
                           "characters without a path", field="fileName")
    return base
