"""The encrypted session stores as a whole: the start-up check and key rotation.

``wagate serve`` calls ``check_stores`` before any actor starts, so a wrong or
missing key stops the gateway with a message that says what to do, instead of a
session that silently pairs anew over credentials it cannot read. ``rotate_keys``
(``wagate keys rotate``) re-encrypts every store under a new key, one atomic file
replacement at a time: a crash half-way leaves each store readable by the old or the
new key, and running it again finishes the job.

The stores are the files named in ``actors.session.sealed_store.STORE_FILES`` under
``data_dir/sessions/<session>/``; everything else in ``data_dir`` is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from actors.media.store import MEDIA_KEY_STORE
from actors.session.sealed_store import (
    CURRENT_VERSIONS,
    EPOCH_VERSION,
    HEADER_BYTES,
    STORE_FILES,
    StoreError,
    StoreId,
    StoreKey,
    StoreKeyError,
    WrongKey,
    is_inside,
    is_sealed,
    key_file_too_open,
    load_key,
    remove_sqlite_companions,
    remove_stale_temp_files,
    seal,
    sealed_epoch,
    sealed_fingerprint,
    sealed_generation,
    sealed_version,
    snapshot,
    unseal,
)
from actors.session.store_generations import GenerationLedger, open_ledger
from actors.session.working_copy import clear_stale, gateway_tag, seal_orphans, work_root
from gateway.core.config import Config, lease_mode
from gateway.core.errors import WagateError
from gateway.core.files import write_atomic
from gateway.core.mounts import mount_of_path, network_problem, read_mounts

log = structlog.get_logger("wagate.stores")


class StoreCheckError(WagateError):
    """The stores cannot be used as configured; the message says what to do."""


@dataclass(frozen=True, slots=True)
class StoreFile:
    """One credential store on disk."""

    session: str
    name: str
    path: Path

    @property
    def kind(self) -> str:
        return STORE_FILES[self.name]

    @property
    def label(self) -> str:
        if self.session == MEDIA_KEY_STORE.session:
            return f"the media store ({self.name})"
        return f"session '{self.session}' ({self.name})"

    @property
    def id(self) -> StoreId:
        """What the store is sealed as: its session and file name."""
        return StoreId(self.session, self.name)

    def header(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read(HEADER_BYTES)


def find_stores(data_dir: Path, sessions_dir: Path | None = None,
                media_dir: Path | None = None) -> list[StoreFile]:
    """Every credential store in ``data_dir/sessions`` (or ``sessions_dir``), by
    session and file name, then the media store's private key (``data_dir/media``, or
    ``media_dir``):
    sealed like a session store, so checked and rotated with them."""
    root = data_dir / "sessions" if sessions_dir is None else sessions_dir
    found = []
    directories = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                         ) if root.is_dir() else []
    for directory in directories:
        for name in STORE_FILES:
            path = directory / name
            if path.is_file():
                found.append(StoreFile(directory.name, name, path))
    media_key = (data_dir / "media" if media_dir is None else media_dir) / MEDIA_KEY_STORE.name
    if media_key.is_file():
        found.append(StoreFile(MEDIA_KEY_STORE.session, MEDIA_KEY_STORE.name, media_key))
    return found


def _remove_interrupted_writes(data_dir: Path, sessions_dir: Path | None = None) -> None:
    root = data_dir / "sessions" if sessions_dir is None else sessions_dir
    for directory in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
        remove_stale_temp_files(directory)


def seal_plaintext(store: StoreFile, key: StoreKey,
                   ledger: GenerationLedger | None = None) -> None:
    """Encrypt a store an older wagate (or ``--demo``) left in clear text, in place."""
    plain = snapshot(store.path, store.kind) or b""
    reseal(store, key, plain, 0, ledger)
    if store.kind == "sqlite":
        remove_sqlite_companions(store.path)  # their content is in the snapshot


def _epoch_of(blob: bytes) -> int | None:
    """The lease epoch to keep when re-encrypting ``blob`` (None: it has none, and a
    rotation must not give it one)."""
    return sealed_epoch(blob) if sealed_version(blob) == EPOCH_VERSION else None


def reseal(store: StoreFile, key: StoreKey, plain: bytes, generation: int,
           ledger: GenerationLedger | None) -> None:
    """Write ``plain`` as the next generation of ``store`` (bound to it), then record
    that generation: a crash between leaves a store newer than its record."""
    floor = ledger.floor(store.session, store.name) if ledger is not None else 0
    generation = max(generation, floor) + 1
    write_atomic(store.path, seal(key, plain, store.id, generation))
    if ledger is not None:
        ledger.record(store.session, store.name, generation)


def _ledger(config: Config, verify: bool = False) -> GenerationLedger | None:
    try:
        ledger = open_ledger(config.encryption.generations_file, config.data_path)
        if ledger is not None and verify:
            ledger.verify()
    except StoreError as exc:
        raise StoreCheckError(str(exc)) from None
    return ledger


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def stores_lock(data_dir: Path, exclusive: bool) -> Iterator[int]:
    """Keep ``wagate serve`` (shared) and ``wagate keys rotate`` (exclusive) apart.

    The gateway's actor processes inherit the launcher's descriptor, so the shared
    lock lasts until the last of them is gone, even if the launcher was killed.
    """
    fd = acquire_stores_lock(data_dir, exclusive)
    try:
        yield fd
    finally:
        os.close(fd)


def acquire_stores_lock(data_dir: Path, exclusive: bool) -> int:
    run = data_dir / "run"
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(run / "stores.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        if exclusive:
            raise StoreCheckError(
                f"a gateway (or processes a crashed one left behind) still uses {data_dir}; "
                "stop it first (`wagate serve` sweeps leftovers when it starts: start it "
                "and stop it again)") from None
        raise StoreCheckError(f"a `wagate keys rotate` is running on {data_dir}; wait for "
                              "it to finish, then start the gateway") from None
    return fd


# --------------------------------------------------------------------------- start-up


def clear_stores_problem(sessions: Path, mountinfo: str | None = None) -> str | None:
    """Without a key the engine works on its SQLite stores in ``sessions_dir`` itself
    (no sealed files, no local working copy): a network directory is then as unsafe as
    a data_dir on one (``gateway.core.mounts``). ``mountinfo``: the text instead of
    this process's."""
    mounts = read_mounts(mountinfo)
    mount = mount_of_path(sessions, mounts) if mounts else None
    return None if mount is None else network_problem(
        "storage.sessions_dir", str(sessions), mount,
        advice="Without a storage key (--demo) the engine works on its stores there "
               "directly; configure a storage key (the stores there are then sealed "
               "files, and the engine works on a local copy) or put sessions_dir on a "
               "local file system")


