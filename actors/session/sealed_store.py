"""Sealed session stores: the storage key, the encrypted file format and crash-safe writes.

Stored WhatsApp credentials are the keys to a phone number, and ``data_dir`` is what
gets backed up, copied and restored. So the credential stores in ``data_dir/sessions``
are kept encrypted under a key that lives elsewhere (an environment variable or a key
file named in the config), and only the running session ever sees them in clear, in a
private working copy (``actors.session.working_copy``).

A sealed file is a small header followed by AES-256-GCM ciphertext::

    magic (8) | format version (1) | key fingerprint (8) | generation (8)
    | [epoch (8), format 3 only] | nonce (12) | ciphertext + tag

The associated data is the header and the store's identity (its session and file
name, ``StoreId``): a sealed store opens only as the store it was written as, so
copying session A's credentials over session B's (or one store file over another)
fails authentication. The generation grows by one at each checkpoint; checked
against a ledger outside data_dir (``actors.session.store_generations``) it stops an older
copy from being put back. The fingerprint (the first bytes of the key's SHA-256)
lets a wrong key be reported as "encrypted with key A, configured key is B" instead
of a bare authentication failure. Format 1 (no identity, no generation) is still
read, and rewritten as format 2 when its session next opens it.

Format 3 adds the lease epoch the store was written under (multi-host mode with
``cluster.database_url``; issue 22): a session process that lost its lease must never
replace a store its successor wrote under a higher epoch (``actors.leases.fencing``).
Single-host writes stay format 2, and a store without an epoch counts as epoch 0.

Pure functions and plain classes only (no actor, no Flask): the launcher's start-up
checks, the ``wagate keys`` commands and the session actors all build on them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core.child_env import helper_environment
from gateway.core.config import EncryptionConfig
from gateway.core.errors import WagateError
from gateway.core.files import stale_temp_files

MAGIC = b"WAGSEAL\x00"
FORMAT_VERSION = 2  # bound to its session and store, with a generation
EPOCH_VERSION = 3  # format 2 plus the lease epoch it was written under (with leases)
LEGACY_VERSION = 1  # the header alone as associated data: read, never written
CURRENT_VERSIONS = (FORMAT_VERSION, EPOCH_VERSION)  # never rewritten for their format
KEY_BYTES = 32
FINGERPRINT_BYTES = 8
GENERATION_BYTES = 8
EPOCH_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 1 + FINGERPRINT_BYTES + GENERATION_BYTES + NONCE_BYTES
LEGACY_HEADER_BYTES = len(MAGIC) + 1 + FINGERPRINT_BYTES + NONCE_BYTES
EPOCH_HEADER_BYTES = HEADER_BYTES + EPOCH_BYTES
_HEADER_BYTES = {LEGACY_VERSION: LEGACY_HEADER_BYTES, FORMAT_VERSION: HEADER_BYTES,
                 EPOCH_VERSION: EPOCH_HEADER_BYTES}
MAX_EPOCH = 2**63 - 1
MAX_GENERATION = 2**63 - 1

# The credential stores the engines keep in data_dir/sessions/<session>/, and how to
# take a consistent copy of each: "file" is read as it is (its writer replaces it
# atomically), "sqlite" is copied through SQLite's backup API (never a torn page).
STORE_FILES: dict[str, str] = {
    "simulator.json": "file",  # simulator engine: the linked device
    "neonize.db": "sqlite",  # real engine: whatsmeow's device store
    "neonize.paired": "file",  # real engine on Postgres: "a device linked" marker
    "media.key": "file",  # data_dir/media: the media store's private key (actors.media.store)
}
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
SQLITE_HEADER = b"SQLite format 3\x00"
# A snapshot that takes longer than this has hung (a lock never released).
SNAPSHOT_TIMEOUT_SECONDS = 30.0


class StoreKeyError(WagateError):
    """The storage key is missing, unreadable or malformed; the message says what to do."""


class StoreError(WagateError):
    """A sealed store cannot be read or written."""


class WrongKey(StoreError):
    """The store was sealed under another key than the one configured."""

    def __init__(self, what: str, sealed_with: str, configured: str) -> None:
        super().__init__(
            f"{what} is encrypted with key {sealed_with}, the configured key is {configured}")
        self.what = what
        self.sealed_with = sealed_with
        self.configured = configured


class CorruptStore(StoreError):
    """Not a sealed store, or one that was altered or damaged (authentication failed)."""


@dataclass(frozen=True, slots=True)
class StoreId:
    """Which store a sealed file is: authenticated with it, so it opens as no other."""

    session: str
    name: str

    def associated_data(self) -> bytes:
        # Session names and store names never hold NUL: the encoding is unambiguous.
        return b"wagate-store\x00" + self.session.encode() + b"\x00" + self.name.encode()


@dataclass(frozen=True, slots=True)
class StoreKey:
    """A 32-byte AES key and where it came from (never shown in a repr or a log)."""

    secret: bytes = field(repr=False)
    source: str

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.secret)

    def __repr__(self) -> str:
        return f"StoreKey(fingerprint={self.fingerprint}, source={self.source!r})"


# --------------------------------------------------------------------------- keys


def generate_key_text() -> str:
    """A new key as text: the url-safe base64 of 32 random bytes (44 characters)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def fingerprint_of(secret: bytes) -> str:
    return hashlib.sha256(secret).digest()[:FINGERPRINT_BYTES].hex()


