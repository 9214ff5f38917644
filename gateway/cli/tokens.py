"""``wagate token create | list | revoke``: manage the API tokens in the token file.

A token is shown once, at creation; the file keeps only its hash. A running gateway
re-reads the file within a second, so a new or revoked token applies at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gateway.auth.tokens import (
    NAME_PATTERN,
    ROLES,
    TokenEntry,
    TokenFile,
    TokenFileError,
    entry_line,
    new_token,
    parse_expiry,
    token_hash,
    tokens_path,
)
from gateway.core.errors import WagateError
from gateway.core.names import is_session_name
from gateway.core.networks import parse_networks
from gateway.core.times import iso_time


def register(commands: Any, common: Any) -> None:
    token = commands.add_parser("token", help="create, list and revoke API tokens")
    token.set_defaults(help_parser=token)
    sub = token.add_subparsers(title="token commands")

    create = sub.add_parser("create", help="create a token (shown once) and store its hash")
    common(create)
    create.add_argument("--name", required=True, help="a unique name (letters, digits, _ -)")
    create.add_argument("--role", required=True, choices=ROLES,
                        help="what the token may do: admin everything; operator links, unlinks "
                        "and reads messages; sender sends; viewer only looks (README: Roles)")
    create.add_argument("--networks", help="comma-separated CIDRs the token may be used from")
    create.add_argument("--sessions", help="comma-separated sessions the token may use")
    create.add_argument("--expires", help="lifetime such as 90d, 12h, 30m, or a date")
    create.set_defaults(handler=cmd_create)

    listing = sub.add_parser("list", help="the tokens in the token file (never the secrets)")
    common(listing)
    listing.set_defaults(handler=cmd_list)

    revoke = sub.add_parser("revoke", help="revoke a token; it stops working within a second")
    common(revoke)
    revoke.add_argument("name", help="the token's name (see `wagate token list`)")
    revoke.set_defaults(handler=cmd_revoke)


def _record(config: Any, event: str, **fields: Any) -> None:
    """Admin actions go to the audit log (through the running gateway's single writer)."""
    try:
        from gateway.cli.audit_client import record_admin_action
    except ImportError:  # pragma: no cover - the audit module ships with the gateway
        return
    record_admin_action(config, event, **fields)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def cmd_create(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    if not NAME_PATTERN.match(args.name):
        return _fail(f"--name {args.name!r}: use 1-64 letters, digits, '_' or '-'")
    sessions = _split(args.sessions) if args.sessions is not None else None
    bad = [s for s in sessions or () if not is_session_name(s)]
    if bad or sessions == []:
        return _fail(f"--sessions: {bad[0] if bad else 'empty'!r} is not a session name")
    now = time.time()
    try:
        networks = parse_networks(_split(args.networks), "--networks")
        expires = parse_expiry(args.expires, now) if args.expires else None
    except ValueError as exc:
        return _fail(str(exc))
    token = new_token()
    entry = TokenEntry(name=args.name, role=args.role, hash=token_hash(token),
                       networks=networks,
                       sessions=frozenset(sessions) if sessions is not None else None,
                       expires=expires, created=iso_time(now))
    store = TokenFile(tokens_path(config))
    try:
        store.add(entry)
    except TokenFileError as exc:
        return _fail(str(exc))
    except OSError as exc:  # a full disk, say: nothing was written (tmp + rename)
        return _fail(f"the token was not created: cannot write {store.path} ({exc.strerror})")
    try:
        _record(config, "token.create", actor="cli", name=entry.name, role=entry.role,
                sessions=sorted(entry.sessions) if entry.sessions is not None else None,
                networks=[str(n) for n in networks],
                expires=iso_time(expires) if expires else None)
    except WagateError as exc:
        # An admin action the audit log does not have is not done: the token goes
        # again (its secret was never shown, so no one holds it).
        store.remove(entry.name)
        return _fail(f"the token was not created: {exc}")
    print(f"token {entry.name!r} ({entry.role}) created; it is shown only now:\n")
    print(f"  {token}\n")
    print("Clients send it as the header:  Authorization: Bearer <token>")
    print(f"Its hash was added to {store.path} as the line (copy it to keep tokens elsewhere):")
    print(f"  {entry_line(entry)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    store = TokenFile(tokens_path(config))
    try:
        entries = store.entries()
    except TokenFileError as exc:
        return _fail(str(exc))
    if not entries:
        print(f"no tokens in {store.path}; create one with "
              "`wagate token create --name NAME --role ROLE`")
        return 0
    now = time.time()
    rows = [("NAME", "ROLE", "STATE", "SESSIONS", "NETWORKS", "EXPIRES")]
    for e in entries.values():
        rows.append((e.name, e.role, e.state(now),
                     ",".join(sorted(e.sessions)) if e.sessions is not None else "all",
                     ",".join(str(n) for n in e.networks) or "any",
                     iso_time(e.expires) if e.expires else "never"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    store = TokenFile(tokens_path(config))
    try:
        entry = store.revoke(args.name, time.time())
    except TokenFileError as exc:
        return _fail(str(exc))
    try:
        _record(config, "token.revoke", actor="cli", name=entry.name, role=entry.role)
    except WagateError as exc:  # the revocation stands: safer than a live token
        return _fail(f"token {entry.name!r} is revoked, but the audit log does not say "
                     f"so: {exc}")
    print(f"token {entry.name!r} is revoked (since {entry.revoked}); a running gateway "
          "refuses it within a second")
    return 0


def _fail(message: str) -> int:
    print(f"wagate token: {message}", file=sys.stderr)
    return 2
