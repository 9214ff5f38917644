"""``wagate keys create | rotate | check``: the storage key of the encrypted session stores.

The key never lives in data_dir and is never shown again after ``create`` prints or
writes it. ``rotate`` is the long one: it prints one progress line per store, then a
summary and what to do next.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from actors.session.sealed_store import (
    StoreKey,
    StoreKeyError,
    generate_key_text,
    is_inside,
    load_key,
    parse_key,
)
from gateway.cli.progress import Progress
from gateway.cli.store_keys import StoreCheckError, rotate_keys, verify_stores
from gateway.core.config import Config, EncryptionConfig
from gateway.core.files import write_atomic


def register(commands: Any, common: Any) -> None:
    keys = commands.add_parser("keys", help="create, rotate and check the storage key")
    keys.set_defaults(help_parser=keys)
    sub = keys.add_subparsers(title="key commands")

    create = sub.add_parser("create", help="a new storage key, printed or written to a file")
    common(create)
    create.add_argument("--out", type=Path,
                        help="write it to this file (mode 0600; never overwritten) "
                             "instead of printing it")
    create.set_defaults(handler=cmd_create)

    rotate = sub.add_parser("rotate", help="re-encrypt every session store under a new key "
                                           "(with the gateway stopped)")
    common(rotate)
    source = rotate.add_mutually_exclusive_group(required=True)
    source.add_argument("--new-key-file", type=Path, help="a file holding the new key")
    source.add_argument("--new-key-env", metavar="VAR",
                        help="an environment variable holding the new key")
    rotate.set_defaults(handler=cmd_rotate)

    check = sub.add_parser("check", help="check that every session store opens with the "
                                         "configured key")
    common(check)
    check.set_defaults(handler=cmd_check)


def _fail(message: str) -> int:
    print(f"wagate keys: {message}", file=sys.stderr)
    return 1


def _config(args: argparse.Namespace) -> Config:
    from gateway.cli.wagate import resolve_config

    return resolve_config(args)


def cmd_create(args: argparse.Namespace) -> int:
    key_text = generate_key_text()
    key = parse_key(key_text, "a new key")
    if args.out is None:
        print(key_text)
        print(f"(fingerprint {key.fingerprint}) Keep it secret, outside data_dir: put it "
              "in the environment variable WAGATE_STORE_KEY (encryption.key_env) or in a "
              "0600 file named by encryption.key_file", file=sys.stderr)
        return 0
    config = _config(args)
    path = args.out.expanduser()
    if is_inside(path, config.data_path):
        return _fail(f"{path} is inside data_dir ({config.data_path}): copies and backups "
                     "of data_dir would carry the key; write it somewhere else")
    if not path.parent.is_dir():
        return _fail(f"the directory {path.parent} does not exist; create it first "
                     "(mode 0700, owned by the user running wagate)")
    try:
        write_atomic(path, key_text + "\n", exclusive=True)
    except FileExistsError:
        return _fail(f"{path} already exists; a key is never overwritten (stores encrypted "
                     "under it would be lost): choose another path")
    except OSError as exc:
        return _fail(f"cannot create {path}: {exc.strerror}")
    print(f"wrote a new storage key (fingerprint {key.fingerprint}) to {path} (mode 0600)")
    print("next: name it in the config (encryption.key_file) for a new gateway, or move "
          f"existing stores to it with `wagate keys rotate --new-key-file {path}`")
    return 0


def _new_key(args: argparse.Namespace, config: Config) -> StoreKey:
    if args.new_key_env:
        enc = EncryptionConfig(key_env=args.new_key_env, key_file="")
        key = load_key(enc, config.data_path)
        if key is None:
            raise StoreKeyError(f"the environment variable {args.new_key_env} (--new-key-env) "
                                "is not set")
        return key
    key = load_key(EncryptionConfig(key_env="", key_file=str(args.new_key_file)),
                   config.data_path)
    assert key is not None  # a key file is named: a problem raised instead
    return key


def cmd_rotate(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        new_key = _new_key(args, config)
    except StoreKeyError as exc:
        return _fail(f"the new key: {exc}")
    progress = Progress()
    print(f"re-encrypting the session stores in {config.data_path} under key "
          f"{new_key.fingerprint} ({new_key.source})", file=sys.stderr)
    try:
        report = rotate_keys(config, new_key, lambda line: progress.update(line))
    except StoreCheckError as exc:
        progress.done()
        return _fail(str(exc))
    progress.done()
    _record(config, report, new_key)
    summary = (f"{len(report.rotated)} re-encrypted, {len(report.already)} already under the "
               f"new key, {len(report.sealed)} encrypted from clear text, "
               f"{len(report.failed)} failed ({report.total} stores)")
    if report.failed:
        print(f"key rotation INCOMPLETE: {summary}", file=sys.stderr)
        for failure in report.failed:
            print(f"  {failure}", file=sys.stderr)
        print("Every store is still readable with the old or the new key. Fix the cause and "
              "run the same command again: it finishes the job. Keep the old key configured "
              "until then.", file=sys.stderr)
        return 1
    print(f"key rotation done: {summary}")
    where = (f"encryption.key_file = \"{args.new_key_file}\"" if args.new_key_file
             else f"the key in {config.encryption.key_env or 'encryption.key_env'}")
    print(f"next: point the config at the new key ({where}), start the gateway, check that "
          "the sessions reconnect, then destroy the old key (keep it only as long as you "
          "keep backups of data_dir made before this rotation)")
    return 0


def _record(config: Config, report: Any, new_key: StoreKey) -> None:
    """The rotation goes to the audit log, when the audit module is there."""
    try:
        from gateway.cli.audit_client import record_admin_action
    except ImportError:  # pragma: no cover - the audit module ships with the gateway
        return
    try:
        record_admin_action(config, "keys.rotate", actor="cli",
                            new_key=new_key.fingerprint, rotated=len(report.rotated),
                            already=len(report.already), sealed=len(report.sealed),
                            failed=len(report.failed))
    except Exception as exc:  # the rotation itself is done: say so, but do not fail it
        print(f"wagate keys: warning: the rotation was not recorded in the audit log: {exc}",
              file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        key, results = verify_stores(config)
    except StoreCheckError as exc:
        return _fail(str(exc))
    configured = f"key {key.fingerprint} ({key.source})" if key else "no key configured"
    print(f"session stores in {config.data_path}, {configured}:")
    if not results:
        print("  (no stores)")
    bad = 0
    for store, outcome in results:
        if outcome != "ok" and not outcome.startswith("clear text"):
            bad += 1
        print(f"  {store.label}: {outcome}")
    if bad:
        print(f"{bad} of {len(results)} stores do not open with the configured key",
              file=sys.stderr)
        return 1
    return 0
