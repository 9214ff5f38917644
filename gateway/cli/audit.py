"""``wagate audit verify | tail``: check the audit log's hash chain, show recent entries.

Both only read, so they work while the gateway runs (an entry being written at that
moment is not mistaken for damage) and while it is stopped. In multi-host mode with a
database (``cluster.database_url``) they read the chain in PostgreSQL, which every
leader shares, instead of this host's files.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from actors.audit.log import AuditError, audit_dir, lock_holder, log_files, read_tail, verify
from gateway.core.config import Config, lease_mode
from gateway.core.ranges import Range, flag

HASH = re.compile(r"^[0-9a-f]{64}$")
SKIPPED_IN_TAIL = ("seq", "time", "event", "prev", "hash")
TAIL_LINES = Range(0, 100_000)


def register(commands: Any, common: Any) -> None:
    audit = commands.add_parser("audit", help="verify and read the audit log")
    audit.set_defaults(help_parser=audit)
    sub = audit.add_subparsers(title="audit commands")

    check = sub.add_parser("verify", help="check that no line was edited, removed, "
                           "reordered or inserted")
    common(check)
    check.add_argument("--expect-hash", metavar="HASH",
                       help="a last hash printed by an earlier verify (and kept elsewhere): "
                       "fail unless the log still contains that entry")
    check.set_defaults(handler=cmd_audit_verify)

    tail = sub.add_parser("tail", help="print the most recent entries")
    common(tail)
    tail.add_argument("-n", "--lines", type=flag(int, TAIL_LINES), default=20,
                      help=f"how many ({TAIL_LINES.describe()}; default 20)")
    tail.add_argument("--json", action="store_true", help="the raw JSON lines")
    tail.set_defaults(handler=cmd_audit_tail)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    expected = args.expect_hash.strip().lower() if args.expect_hash else None
    if expected is not None and not HASH.match(expected):
        print("wagate audit verify: --expect-hash takes the 64 hex digits printed as "
              "'last hash' by an earlier verify")
        return 2
    config = resolve_config(args)
    if lease_mode(config):
        return _verify_database(config, expected)
    directory = audit_dir(config.data_path)
    if not directory.is_dir():
        print(f"no audit log in {directory}: nothing was recorded there yet; "
              "check --config / --data-dir")
        return 1
    live = lock_holder(directory) is not None
    result = verify(directory, live=live, expect_hash=expected)
    if result.problem is not None:
        print(f"audit log NOT OK: {result.problem}")
        print(f"({result.entries} entries verified before it; the log continues from there "
              "only if this line is explained)")
        return 1
    files = f"{result.files} file{'' if result.files == 1 else 's'}"
    print(f"audit log OK: {result.entries} entries in {files}, last hash {result.last_hash}")
    if result.first_seq > 1:
        print(f"the oldest file, {result.first_file}, starts at entry #{result.first_seq}: "
              f"entries 1 to {result.first_seq - 1} were removed by retention "
              f"(audit.max_files), as entry #{result.retention_seq} records")
    if result.last_time:
        print(f"last entry: #{result.last_seq} at {result.last_time}"
              + (" (the gateway is writing)" if live else ""))
    return 0


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    if lease_mode(config):
        from actors.audit.pg import read_tail_pg

        try:
            lines = read_tail_pg(config.cluster.database_url, max(0, args.lines))
        except AuditError as exc:
            print(f"wagate audit tail: {exc}")
            return 1
    else:
        directory = audit_dir(config.data_path)
        lines = read_tail(directory, max(0, args.lines)) if log_files(directory) else []
    if not lines:
        print("(no audit entries)")
        return 0
    for line in lines:
        if args.json:
            print(line)
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            print(f"(unreadable line) {line[:200]}")
            continue
        if not isinstance(entry, dict):
            print(f"(unreadable line) {line[:200]}")
            continue
        rest = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in entry.items()
                        if k not in SKIPPED_IN_TAIL)
        print(f"#{entry.get('seq')}  {entry.get('time')}  {entry.get('event')}  {rest}".rstrip())
    return 0


def _verify_database(config: Config, expected: str | None) -> int:
    """``verify`` of the chain in PostgreSQL (multi-host mode); a problem names the row."""
    from actors.audit.pg import TABLE, verify_pg

    try:
        result = verify_pg(config.cluster.database_url, expect_hash=expected)
    except AuditError as exc:
        print(f"wagate audit verify: {exc}")
        return 1
    if result.problem is not None:
        print(f"audit chain NOT OK: {result.problem}")
        print(f"({result.entries} entries verified before it)")
        return 1
    print(f"audit chain OK: {result.entries} entries in the database table {TABLE}, "
          f"last hash {result.last_hash}")
    if result.last_time:
        print(f"last entry: #{result.last_seq} at {result.last_time}")
    return 0
