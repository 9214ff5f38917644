"""A session's private, decrypted working copy of its sealed credential stores.

The engines read and write their stores all the time (whatsmeow updates keys and
sessions in its SQLite file while connected), so they cannot work on the sealed
files themselves. Each session process decrypts its stores into a directory of its
own (mode 0700, under ``encryption.work_dir``: /dev/shm when present, so the clear
text stays in memory) and the engine works there. ``checkpoint`` mirrors the working
copy back into ``data_dir/sessions/<session>/``: a consistent snapshot, encrypted
(bound to its session and store, one generation newer), atomically replacing the
sealed file, and skipped when nothing changed. A store the engine deleted (a logout)
is deleted from ``data_dir`` too. With ``encryption.generations_file`` every store
written or deleted is recorded there, and an older copy is refused on open
(``actors.session.store_generations``).

A crashed session process cannot remove its working copy; the next start of the same
session (or of the gateway) first seals what it holds, then removes it. The engine
goes on changing its store between checkpoints (whatsmeow moves Signal sessions and
prekeys forward with every message), and its SQLite file in WAL mode is consistent
after any crash, so the orphaned copy is the newest state there is: resuming from the
last checkpoint instead would move those keys back in time, and recipients would get
messages they cannot decrypt until the retries run. An orphan is sealed only if it is
still the last writer of its store (``.base`` in the working directory records the
generation and digest each store had at the copy's last checkpoint; a sealed store
that moved on since, written by a later process or another host, is never overwritten).
Every working directory holds an exclusive ``flock`` on its ``.lock`` file while its
process lives, so only copies whose owner is gone are ever touched, whatever happened
to process ids in between.

With leases (multi-host mode, ``cluster.database_url``) a ``fence`` tells each write
the lease epoch this process holds right now (None: it holds none); every write and
delete of a sealed store is refused (``FencedWrite``) unless the process holds its
lease and the store on disk carries no higher epoch (``actors.leases.fencing``), and
every store is written with the epoch (format 3). An orphan is sealed under the epoch
its own process last wrote with (kept in ``.base``), so it never replaces a store a
later lease wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.leases.fencing import Refusal, refusal
from actors.session.sealed_store import (
    CURRENT_VERSIONS,
    SQLITE_COMPANIONS,
    STORE_FILES,
    StoreError,
    StoreId,
    StoreKey,
    is_sealed,
    remove_sqlite_companions,
    remove_stale_temp_files,
    seal,
    sealed_epoch,
    sealed_generation,
    sealed_version,
    snapshot,
    unseal,
)
from actors.session.store_generations import GenerationLedger, open_ledger
from actors.transport.base import check_session_id, make_private_dir
from gateway.core.config import EncryptionConfig
from gateway.core.files import fsync_dir, write_atomic

LOCK_NAME = ".lock"
# {store: [generation, sha256 hex, lease epoch]} of the copy's last checkpoint (the
# epoch: 0 without leases, missing in a copy an older wagate left)
BASE_NAME = ".base"
STORE_SUBDIR = "store"

# With leases: the epoch this process may write under right now, None while it holds
# no lease (actors.session.actor builds it from its LeaseKeeper).
Fence = Callable[[], "int | None"]


class FencedWrite(StoreError):
    """A write (or delete) of a shared sealed store refused by the lease fence: the
    store stays as it is on disk; this process must stop writing and go."""

    def __init__(self, session: str, name: str, why: Refusal) -> None:
        super().__init__(f"the {name} store of session '{session}' was not written: "
                         f"{why.reason}")
        self.name = name
        self.refusal = why


def work_root(enc: EncryptionConfig) -> Path:
    """Where working copies go: ``encryption.work_dir``, else /dev/shm (memory, never
    written to a disk) when this system has it, else the system's temp directory."""
    if enc.work_dir:
        return Path(enc.work_dir).expanduser()
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def gateway_tag(data_dir: Path) -> str:
    """Tells apart the working copies of gateways with different data dirs (several
    gateways may share one machine and one work_dir)."""
    return hashlib.sha256(str(data_dir.expanduser().resolve()).encode()).hexdigest()[:12]


def _prefix(tag: str, session: str | None) -> str:
    # "." cannot occur in a session name, so "default" never matches "default-2".
    return f"wagate-{tag}." + (f"{session}." if session is not None else "")


