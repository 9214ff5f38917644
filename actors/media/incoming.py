"""A received file into the media store: what kind the API reports it as.

WhatsApp names an incoming file by its message type (image, audio, ...); a voice note
is an audio message flagged as push-to-talk, which the simulator does not model, so
the kind is read from the bytes where the type alone does not say (Ogg/Opus audio is
a voice note). Pure: files and libmagic only.
"""

from __future__ import annotations

from pathlib import Path

from actors.media import kinds, store
from actors.messages import MediaSpec
from gateway.core.errors import GatewayError

# The incoming table's kinds (actors.transport.incoming_map) as media kinds.
BY_INCOMING_KIND = {"image": kinds.Kind.IMAGE, "video": kinds.Kind.VIDEO,
                    "audio": kinds.Kind.AUDIO, "voice": kinds.Kind.VOICE,
                    "document": kinds.Kind.DOCUMENT, "sticker": kinds.Kind.STICKER}


def kind_of(incoming_kind: str, mime: str, head: bytes) -> kinds.Kind:
    """The media kind of a received file: the engine's word, or else the bytes'."""
    if incoming_kind in BY_INCOMING_KIND and not (incoming_kind == "audio" and _voice(mime, head)):
        return BY_INCOMING_KIND[incoming_kind]
    if _voice(mime, head):
        return kinds.Kind.VOICE
    for kind in (kinds.Kind.STICKER, kinds.Kind.IMAGE, kinds.Kind.VIDEO, kinds.Kind.AUDIO):
        if mime in kinds.ALLOWED[kind]:
            return kind
    return kinds.Kind.DOCUMENT


def _voice(mime: str, head: bytes) -> bool:
    try:
        return kinds.check_type(kinds.Kind.VOICE, head) == mime
    except GatewayError:
        return False


# Why a received file is not in the store (``media_missing`` in the message's meta,
# ``mediaMissing`` in the API): WhatsApp hands it over once, so the message is stored
# without it rather than lost or held back behind a file that may never fit.
MISSING_DISK_FULL = "DISK_FULL"  # data_dir's file system had no room for it
MISSING_STORE_FAILED = "STORE_FAILED"  # any other failure to write it (see the log)


def kind_of_bytes(data: bytes, incoming_kind: str) -> str:
    """The kind of a received file that could not be stored, read from the bytes in
    memory (what ``store_incoming`` would have said), lower case like a message kind."""
    head = data[:8192]
    return kind_of(incoming_kind, kinds.sniff(head), head).value.lower()


def store_incoming(root: Path, host: str, data: bytes, incoming_kind: str, file_name: str
                   ) -> MediaSpec:
    """Store ``data`` (encrypted, once per content) in the media store at ``root``
    (``Config.media_path``; ``host``: ``Config.host_label``) and describe it."""
    stored = store.store_bytes(root, data, host)
    mime = kinds.sniff(stored.head)
    return MediaSpec(kind=kind_of(incoming_kind, mime, stored.head).value, mime=mime,
                     size=stored.size, sha256=stored.sha256,
                     disk_bytes=store.sealed_size(stored.size),
                     file_name=file_name.replace("\\", "/").rsplit("/", 1)[-1][:255])