def check_stores(config: Config) -> StoreKey | None:
    """The start-up check of ``wagate serve`` (no actor runs yet). Returns the key,
    or None when the stores stay in clear text (no key, ``--demo`` only).

    Also: removes temp files of interrupted writes and working copies crashed
    processes left, and encrypts stores found in clear text (an upgrade needs no
    manual step).
    """
    data = config.data_path
    enc = config.encryption
    try:
        key = load_key(enc, data)
    except StoreKeyError as exc:
        raise StoreCheckError(str(exc)) from None
    _remove_interrupted_writes(data, config.sessions_path)
    stores = find_stores(data, config.sessions_path, config.media_path)
    sealed = [s for s in stores if is_sealed(s.header())]
    if key is None:
        if sealed:
            first = sealed[0]
            raise StoreCheckError(
                f"the stored credentials are encrypted ({len(sealed)} store(s); the one of "
                f"{first.label} with key {sealed_fingerprint(first.header())}) but no "
                "storage key is configured: put the key they were encrypted with in the "
                f"environment variable {enc.key_env or '(encryption.key_env)'} or in a file "
                "named by encryption.key_file")
        if config.auth.required:
            raise StoreCheckError(
                "no storage key is configured: stored WhatsApp credentials are encrypted at "
                "rest (only `wagate serve --demo` runs without). Create a key with "
                "`wagate keys create --out PATH` (outside data_dir, readable only by the "
                "user running wagate), then name it in encryption.key_file, or put it in "
                f"the environment variable {enc.key_env}")
        problem = clear_stores_problem(config.sessions_path)
        if problem is not None:
            raise StoreCheckError(problem)
        log.warning("session stores are not encrypted: no storage key is configured "
                    "(allowed with --demo only; see `wagate keys create`)")
        _prepare_media(config, None)
        return None
    if enc.key_file and key.source.startswith("encryption.key_file") and key_file_too_open(
            Path(enc.key_file).expanduser()):
        log.warning("the storage key file can be read by other users; chmod 600 it",
                    key_file=enc.key_file)
    _check_work_root(config, key)
    ledger = _ledger(config, verify=True)
    problems, legacy = [], []
    for store in stores:
        try:
            blob = store.path.read_bytes()
            what = f"the credential store of {store.label}"
            if ledger is not None:  # a clear-text or format 1 copy of a recorded store too
                ledger.check(store.session, store.name, sealed_generation(blob), what)
            if store in sealed:
                plain = unseal(key, blob, what, store.id)
                if sealed_version(blob) not in CURRENT_VERSIONS:
                    legacy.append((store, plain))
        except StoreError as exc:
            problems.append(str(exc))
    if problems:
        raise StoreCheckError(
            "; ".join(problems) + f" (configured key from {key.source}). Configure the key "
            "these stores were encrypted with; if a `wagate keys rotate` was interrupted, "
            "run it again with the same new key")
    for store in stores:
        if store not in sealed:
            seal_plaintext(store, key, ledger)
            log.warning("encrypted a session store found in clear text (left by an older "
                        "wagate or a --demo run)", session=store.session, file=store.name)
    for store, plain in legacy:  # bound to their session from now on
        reseal(store, key, plain, 0, ledger)
        log.info("re-encrypted a session store in the current format", session=store.session,
                 file=store.name)
    if config.transport.engine == "neonize" and config.transport.session_store:
        log.warning("the real engine's device store is in Postgres (transport.session_store): "
                    "wagate cannot encrypt it; rely on the database's own encryption at rest")
    log.info("session stores are encrypted", key=key.fingerprint, stores=len(stores))
    _prepare_media(config, key)
    return key


