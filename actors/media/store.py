"""The media store: files in ``data_dir/media`` (or ``storage.media_dir``, which the
leaders of a cluster share), encrypted at rest, stored once per content.

Why this shape:

- **Chunked AEAD.** A file is AES-256-GCM in chunks of ``CHUNK_BYTES``, so neither
  writing (an upload streams in) nor reading (a range request for a video) ever holds
  a whole file in memory, and a range read decrypts only the chunks it needs. Each
  chunk's nonce is its index and its associated data says whether it is the last, so
  chunks cannot be reordered, dropped or cut off without failing authentication.
- **A random key per file, sealed to the media key pair.** The web workers receive
  uploads but never hold the storage key (``gateway.core.child_env``). So a file's key
  is sealed to a public key (X25519, HKDF-SHA256, AES-GCM): anyone can write a file,
  only the holder of the media private key can read one. The private key is a sealed
  store under the storage key, like the session credentials (``MEDIA_KEY_STORE``): key
  rotation and ``wagate keys check`` cover it, and rotation re-seals one small file
  instead of re-encrypting every file. To serve ``GET /media/<id>`` a worker asks the
  outbox for that one file's key (``file_key``), never the private key.
- **Content-addressed.** A file's name is the SHA-256 of its plaintext, so identical
  files are stored once; the SHA-256 is also in the message record, so the name says
  nothing the (unencrypted) record does not.
- **Durable before accepted.** ``finish`` fsyncs the file and then the directory after
  the rename; a crash before leaves only a temp file, swept at start
  (``sweep_temp``).

Pure: plain files and ``cryptography``; no actor, no Flask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from actors.session.sealed_store import StoreId, StoreKey, is_sealed, seal, unseal
from gateway.core.errors import WagateError
from gateway.core.files import publish_once, streaming_temp, write_atomic

MAGIC = b"WAGMEDIA"
VERSION = 1
CHUNK_BYTES = 64 * 1024
TAG_BYTES = 16
KEY_BYTES = 32
_HEAD = struct.Struct(">8sBIQ")  # magic, version, chunk size, plaintext size
HEADER_BYTES = _HEAD.size + 32 + KEY_BYTES + TAG_BYTES  # + ephemeral public key, sealed key
TEMP_DIR = "tmp"
SUFFIX = ".wgm"
PUBLIC_FILE = "media.pub"
PRIVATE_FILE = "media.key"
# The media private key as a sealed store: its "session" is a name no session can
# have (session names are letters, digits, _ and -), so it opens as nothing else.
MEDIA_KEY_STORE = StoreId("(media)", PRIVATE_FILE)
_WRAP_INFO = b"wagate-media-key-v1"


class MediaStoreError(WagateError):
    """A media file is missing, damaged, or sealed to another key pair."""

    code = "MEDIA_STORE"


def file_path(root: Path, sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise MediaStoreError(f"{sha256!r} is not a media id")
    return root / sha256[:2] / f"{sha256}{SUFFIX}"


# --------------------------------------------------------------------------- key pair


def ensure_key_pair(root: Path, key: StoreKey | None) -> None:
    """Create the media key pair if there is none (the launcher, before any process
    writes media). Without a storage key (``--demo`` only) the private key is kept in
    clear text, as the session stores are, and sealed at the next start with a key.

    Several leaders may share the directory (``storage.media_dir``) and start at once:
    the private key is published exclusively (a hard link, never over a file), so one
    host's key wins and every other host uses it; the public key is then derived from
    the private key on disk, so a host that lost the race, or one that crashed between
    the two writes, writes the same public key again."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = root / PRIVATE_FILE
    if not private_path.exists():
        private = X25519PrivateKey.generate()
        raw = private.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        with contextlib.suppress(FileExistsError):  # another host's key won
            write_atomic(private_path, raw if key is None else seal(key, raw, MEDIA_KEY_STORE),
                         exclusive=True)
    if not (root / PUBLIC_FILE).exists():
        write_atomic(root / PUBLIC_FILE, _public_bytes(_open_private(root, key).public_key()))