def clear_stale(root: Path, tag: str, session: str | None = None) -> list[Path]:
    """Remove working copies (of ``session``, or of every session of the gateway
    ``tag``) whose owning process is gone. Returns what was removed."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    uid = os.getuid()
    for entry in root.glob(_prefix(tag, session) + "*"):
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            continue  # never follow a link or touch another user's files
        if _owner_alive(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def seal_orphans(root: Path, tag: str, data_dir: Path, key: StoreKey, enc: EncryptionConfig,
                 sessions_dir: Path | None = None, session: str | None = None,
                 leases: bool = False) -> list[str]:
    """Seal the stores of working copies (of ``session``, or of every session of the
    gateway ``tag``) whose owning process is gone, where they are newer than their
    sealed file and still its last writer. Returns ``session/store`` for each store
    sealed. The copies stay for ``clear_stale``; a store that cannot be read is left
    as it is sealed (logged by the caller through the return value's absence). With
    ``leases``, each is sealed under the epoch its process last wrote with, and never
    over a store a higher epoch wrote."""
    sealed: list[str] = []
    if not root.is_dir():
        return sealed
    uid = os.getuid()
    prefix = _prefix(tag, session)
    for entry in sorted(root.glob(prefix + "*")):
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or _owner_alive(entry):
            continue
        name = session if session is not None else entry.name[len(prefix):].rsplit(".", 1)[0]
        try:
            check_session_id(name)
        except ValueError:
            continue
        sealed += [f"{name}/{store}" for store in
                   _seal_orphan(entry, data_dir, name, key, enc, sessions_dir, leases)]
    return sealed


def _seal_orphan(directory: Path, data_dir: Path, session: str, key: StoreKey,
                 enc: EncryptionConfig, sessions_dir: Path | None, leases: bool) -> list[str]:
    """Seal each store of one orphaned working copy that changed since its last
    checkpoint, if that checkpoint is still the sealed generation."""
    base = _read_base(directory)
    sealed_dir = (data_dir / "sessions" if sessions_dir is None else sessions_dir) / session
    ledger = open_ledger(enc.generations_file, data_dir)
    written = []
    for name, kind in STORE_FILES.items():
        if name not in base:
            continue  # never checkpointed by this copy (or an older wagate): unknown
        generation, digest, epoch = base[name]
        try:
            with open(sealed_dir / name, "rb") as handle:
                current = sealed_generation(handle.read(64))
        except FileNotFoundError:
            continue  # deleted since (a logout, a forgotten session): stays deleted
        if current != generation:
            continue  # sealed again since this copy's last checkpoint: that one is newer
        try:
            plain = snapshot(directory / STORE_SUBDIR / name, kind)
        except (OSError, StoreError):
            continue
        if plain is None or hashlib.sha256(plain).hexdigest() == digest:
            continue
        make_private_dir(sealed_dir)
        try:
            _seal_next(sealed_dir, ledger, session, name, key, plain, current,
                       _fixed(epoch) if leases else None)
        except FencedWrite:
            continue  # a later lease wrote it meanwhile: that one is newer
        written.append(name)
    return written


def _fixed(epoch: int) -> Fence:
    """The fence of an orphan: the epoch its process last wrote under."""
    return lambda: epoch


def _read_base(directory: Path) -> dict[str, tuple[int, str, int]]:
    try:
        raw = json.loads((directory / BASE_NAME).read_text(encoding="utf-8"))
        return {str(k): (int(v[0]), str(v[1]), int(v[2]) if len(v) > 2 else 0)
                for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError):
        return {}


def stored_epoch(path: Path) -> int:
    """The lease epoch of the sealed store at ``path`` (0: none, or no such file)."""
    try:
        with open(path, "rb") as handle:
            return sealed_epoch(handle.read(64))
    except FileNotFoundError:
        return 0


def fenced_epoch(fence: Fence | None, sealed: Path, session: str) -> int | None:
    """The epoch to write ``sealed`` under (None: no leases); raises ``FencedWrite``
    when this process may not replace or delete it now. Asked just before the write,
    after any slow snapshot, so the deadline checked is the one at the rename."""
    if fence is None:
        return None
    writer = fence()
    why = refusal(writer, stored_epoch(sealed))
    if why is not None:
        raise FencedWrite(session, sealed.name, why)
    return writer


def _seal_next(sealed_dir: Path, ledger: GenerationLedger | None, session: str, name: str,
               key: StoreKey, plain: bytes, current: int, fence: Fence | None = None) -> int:
    """Seal ``plain`` as the next generation of store ``name``, then record it (in
    that order: a crash between leaves a store newer than its record, which opens).
    With a ``fence``, only while it allows, under its epoch."""
    floor = ledger.floor(session, name) if ledger is not None else 0
    generation = max(current, floor) + 1
    epoch = fenced_epoch(fence, sealed_dir / name, session)
    write_atomic(sealed_dir / name, seal(key, plain, StoreId(session, name), generation, epoch))
    if ledger is not None:
        ledger.record(session, name, generation)
    return generation


def _owner_alive(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock we may have taken
    return False


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a store file looked like at its last checkpoint."""

    signature: tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of it and companions
    digest: bytes  # SHA-256 of the snapshot that was sealed


class WorkingCopy:
    """One session's decrypted stores, for the life of one session process.

    Thread-safe: checkpoints run on a worker thread while the actor goes on.
    """

    def __init__(self, data_dir: Path, session: str, key: StoreKey, enc: EncryptionConfig,
                 sessions_dir: Path | None = None, fence: Fence | None = None) -> None:
        """``sessions_dir``: where the sealed stores live (``storage.sessions_dir``;
        None = ``data_dir/sessions``, shared by the hosts of a cluster). ``fence``: with
        leases, the epoch this process may write under now (module docstring)."""
        self.session = session
        self.key = key
        self.fence = fence
        self._epochs: dict[str, int] = {}  # store -> the epoch it was last written under
        sealed_root = data_dir / "sessions" if sessions_dir is None else sessions_dir
        self.sealed_dir = sealed_root / session
        self.ledger: GenerationLedger | None = open_ledger(enc.generations_file, data_dir)
        self._generations: dict[str, int] = {}  # store -> generation of its sealed file
        root = work_root(enc)
        tag = gateway_tag(data_dir)
        # What a crashed process of this session changed after its last checkpoint.
        self.recovered = seal_orphans(root, tag, data_dir, key, enc, sessions_dir, session,
                                      leases=fence is not None)
        self.cleared = clear_stale(root, tag, session)
        root.mkdir(parents=True, exist_ok=True)  # never chmod a shared root like /dev/shm
        self.path = Path(tempfile.mkdtemp(prefix=_prefix(tag, session), dir=root))
        self._lock_fd: int | None = os.open(self.path / LOCK_NAME,
                                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.store_dir = self.path / STORE_SUBDIR
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        try:
            make_private_dir(self.store_dir)
            self._restore()
        except BaseException:
            self.discard()
            raise

    # ------------------------------------------------------------------ lifecycle

    def _restore(self) -> None:
        """Decrypt every sealed store into the working directory, refusing one older
        than the ledger allows. A store still in clear text or in format 1 (left by
        an older wagate) is sealed anew, bound to this session, on the way."""
        for name, kind in STORE_FILES.items():
            sealed = self.sealed_dir / name
            try:
                blob = sealed.read_bytes()
            except FileNotFoundError:
                continue
            what = f"the {name} store of session '{self.session}'"
            store = StoreId(self.session, name)
            generation = sealed_generation(blob) if is_sealed(blob) else 0
            if self.ledger is not None:  # a clear or format 1 copy of a recorded store too
                self.ledger.check(self.session, name, generation, what)
            if is_sealed(blob):
                plain = unseal(self.key, blob, what, store)
                self._epochs[name] = sealed_epoch(blob)
                if sealed_version(blob) not in CURRENT_VERSIONS:
                    generation = self._migrate(name, plain, generation)
            else:
                plain = snapshot(sealed, kind) or b""
                generation = self._migrate(name, plain, generation)
                if kind == "sqlite":
                    remove_sqlite_companions(sealed)
            self._generations[name] = generation
            target = self.store_dir / name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(plain)
            self._seen[name] = _Seen(_signature(target, kind), hashlib.sha256(plain).digest())
        self._write_base()

    def checkpoint(self) -> list[str]:
        """Seal what changed since the last checkpoint; returns what was written
        (``name``) or deleted (``-name``). Safe to call at any time, from any thread."""
        with self._lock:
            changes = self._checkpoint()
            if changes:
                self._write_base()
            return changes

    def forget(self) -> None:
        """A logout: delete the stores, sealed and working, of this session (and
        record that no copy of them may come back)."""
        refused: FencedWrite | None = None
        with self._lock:
            for name, kind in STORE_FILES.items():
                directories = [self.store_dir]
                try:
                    fenced_epoch(self.fence, self.sealed_dir / name, self.session)
                    directories.append(self.sealed_dir)
                except FencedWrite as exc:  # a later owner's store: not ours to delete
                    refused = refused or exc
                for directory in directories:
                    with contextlib.suppress(FileNotFoundError):
                        (directory / name).unlink()
                    if kind == "sqlite":
                        remove_sqlite_companions(directory / name)
                if self.sealed_dir in directories:
                    self._bury(name)
            self._seen.clear()
            self._write_base()
            if self.sealed_dir.is_dir():
                fsync_dir(self.sealed_dir)
        if refused is not None:
            raise refused

    def close(self) -> None:
        """A last checkpoint, then remove the working copy."""
        try:
            self.checkpoint()
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the working copy without a checkpoint."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ helpers

    def _checkpoint(self) -> list[str]:
        changes: list[str] = []
        for name, kind in STORE_FILES.items():
            work, sealed = self.store_dir / name, self.sealed_dir / name
            signature = _signature(work, kind)
            seen = self._seen.get(name)
            if seen is not None and seen.signature == signature and sealed.exists():
                continue
            plain = snapshot(work, kind) if signature else None
            if plain is None:  # the engine deleted it (a logout)
                if sealed.exists():
                    fenced_epoch(self.fence, sealed, self.session)
                self._seen.pop(name, None)
                if sealed.exists():
                    sealed.unlink()
                    fsync_dir(self.sealed_dir)
                    changes.append(f"-{name}")
                    self._bury(name)
                continue
            digest = hashlib.sha256(plain).digest()
            if not (seen is not None and seen.digest == digest and sealed.exists()):
                make_private_dir(self.sealed_dir.parent)
                make_private_dir(self.sealed_dir)
                self._generations[name] = self._write_sealed(
                    name, plain, self._generations.get(name, 0))
                changes.append(name)
            self._seen[name] = _Seen(signature, digest)
        return changes

    def _write_sealed(self, name: str, plain: bytes, current: int) -> int:
        generation = _seal_next(self.sealed_dir, self.ledger, self.session, name, self.key,
                                plain, current, self.fence)
        if self.fence is not None:
            self._epochs[name] = stored_epoch(self.sealed_dir / name)
        return generation

    def _migrate(self, name: str, plain: bytes, current: int) -> int:
        """While the stores are opened (before any lease is granted): a store left in
        clear text or format 1 is sealed anew as it is, with no epoch. It carries none,
        so no lease ever wrote it; its content does not change, and with leases the
        process's first checkpoint seals it under its epoch."""
        return _seal_next(self.sealed_dir, self.ledger, self.session, name, self.key, plain,
                          current)

    def _write_base(self) -> None:
        """Record what each sealed store holds of this copy (``seal_orphans`` reads it
        if this process dies before its next checkpoint)."""
        base = {name: [self._generations[name], seen.digest.hex(), self._epochs.get(name, 0)]
                for name, seen in self._seen.items() if name in self._generations}
        write_atomic(self.path / BASE_NAME, json.dumps(base).encode())

    def _bury(self, name: str) -> None:
        """The sealed store ``name`` was deleted: no copy of it may come back."""
        generation = self._generations.pop(name, None)
        if self.ledger is not None and generation is not None:
            self.ledger.bury(self.session, name, generation)


def _signature(path: Path, kind: str) -> tuple[tuple[int, int, int], ...]:
    """A cheap "did it change" look at a store file (and, for SQLite, its journal
    files): empty when the file does not exist."""
    names = [path.name] + ([path.name + s for s in SQLITE_COMPANIONS if s != "-shm"]
                           if kind == "sqlite" else [])
    parts = []
    for name in names:
        try:
            info = os.stat(path.parent / name)
        except FileNotFoundError:
            if name == path.name:
                return ()
            continue
        parts.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(parts)


def has_sealed_stores(data_dir: Path, session: str, sessions_dir: Path | None = None) -> bool:
    """Whether ``data_dir/sessions/<session>`` (or ``sessions_dir/<session>``) holds any
    credential store."""
    directory = (data_dir / "sessions" if sessions_dir is None else sessions_dir) / session
    return any((directory / name).is_file() for name in STORE_FILES)


def remove_stores(data_dir: Path, session: str, sessions_dir: Path | None = None,
                  ledger: GenerationLedger | None = None) -> list[str]:
    """Delete every credential store of ``session`` (and the files SQLite and
    interrupted writes leave beside them), then its directory when that is empty: a
    forgotten session must leave nothing a later session of the same name would resume
    (with a ``ledger``, no copy of a deleted store may come back either). Returns the
    names of the stores deleted."""
    check_session_id(session)
    directory = (data_dir / "sessions" if sessions_dir is None else sessions_dir) / session
    if not directory.is_dir() or directory.is_symlink():
        return []
    removed = []
    remove_stale_temp_files(directory)
    for name, kind in STORE_FILES.items():
        with contextlib.suppress(FileNotFoundError):
            if ledger is not None:
                with open(directory / name, "rb") as handle:
                    ledger.bury(session, name, sealed_generation(handle.read(64)))
            (directory / name).unlink()
            removed.append(name)
        if kind == "sqlite":
            remove_sqlite_companions(directory / name)
    with contextlib.suppress(OSError):  # not empty: something that is not ours stays
        directory.rmdir()
    return removed


def sealed_store_names(data_dir: Path, session: str,
                       sessions_dir: Path | None = None) -> list[str]:
    """The stores of ``session`` that are sealed (checked by their header)."""
    names = []
    root = data_dir / "sessions" if sessions_dir is None else sessions_dir
    for name in STORE_FILES:
        try:
            with open(root / session / name, "rb") as handle:
                if is_sealed(handle.read(16)):
                    names.append(name)
        except FileNotFoundError:
            continue
    return names