def _prepare_media(config: Config, key: StoreKey | None) -> None:
    """The media store's key pair (made at the first start), and no upload left half
    written by a crash: nothing uploads yet on this host, so every temp file of this
    host is an orphan (another host sharing ``storage.media_dir`` keeps its own)."""
    from actors.media.store import ensure_key_pair, sweep_temp

    root = config.media_path
    ensure_key_pair(root, key)
    removed = sweep_temp(root, config.host_label)
    if removed:
        log.warning("removed uploads a crash interrupted before they were accepted",
                    count=removed)


def _check_work_root(config: Config, key: StoreKey) -> None:
    """The decrypted working copies must not land in data_dir, and must be possible.
    Copies crashed session processes left are sealed (when newer than their sealed
    stores, ``seal_orphans``), then removed."""
    data = config.data_path
    root = work_root(config.encryption)
    if is_inside(root, data):
        raise StoreCheckError(
            f"encryption.work_dir ({root}) is inside data_dir ({data}): decrypted "
            "credentials would be written next to the encrypted ones; use a directory "
            "outside data_dir, or \"\" for /dev/shm")
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreCheckError(f"encryption.work_dir {root} cannot be created ({exc.strerror})"
                              ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise StoreCheckError(f"encryption.work_dir {root} is not writable by this user; "
                              "choose another directory")
    # With leases, under each orphan's own epoch and never over a later one's store.
    recovered = seal_orphans(root, gateway_tag(data), data, key, config.encryption,
                             config.sessions_path, leases=lease_mode(config))
    if recovered:
        log.warning("sealed the newer state that crashed session processes left in their "
                    "working copies", stores=recovered)
    cleared = clear_stale(root, gateway_tag(data))
    if cleared:
        log.warning("removed decrypted working copies left by crashed session processes",
                    count=len(cleared))


# --------------------------------------------------------------------------- rotation


@dataclass
class RotationReport:
    rotated: list[str] = field(default_factory=list)  # re-encrypted under the new key
    already: list[str] = field(default_factory=list)  # were under the new key already
    sealed: list[str] = field(default_factory=list)  # were in clear text, now encrypted
    failed: list[str] = field(default_factory=list)  # label: why

    @property
    def total(self) -> int:
        return len(self.rotated) + len(self.already) + len(self.sealed) + len(self.failed)


def rotate_keys(config: Config, new_key: StoreKey, progress: Callable[[str], None]
                ) -> RotationReport:
    """Re-encrypt every store under ``new_key``; ``progress`` gets one line per store.

    Refused while a gateway uses ``data_dir``. Every store is checked first (each
    must open with the configured key or the new one), so a problem changes nothing.
    """
    data = config.data_path
    with stores_lock(data, exclusive=True):
        _refuse_while_running(data)
        try:
            old_key = load_key(config.encryption, data)
        except StoreKeyError as exc:
            raise StoreCheckError(f"the current key: {exc}") from None
        if old_key is not None and old_key.fingerprint == new_key.fingerprint:
            raise StoreCheckError(
                f"the new key ({new_key.source}) is the key already configured; create "
                "another with `wagate keys create --out PATH`")
        _remove_interrupted_writes(data, config.sessions_path)
        stores = find_stores(data, config.sessions_path, config.media_path)
        plan = _plan(stores, old_key, new_key)
        ledger = _ledger(config)
        report = RotationReport()
        for index, (store, action) in enumerate(plan, 1):
            prefix = f"[{index}/{len(plan)}] {store.label}"
            try:
                if action == "already":
                    report.already.append(store.label)
                    progress(f"{prefix}: already under the new key")
                elif action == "plain":
                    seal_plaintext(store, new_key, ledger)
                    report.sealed.append(store.label)
                    progress(f"{prefix}: was in clear text, now encrypted")
                else:
                    blob = store.path.read_bytes()  # old key, or new key in format 1
                    opener = (new_key if sealed_fingerprint(blob) == new_key.fingerprint
                              else old_key)
                    assert opener is not None
                    plain = unseal(opener, blob, store.label, store.id)
                    if sealed_version(blob) in CURRENT_VERSIONS:  # the same generation
                        write_atomic(store.path, seal(new_key, plain, store.id,
                                                      sealed_generation(blob),
                                                      _epoch_of(blob)))
                    else:
                        reseal(store, new_key, plain, 0, ledger)
                    report.rotated.append(store.label)
                    progress(f"{prefix}: re-encrypted")
            except (OSError, StoreError) as exc:
                report.failed.append(f"{store.label}: {exc}")
                progress(f"{prefix}: FAILED ({exc})")
        return report


def _plan(stores: list[StoreFile], old_key: StoreKey | None, new_key: StoreKey
          ) -> list[tuple[StoreFile, str]]:
    """What to do with each store; raises (changing nothing) if one cannot be opened."""
    plan, problems = [], []
    for store in stores:
        blob = store.path.read_bytes()
        if not is_sealed(blob):
            plan.append((store, "plain"))
            continue
        fingerprint = sealed_fingerprint(blob)
        key = new_key if fingerprint == new_key.fingerprint else old_key
        if key is None or fingerprint != key.fingerprint:
            known = f"configured key {old_key.fingerprint}, " if old_key else "no key configured, "
            problems.append(f"{store.label} is encrypted with key {fingerprint} ({known}new "
                            f"key {new_key.fingerprint})")
            continue
        try:
            unseal(key, blob, store.label, store.id)
        except StoreError as exc:
            problems.append(str(exc))
            continue
        already = key is new_key and sealed_version(blob) in CURRENT_VERSIONS
        plan.append((store, "already" if already else "rotate"))
    if problems:
        raise StoreCheckError("nothing was changed: " + "; ".join(problems)
                              + ". Configure the key these stores are encrypted with "
                              "(encryption.key_file or the key variable) and run it again")
    return plan


def _refuse_while_running(data: Path) -> None:
    """The launcher's state file names a live gateway (or its leftover processes)."""
    from gateway.cli.run_state import running_gateway

    running = running_gateway(data)
    if running is not None:
        raise StoreCheckError(f"{running} uses {data}; stop it first, then rotate the key")


# --------------------------------------------------------------------------- check


def verify_stores(config: Config) -> tuple[StoreKey | None, list[tuple[StoreFile, str]]]:
    """``wagate keys check``: each store and whether it opens with the configured key
    ("ok", "clear text", or the problem)."""
    data = config.data_path
    try:
        key = load_key(config.encryption, data)
    except StoreKeyError as exc:
        raise StoreCheckError(str(exc)) from None
    ledger = _ledger(config)
    results = []
    for store in find_stores(data, config.sessions_path, config.media_path):
        blob = store.path.read_bytes()
        try:
            if ledger is not None:
                ledger.check(store.session, store.name, sealed_generation(blob), "the store")
        except StoreError as exc:
            results.append((store, str(exc)))
            continue
        if not is_sealed(blob):
            results.append((store, "clear text (encrypted at the next start with a key)"))
        elif key is None:
            results.append((store, f"encrypted with key {sealed_fingerprint(blob)}, but no "
                                   "key is configured"))
        else:
            try:
                unseal(key, blob, "the store", store.id)
                results.append((store, "ok"))
            except WrongKey as exc:
                results.append((store, f"encrypted with key {exc.sealed_with}, the configured "
                                       f"key is {exc.configured}"))
            except StoreError as exc:
                results.append((store, str(exc)))
    return key, results
