"""Online backup and restore of a data_dir: consistent copies while the gateway runs.

A running gateway writes its SQLite stores all the time (WAL mode), so copying their
files byte by byte can catch a page half-written or a WAL that does not match its
database. Each SQLite database is therefore copied with SQLite's online backup API
(``sqlite3.Connection.backup``): one read transaction gives a consistent snapshot,
WAL included, without blocking the writers. Databases are found by their header, not
by a list of names, so a store added later (or by another feature) is copied the
right way without anyone remembering to add it here.

Everything else is copied byte for byte and fsynced: sealed session stores (already
encrypted, copied as they are), the token file, secrets, media, logs and any file or
directory this module has never heard of. Append-only JSON-lines files (the audit
log) are copied up to their last complete line, so a line being appended at that
moment is not copied torn. What is left out is only what belongs to the running
process and would be wrong after a restore: ``run/`` (locks, the run record,
metrics) and the ``-wal``/``-shm``/``-journal`` files of databases copied whole.

The manifest (``manifest.json``) is written last: a backup without one is incomplete
and ``restore`` refuses it. It lists every file with its size and SHA-256, so a
restore checks every byte before it writes anything.

Pure file logic (no actors, no Flask): the CLI adds what needs the audit log's
verification (the chain's head hash) through ``extra``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.errors import WagateError
from gateway.core.files import fsync_dir, publish_directory, write_atomic

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SQLITE_HEADER = b"SQLite format 3\x00"
SIDECARS = ("-wal", "-shm", "-journal")
# Runtime state of the process that runs on the data_dir: never copied, never restored.
RUNTIME_DIRS = frozenset({"run"})
LINE_FILES = (".jsonl",)  # append-only: copied up to the last complete line
CHUNK = 1024 * 1024
SQLITE_BUSY_SECONDS = 30.0


class BackupError(WagateError, RuntimeError):
    """A backup or restore that cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a backup: its path relative to the backup's root, how it was copied
    (``sqlite``, ``lines`` or ``bytes``), its size and SHA-256."""

    path: str
    kind: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size,
                "sha256": self.sha256}


@dataclass(slots=True)
class Manifest:
    version: int
    created: float
    gateway_version: str
    files: list[Entry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created,
                "gateway_version": self.gateway_version,
                "files": [e.to_json() for e in self.files], **self.extra}


# ---- finding what to copy ---------------------------------------------------------------


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _sidecar_of(path: Path) -> Path | None:
    for suffix in SIDECARS:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return None


def walk(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file under ``root`` to copy, with how: ``sqlite``, ``lines`` or ``bytes``.
    Symlinks, sockets and FIFOs are skipped (a backup holds data, not pointers)."""
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        if here == root:
            dirs[:] = [d for d in dirs if d not in RUNTIME_DIRS]
        dirs.sort()
        for name in sorted(files):
            path = here / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # removed since the listing (a temp file, a rotated log)
            if not stat.S_ISREG(mode):
                continue
            main = _sidecar_of(path)
            if main is not None and is_sqlite(main):
                continue  # part of a database the backup API copies whole
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # a write_atomic temp file: the file it replaces is copied
            if is_sqlite(path):
                yield path, "sqlite"
            elif name.endswith(LINE_FILES):
                yield path, "lines"
            else:
                yield path, "bytes"