def parse_key(text: str, source: str) -> StoreKey:
    """Parse a key's text (surrounding whitespace ignored); ``source`` names where it
    came from, so an error tells the operator which variable or file to fix."""
    cleaned = text.strip()
    problem = ""
    secret = b""
    if len(cleaned) != 44 or not cleaned.endswith("="):
        problem = f"got {len(cleaned)} characters"
    else:
        try:
            secret = base64.urlsafe_b64decode(cleaned.encode("ascii"))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            problem = "it is not url-safe base64"
        if not problem and (len(secret) != KEY_BYTES
                            or base64.urlsafe_b64encode(secret).decode() != cleaned):
            problem = "it is not url-safe base64 of 32 bytes"
    if problem:
        raise StoreKeyError(
            f"the storage key in {source} is malformed ({problem}): it must be the "
            "44-character url-safe base64 text of 32 random bytes, as printed by "
            "`wagate keys create`")
    return StoreKey(secret, source)


def load_key(enc: EncryptionConfig, data_dir: Path,
             environ: Mapping[str, str] | None = None) -> StoreKey | None:
    """The configured storage key: the environment variable ``encryption.key_env``
    first (an empty value counts as unset), then the file ``encryption.key_file``.
    None when neither is configured.

    A key file inside ``data_dir`` is refused: every backup or copy of the data would
    then carry the key that protects it.
    """
    env = os.environ if environ is None else environ
    if enc.key_env:
        text = env.get(enc.key_env, "")
        if text.strip():
            return parse_key(text, f"environment variable {enc.key_env}")
    if not enc.key_file:
        return None
    path = Path(enc.key_file).expanduser()
    if is_inside(path, data_dir):
        raise StoreKeyError(
            f"encryption.key_file {path} is inside data_dir ({data_dir}): a copy or "
            "backup of data_dir would carry the key with the data it protects; move the "
            "key file out of data_dir and point encryption.key_file at it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreKeyError(
            f"encryption.key_file {path} does not exist; create a key with "
            f"`wagate keys create --out {path}` (a new key cannot open stores sealed "
            "under a lost one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise StoreKeyError(f"cannot read encryption.key_file {path} ({reason}); check "
                            "its permissions for the user running wagate") from None
    return parse_key(text, f"encryption.key_file {path}")


def key_file_too_open(path: Path) -> bool:
    """Whether a key file can be read by the group or others (it should be 0600)."""
    try:
        return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)
    except OSError:
        return False


def is_inside(path: Path, directory: Path) -> bool:
    resolved, root = path.expanduser().resolve(), directory.expanduser().resolve()
    return resolved == root or root in resolved.parents


# --------------------------------------------------------------------------- format


def seal(key: StoreKey, plaintext: bytes, store: StoreId, generation: int = 1,
         epoch: int | None = None) -> bytes:
    """Encrypt ``plaintext`` as ``store`` at ``generation`` (0 to 2**63 - 1); with an
    ``epoch`` (a lease's, 0 to 2**63 - 1) in format 3, which records it, else format 2."""
    if not 0 <= generation <= MAX_GENERATION:
        raise ValueError(f"generation {generation} is out of range")
    if epoch is not None and not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch {epoch} is out of range")
    nonce = os.urandom(NONCE_BYTES)
    version = FORMAT_VERSION if epoch is None else EPOCH_VERSION
    header = (MAGIC + bytes([version]) + bytes.fromhex(key.fingerprint)
              + generation.to_bytes(GENERATION_BYTES, "big")
              + (b"" if epoch is None else epoch.to_bytes(EPOCH_BYTES, "big")) + nonce)
    return header + AESGCM(key.secret).encrypt(nonce, plaintext,
                                               header + store.associated_data())


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def sealed_fingerprint(blob: bytes) -> str | None:
    """The fingerprint of the key ``blob`` was sealed with (None: not a sealed store)."""
    if not is_sealed(blob) or len(blob) < HEADER_BYTES:
        return None
    start = len(MAGIC) + 1
    return blob[start:start + FINGERPRINT_BYTES].hex()


def sealed_version(blob: bytes) -> int | None:
    """The format of a sealed store (None: not one)."""
    return blob[len(MAGIC)] if is_sealed(blob) and len(blob) > len(MAGIC) else None


def sealed_generation(blob: bytes) -> int:
    """The generation in a sealed store's header; 0 for format 1, which has none."""
    if sealed_version(blob) not in CURRENT_VERSIONS or len(blob) < HEADER_BYTES:
        return 0
    start = len(MAGIC) + 1 + FINGERPRINT_BYTES
    return int.from_bytes(blob[start:start + GENERATION_BYTES], "big")


