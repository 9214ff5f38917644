"""``wagate backup --out DIR`` and ``wagate restore DIR``: the data_dir, copied online.

``backup`` runs beside a running gateway (or a stopped one) and never stops its sends:
the copying is ``gateway.core.backup``'s; this adds the audit log's check. The copied
audit chain is verified and its head (the last entry's hash and number) is written
into the manifest, so the backup's audit log can later be proven complete up to that
entry (``wagate audit verify --expect-hash``), and an operator can ship the hash off
the machine.

``restore`` needs the gateway stopped: it takes the launcher's own lock on the target
data_dir (the one ``wagate serve`` holds for its whole life), so no gateway can be
running there, nor start while it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actors.audit.log import DIR_NAME, log_files, verify
from gateway.cli.run_state import LAUNCHER_LOCK, running_gateway
from gateway.core import backup as core
from gateway.core.backup import BackupError


def register(commands: Any, common: Any) -> None:
    take = commands.add_parser(
        "backup", help="copy data_dir consistently while the gateway runs",
        description="Copy the data_dir of a running (or stopped) gateway into a new "
                    "directory: SQLite stores with SQLite's online backup API, everything "
                    "else byte for byte, then a manifest with every file's SHA-256 and the "
                    "audit log's last hash. Sends go on meanwhile.")
    common(take)
    take.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="the backup directory to create (new, or empty)")
    take.set_defaults(handler=cmd_backup)

    back = commands.add_parser(
        "restore", help="put a backup back as data_dir (the gateway stopped)",
        description="Check every file of a backup against its manifest, then put it in "
                    "place as data_dir (written beside it, then renamed). Refused while a "
                    "gateway runs on that data_dir.")
    common(back)
    back.add_argument("backup", type=Path, metavar="DIR", help="a directory made by wagate backup")
    back.add_argument("--force", action="store_true",
                      help="restore over a non-empty data_dir (it is kept beside, renamed "
                           "<name>.before-restore-<time>)")
    back.set_defaults(handler=cmd_restore)


def audit_head(directory: Path) -> dict[str, Any] | None:
    """The verified head of a copied audit log, or None when there is none."""
    if not log_files(directory):
        return None
    result = verify(directory)
    if result.problem is not None:
        raise BackupError(f"the copied audit log does not verify ({result.problem}); run "
                          "`wagate audit verify` on the gateway's data_dir")
    return {"entries": result.entries, "last_seq": result.last_seq,
            "last_hash": result.last_hash}


def cmd_backup(args: argparse.Namespace) -> int:
    from gateway import __version__
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    data_dir = config.data_path
    out: Path = args.out
    try:
        manifest = core.take(data_dir, out, __version__)
        head = audit_head(out.resolve() / DIR_NAME)
        manifest.extra["audit"] = head
        core.write_manifest(out.resolve(), manifest)
    except (BackupError, OSError) as exc:
        print(f"wagate backup: {exc}", file=sys.stderr)
        return 1
    total = sum(e.size for e in manifest.files)
    stores = sum(1 for e in manifest.files if e.kind == "sqlite")
    print(f"backup of {data_dir} written to {out.resolve()}: {len(manifest.files)} files "
          f"({stores} SQLite stores), {total} bytes")
    if head is not None:
        print(f"audit log: {head['entries']} entries, last #{head['last_seq']}, "
              f"last hash {head['last_hash']}")
    outside = [p for p in _outside_paths(config) if not p.is_relative_to(data_dir)]
    for path in outside:
        print(f"not in the backup (outside data_dir, back it up separately): {path}")
    return 0


def _outside_paths(config: Any) -> list[Path]:
    """What the configuration keeps outside data_dir that a restore also needs."""
    paths = [config.sessions_path] if config.storage.sessions_dir else []
    if config.storage.media_dir:
        paths.append(config.media_path)
    if config.auth.tokens_file:
        paths.append(Path(config.auth.tokens_file).expanduser().resolve())
    return paths


@contextlib.contextmanager
def stopped(data_dir: Path) -> Iterator[None]:
    """Hold the launcher's lock of ``data_dir`` (when it has one): no ``wagate serve``
    runs there, and none starts until the restore is done."""
    lock = data_dir / LAUNCHER_LOCK
    fd = None
    if lock.parent.is_dir():
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BackupError(f"a wagate is running with data_dir {data_dir}: stop it "
                              "first (restore only into a stopped gateway's data_dir)") from None
    try:
        left = running_gateway(data_dir) if data_dir.is_dir() else None
        if left:
            raise BackupError(f"{left} on {data_dir}: stop them first")
        yield
    finally:
        if fd is not None:
            os.close(fd)


def cmd_restore(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    data_dir = config.data_path
    try:
        with stopped(data_dir):
            manifest = core.read_manifest(args.backup)
            kept = core.restore(args.backup, data_dir, force=args.force)
    except (BackupError, OSError) as exc:
        print(f"wagate restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {len(manifest['files'])} files from {args.backup.resolve()} "
          f"into {data_dir}")
    if kept is not None:
        print(f"the data_dir that was there is kept as {kept}; remove it when the restored "
              "gateway runs as it should")
    head = manifest.get("audit")
    if isinstance(head, dict):
        print(f"audit log restored up to entry #{head.get('last_seq')}, last hash "
              f"{head.get('last_hash')} (check: wagate audit verify --expect-hash "
              f"{head.get('last_hash')})")
    if config.encryption.generations_file:
        print(f"encryption.generations_file ({config.encryption.generations_file}) may "
              "record newer session stores than the backup holds: if the start refuses a "
              "store as rolled back, delete that file to accept the restored stores")
    return 0