# ---- copying ------------------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent snapshot of a live database (its WAL included), in rollback-journal
    mode so that the copy is one self-contained file."""
    src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_SECONDS)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def copy_lines(source: Path, target: Path) -> None:
    """The complete lines of an append-only file: a line being appended right now has
    not reached its newline yet, and is left for the next backup."""
    with source.open("rb") as src, target.open("wb") as dst:
        data = src.read()
        end = data.rfind(b"\n") + 1
        dst.write(data[:end])


def copy_bytes(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)


COPIERS = {"sqlite": copy_sqlite, "lines": copy_lines, "bytes": copy_bytes}


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def copy_tree(data_dir: Path, out: Path) -> list[Entry]:
    """Copy every file of ``data_dir`` (as ``walk`` finds them) into ``out``, each
    fsynced, directories too; returns what was written."""
    entries = []
    made: set[Path] = set()
    for source, kind in walk(data_dir):
        relative = source.relative_to(data_dir)
        target = out / relative
        if target.parent not in made:
            _private_dir(target.parent)
            made.add(target.parent)
        try:
            COPIERS[kind](source, target)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            continue  # removed while we copied (retention, a rotated log): not data any more
        os.chmod(target, stat.S_IMODE(source.stat().st_mode) & 0o700 or 0o600)
        _fsync_file(target)
        size, digest = _hash_file(target)
        entries.append(Entry(relative.as_posix(), kind, size, digest))
    for directory in sorted(made | {out}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(directory)
    return entries


def take(data_dir: Path, out: Path, gateway_version: str,
         extra: Mapping[str, Any] | None = None, *, now: float | None = None) -> Manifest:
    """Back ``data_dir`` up into ``out`` (which must not exist, or be empty) and
    return the manifest, which the caller writes last with ``write_manifest`` once it
    has added what it checked on the copy (the CLI: the audit log's head)."""
    data_dir = data_dir.resolve()
    out = out.resolve()
    if not data_dir.is_dir():
        raise BackupError(f"there is no data_dir {data_dir}: check --config / --data-dir")
    if out == data_dir or out.is_relative_to(data_dir) or data_dir.is_relative_to(out):
        raise BackupError(f"the backup directory {out} must be outside data_dir "
                          f"({data_dir}), and data_dir outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty directory: name a new one")
    _private_dir(out)
    manifest = Manifest(MANIFEST_VERSION, time.time() if now is None else now,
                        gateway_version)
    manifest.files = copy_tree(data_dir, out)
    manifest.extra.update(extra or {})
    return manifest


def write_manifest(out: Path, manifest: Manifest) -> None:
    write_atomic(out / MANIFEST, json.dumps(manifest.to_json(), indent=1, sort_keys=True))


# ---- restoring ----------------------------------------------------------------------------


def read_manifest(backup: Path) -> dict[str, Any]:
    path = backup / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{backup} has no {MANIFEST}: it is no wagate backup, or one "
                          "that did not finish (the manifest is written last); take a "
                          "new one") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read ({exc}); the backup is damaged") from None
    if not isinstance(raw, dict) or raw.get("version") != MANIFEST_VERSION \
            or not isinstance(raw.get("files"), list):
        raise BackupError(f"{path} is not a manifest this wagate reads (version "
                          f"{MANIFEST_VERSION} expected)")
    return raw


def _safe_relative(name: Any) -> Path:
    if not isinstance(name, str) or not name:
        raise BackupError(f"the manifest names a file {name!r}: the backup is damaged")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or relative.parts[0] in RUNTIME_DIRS:
        raise BackupError(f"the manifest names {name!r}, outside what a backup holds: "
                          "the backup was edited; do not restore it")
    return relative


def check(backup: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every file of the backup checked against the manifest (size and SHA-256), and
    no file the manifest does not name; returns the manifest's file list."""
    raw = read_manifest(backup)
    listed: list[tuple[Path, dict[str, Any]]] = []
    for item in raw["files"]:
        if not isinstance(item, dict):
            raise BackupError("the manifest's file list is damaged")
        relative = _safe_relative(item.get("path"))
        path = backup / relative
        if path.is_symlink() or not path.is_file():
            raise BackupError(f"{path} is missing from the backup (the manifest lists it)")
        size, digest = _hash_file(path)
        if size != item.get("size") or digest != item.get("sha256"):
            raise BackupError(f"{path} does not match the manifest (size or SHA-256): "
                              "the backup is damaged; restore another one")
        listed.append((relative, item))
    names = {relative for relative, _ in listed} | {Path(MANIFEST)}
    for directory, _dirs, files in os.walk(backup):
        for name in files:
            relative = (Path(directory) / name).relative_to(backup)
            if relative not in names:
                raise BackupError(f"{backup / relative} is not in the manifest: the backup "
                                  "was changed after it was taken; remove it or restore "
                                  "another backup")
    return listed


def restore(backup: Path, data_dir: Path, force: bool = False,
            *, now: float | None = None) -> Path | None:
    """Put ``backup`` (checked first, byte for byte) in place as ``data_dir``: written
    to a temp directory beside it, fsynced, then renamed into place. A non-empty
    ``data_dir`` is refused unless ``force``; it is then kept beside, renamed
    ``<name>.before-restore-<time>``, and that path is returned. The caller holds the
    launcher's lock (no gateway runs)."""
    backup = backup.resolve()
    data_dir = data_dir.absolute()
    listed = check(backup)
    occupied = data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir()))
    if occupied and not force:
        raise BackupError(f"{data_dir} is not empty: restore into a new data_dir, or pass "
                          "--force to keep the current one beside it and restore in its place")
    parent = data_dir.parent
    _private_dir(parent)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    temp = parent / f".{data_dir.name}.restore-{stamp}-{os.getpid()}"
    try:
        _private_dir(temp)
        for relative, _item in listed:
            target = temp / relative
            _private_dir(target.parent)
            copy_bytes(backup / relative, target)
            os.chmod(target, 0o600)
            _fsync_file(target)
        for directory, _dirs, _files in os.walk(temp, topdown=False):
            fsync_dir(Path(directory))
        kept = parent / f"{data_dir.name}.before-restore-{stamp}" if occupied else None
        publish_directory(temp, data_dir, kept)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return kept