def sealed_epoch(blob: bytes) -> int:
    """The lease epoch in a sealed store's header; 0 for a store without one (formats
    1 and 2: written without leases, or by an older wagate). Read from the header
    without the key: authenticated only once the store is opened, which is enough to
    refuse a write (a forged higher epoch can only stop writers, never let one in)."""
    if sealed_version(blob) != EPOCH_VERSION or len(blob) < EPOCH_HEADER_BYTES:
        return 0
    start = HEADER_BYTES - NONCE_BYTES
    return int.from_bytes(blob[start:start + EPOCH_BYTES], "big")


def unseal(key: StoreKey, blob: bytes, what: str, store: StoreId) -> bytes:
    """Decrypt and authenticate ``blob`` as ``store``; ``what`` names it in errors."""
    if not is_sealed(blob):
        raise CorruptStore(f"{what} is not an encrypted wagate store")
    version = sealed_version(blob)
    if version is None or version not in _HEADER_BYTES:
        raise CorruptStore(f"{what} has encryption format {version}, this wagate reads "
                           f"formats {LEGACY_VERSION} to {EPOCH_VERSION}; upgrade wagate")
    header_bytes = _HEADER_BYTES[version]
    if len(blob) < header_bytes + TAG_BYTES:
        raise CorruptStore(f"{what} is truncated ({len(blob)} bytes); restore it from a "
                           "backup, or log the session out and link it again")
    sealed_with = sealed_fingerprint(blob)
    assert sealed_with is not None
    if sealed_with != key.fingerprint:
        raise WrongKey(what, sealed_with, key.fingerprint)
    header, nonce = blob[:header_bytes], blob[header_bytes - NONCE_BYTES:header_bytes]
    associated = header + store.associated_data() if version in CURRENT_VERSIONS else header
    try:
        return AESGCM(key.secret).decrypt(nonce, blob[header_bytes:], associated)
    except InvalidTag:
        raise CorruptStore(f"{what} was altered or is damaged, or is not the {store.name} "
                           f"store of session '{store.session}' but a copy of another "
                           "(authentication failed); restore it from a backup, or log the "
                           "session out and link it again") from None


# --------------------------------------------------------------------------- files


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Temp files of writes a crash interrupted (``write_atomic`` names them
    ``.<name>.<random>.tmp``); only safe while nothing writes there."""
    removed = []
    for name in STORE_FILES:
        for tmp in stale_temp_files(directory, name):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def remove_sqlite_companions(db_path: Path) -> None:
    for suffix in SQLITE_COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            (db_path.parent / (db_path.name + suffix)).unlink()


# A separate process takes SQLite snapshots: the real engine runs its own copy of
# SQLite inside the session process, and two SQLite libraries in one process share
# its POSIX locks, so one could reset the other's WAL index under it (SQLite's own
# "How To Corrupt An SQLite Database File", section 2.2, sqlite.org/howtocorrupt.html).
# Across processes the locks work as designed. Read-only, a
# fresh in-memory destination each time (so an unchanged store gives the same bytes).
_SNAPSHOT_SCRIPT = """
import sqlite3, sys, urllib.parse
uri = "file:" + urllib.parse.quote(sys.argv[1], safe="/") + "?mode=ro"
src = sqlite3.connect(uri, uri=True, timeout=10.0)
dst = sqlite3.connect(":memory:")
src.backup(dst)
src.close()
try:
    image = dst.serialize()
except sqlite3.OperationalError:  # an empty database has nothing to serialize
    image = b""
sys.stdout.buffer.write(image)
"""


def snapshot(path: Path, kind: str) -> bytes | None:
    """A consistent copy of one store file's content, or None when it does not exist."""
    if kind == "file":
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return b""  # created for the engine, never written
    # The helper needs no secret: not the storage key a session has in its environment.
    done = subprocess.run([sys.executable, "-I", "-c", _SNAPSHOT_SCRIPT, str(path)],
                          capture_output=True, timeout=SNAPSHOT_TIMEOUT_SECONDS,
                          stdin=subprocess.DEVNULL, check=False,
                          env=helper_environment(os.environ))
    if done.returncode != 0:
        if not path.exists():
            return None
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise StoreError(f"cannot take a snapshot of {path.name}: {last[0]}")
    if not _whole_database(done.stdout):  # sealing a torn copy would lose the store
        raise StoreError(f"the snapshot of {path.name} is not a whole SQLite database "
                         f"({len(done.stdout)} bytes)")
    return done.stdout


def _whole_database(image: bytes) -> bool:
    """A database image: SQLite's header and a whole number of pages."""
    if not image.startswith(SQLITE_HEADER) or len(image) < 100:
        return False
    page_size = int.from_bytes(image[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    return page_size >= 512 and len(image) % page_size == 0