def _public_bytes(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public(root: Path) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes((root / PUBLIC_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise MediaStoreError(f"the media store's public key ({root / PUBLIC_FILE}) cannot "
                              f"be read ({exc}); restart the gateway to create it") from None


def load_private(root: Path, key: StoreKey | None) -> X25519PrivateKey:
    """The media private key, opened with the storage key (or in clear for the demo)."""
    private = _open_private(root, key)
    if (root / PUBLIC_FILE).exists() and load_public(root).public_bytes_raw() != \
            private.public_key().public_bytes_raw():
        raise MediaStoreError("the media store's public key does not belong to its private "
                              "key (media.pub was replaced); restore it from a backup")
    return private


def _open_private(root: Path, key: StoreKey | None) -> X25519PrivateKey:
    blob = (root / PRIVATE_FILE).read_bytes()
    if is_sealed(blob):
        if key is None:
            raise MediaStoreError("the media key is encrypted but no storage key is configured")
        blob = unseal(key, blob, "the media store's key", MEDIA_KEY_STORE)
    return X25519PrivateKey.from_private_bytes(blob)


def _wrap_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(SHA256(), KEY_BYTES, salt=None,
                info=_WRAP_INFO + ephemeral + recipient).derive(shared)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file in the store: its id (SHA-256 of the plaintext) and plaintext size."""

    sha256: str
    size: int
    head: bytes = field(repr=False)  # the first bytes, for sniffing the type


class MediaWriter:
    """Streams one file into the store: ``write`` any number of times, then ``finish``
    (durable, deduplicated) or ``abort``. Holds at most one chunk of plaintext."""

    def __init__(self, root: Path, public: X25519PublicKey, head_bytes: int = 8192,
                 host: str | None = None) -> None:
        temp = temp_dir(root, host)
        temp.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._out, self.path = streaming_temp(temp, ".upload.")
        self.root = root
        self._file_key = AESGCM.generate_key(256)
        self._aead = AESGCM(self._file_key)
        self._public = public
        self._pending = bytearray()
        self._index = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._head_bytes = head_bytes
        self._out.write(bytes(HEADER_BYTES))  # written for real by finish()

    @property
    def size(self) -> int:
        return self._size

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    def write(self, data: bytes) -> None:
        self._size += len(data)
        self._hash.update(data)
        if len(self._head) < self._head_bytes:
            self._head += data[:self._head_bytes - len(self._head)]
        self._pending += data
        while len(self._pending) > CHUNK_BYTES:  # keep one: the last chunk is marked
            self._seal_chunk(bytes(self._pending[:CHUNK_BYTES]), last=False)
            del self._pending[:CHUNK_BYTES]

    def _seal_chunk(self, plain: bytes, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._index), plain, _chunk_ad(last)))
        self._index += 1

    def finish(self) -> StoredFile:
        """Seal the last chunk and the header, fsync, and move the file to its name; a
        file already stored under that name is kept and this copy dropped."""
        try:
            self._seal_chunk(bytes(self._pending), last=True)
            self._pending.clear()
            self._out.seek(0)
            self._out.write(self._header())
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            sha = self._hash.hexdigest()
            target = file_path(self.root, sha)
            target.parent.mkdir(exist_ok=True, mode=0o700)
            publish_once(self.path, target)
            return StoredFile(sha, self._size, bytes(self._head))
        except BaseException:
            self.abort()
            raise

    def _header(self) -> bytes:
        head = _HEAD.pack(MAGIC, VERSION, CHUNK_BYTES, self._size)
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = _public_bytes(ephemeral.public_key())
        wrap = _wrap_key(ephemeral.exchange(self._public), ephemeral_public,
                         _public_bytes(self._public))
        # a wrap key is used once, so a fixed nonce is safe; the header is bound to it
        sealed = AESGCM(wrap).encrypt(bytes(12), self._file_key, head + ephemeral_public)
        return head + ephemeral_public + sealed

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._out.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> MediaWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abort()


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _chunk_ad(last: bool) -> bytes:
    return b"wagate-media-chunk" + (b"\x01" if last else b"\x00")


def store_bytes(root: Path, data: bytes, host: str | None = None) -> StoredFile:
    """A whole small file at once (tests, the simulator's incoming files)."""
    writer = MediaWriter(root, load_public(root), host=host)
    with writer:
        for start in range(0, len(data), CHUNK_BYTES):
            writer.write(data[start:start + CHUNK_BYTES])
        return writer.finish()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Header:
    size: int
    chunk: int
    ephemeral: bytes
    sealed_key: bytes
    raw_head: bytes


def read_header(path: Path) -> Header:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_BYTES)
    except FileNotFoundError:
        raise MediaStoreError(f"media file {path.name} is not in the store") from None
    if len(raw) < HEADER_BYTES:
        raise MediaStoreError(f"media file {path.name} is truncated")
    magic, version, chunk, size = _HEAD.unpack(raw[:_HEAD.size])
    if magic != MAGIC or version != VERSION or chunk <= 0:
        raise MediaStoreError(f"media file {path.name} is not a wagate media file")
    return Header(size, chunk, raw[_HEAD.size:_HEAD.size + 32], raw[_HEAD.size + 32:],
                  raw[:_HEAD.size])


def file_key(root: Path, sha256: str, private: X25519PrivateKey) -> bytes:
    """The key of one file (what a web worker gets to serve it, never the private key)."""
    header = read_header(file_path(root, sha256))
    recipient = _public_bytes(private.public_key())
    wrap = _wrap_key(private.exchange(X25519PublicKey.from_public_bytes(header.ephemeral)),
                     header.ephemeral, recipient)
    try:
        return AESGCM(wrap).decrypt(bytes(12), header.sealed_key,
                                    header.raw_head + header.ephemeral)
    except InvalidTag:
        raise MediaStoreError(f"media file {sha256} was altered, or sealed to another "
                              "media key (authentication failed)") from None


def file_size(root: Path, sha256: str) -> int:
    """The plaintext size, from the header (no key needed)."""
    return read_header(file_path(root, sha256)).size


def read_range(root: Path, sha256: str, key: bytes, start: int = 0,
               end: int | None = None) -> Iterator[bytes]:
    """The plaintext bytes ``start`` to ``end`` (exclusive; None = to the end), one
    decrypted chunk at a time; only the chunks that hold the range are read."""
    path = file_path(root, sha256)
    header = read_header(path)
    end = header.size if end is None else min(end, header.size)
    if start < 0 or start > end:
        raise MediaStoreError(f"range {start}-{end} is outside the file ({header.size} bytes)")
    if start == end:
        return
    aead = AESGCM(key)
    last_index = max(0, (header.size - 1) // header.chunk)
    sealed_chunk = header.chunk + TAG_BYTES
    with open(path, "rb") as handle:
        for index in range(start // header.chunk, (end - 1) // header.chunk + 1):
            handle.seek(HEADER_BYTES + index * sealed_chunk)
            blob = handle.read(sealed_chunk)
            try:
                plain = aead.decrypt(_nonce(index), blob, _chunk_ad(index == last_index))
            except InvalidTag:
                raise MediaStoreError(f"media file {sha256} is damaged or truncated at "
                                      f"chunk {index} (authentication failed)") from None
            offset = index * header.chunk
            yield plain[max(0, start - offset):end - offset]


def read_all(root: Path, sha256: str, key: bytes) -> bytes:
    return b"".join(read_range(root, sha256, key))


# --------------------------------------------------------------------------- housekeeping


def temp_dir(root: Path, host: str | None) -> Path:
    """Where one host's uploads stream before they are stored: ``tmp/<host>`` (its
    ``Config.host_label``), so a host sweeping its own interrupted uploads at start
    never touches an upload another host sharing ``storage.media_dir`` has under way.
    None: ``tmp`` itself (tests, and files from before there was a host part)."""
    return root / TEMP_DIR if host is None else root / TEMP_DIR / host


def sweep_temp(root: Path, host: str | None = None) -> int:
    """Remove uploads a crash or a refusal interrupted before they were stored; only
    safe while nothing uploads on this host (the launcher, before the web tier
    starts): only this host's temp directory is swept, and the files directly in
    ``tmp`` (left by a version without per-host temp directories)."""
    removed = 0
    directories = {root / TEMP_DIR, temp_dir(root, host)}
    for temp in sorted(directories):
        for path in temp.glob(".upload.*.tmp") if temp.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def delete(root: Path, sha256: str) -> int:
    """Remove a file; returns the bytes it took on disk (0 if it was not there)."""
    path = file_path(root, sha256)
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def stored_files(root: Path) -> Iterator[tuple[str, int]]:
    """Every stored file's id and its size on disk."""
    for path in root.glob(f"??/*{SUFFIX}") if root.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            yield path.name[:-len(SUFFIX)], path.stat().st_size


def disk_bytes(root: Path) -> int:
    """What the stored files take on disk (health, metrics, ``media.max_total_mb``)."""
    return sum(size for _, size in stored_files(root))


def sealed_size(size: int) -> int:
    """The size on disk of a file of ``size`` plaintext bytes."""
    chunks = max(1, -(-size // CHUNK_BYTES))
    return HEADER_BYTES + size + chunks * TAG_BYTES


def new_media_id() -> str:
    """The id of an incoming file's reference (not its content address)."""
    return secrets.token_hex(12)
