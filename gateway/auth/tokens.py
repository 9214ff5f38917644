"""Who may do what, from where: API tokens, roles and networks.

Pure logic, no Flask: the app asks ``Authenticator`` who a request is and
``check`` whether that principal may run an action on a session.

Tokens are random (32 bytes) and stored only as SHA-256 hashes. A slow password hash
buys nothing for 256 random bits, and a fast one keeps every request cheap. Lookups
compare against every stored hash with ``hmac.compare_digest`` and never stop early,
so response time says nothing about how close a guess was.

The token file is TOML with one line per token under ``[tokens]``, so that
``wagate token create`` can print "the line to add" and revocation rewrites one line::

    [tokens]
    ci = { role = "sender", hash = "sha256:...", sessions = ["default"], expires = "..." }
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.core.config import Config
from gateway.core.errors import GatewayError, WagateError
from gateway.core.files import write_atomic
from gateway.core.names import is_session_name
from gateway.core.networks import Network, address_in, parse_address, parse_networks
from gateway.core.times import iso_time

ROLES = ("admin", "operator", "sender", "viewer")

# action -> roles allowed. The README's role matrix is generated from the same facts.
ACTIONS: dict[str, frozenset[str]] = {
    "status": frozenset({"admin", "operator", "sender", "viewer"}),
    "connect": frozenset({"admin", "operator"}),  # connect, disconnect, pairing code
    "messages": frozenset({"admin", "operator"}),  # message records
    # The event log (whatsAppEvents): what happened to messages and sessions. The
    # sending application is its consumer (it learns its messages' fate), so sender
    # may; viewer (monitoring) may not: events name messages and their outcomes.
    "events": frozenset({"admin", "operator", "sender"}),
    "send": frozenset({"admin", "sender"}),  # both sends and the connection test
    "health": frozenset({"admin", "viewer"}),  # /admin/health, /metrics
    "admin": frozenset({"admin"}),  # /admin/tokens
}

TOKEN_PREFIX = "wgt_"
TOKEN_BYTES = 32
# \A...\Z, not ^...$: "$" also matches before a trailing newline, and such a name
# would break the token file in two (every later read of it fails).
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
DURATION = re.compile(r"^(\d+)([dhm])$")
MAX_EXPIRY_SECONDS = 100 * 365 * 86400  # a longer lifetime is a typo, not a plan


class TokenFileError(WagateError, ValueError):
    """The token file cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request, as the resolvers see it."""

    name: str
    role: str
    sessions: frozenset[str] | None = None  # None = every session

    def may(self, action: str) -> bool:
        return self.role in ACTIONS[action]

    def may_see(self, session: str) -> bool:
        return self.sessions is None or session in self.sessions

    def covers(self, sessions: frozenset[str] | None) -> bool:
        """Whether ``sessions`` (None: every session) lie within this principal's own:
        what another token may reach is for whoever may see all of it."""
        return self.sessions is None or (sessions is not None and sessions <= self.sessions)


DEMO_PRINCIPAL = Principal("demo", "admin")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    role: str
    hash: str
    networks: tuple[Network, ...] = ()
    sessions: frozenset[str] | None = None
    expires: float | None = None
    created: str = ""
    revoked: str = ""

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.sessions)

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked:
            return "revoked"
        return "expired" if self.expires is not None and self.expires <= now else "active"

    def public(self, now: float) -> dict[str, Any]:
        """What /admin/tokens shows of a token: everything but its hash."""
        return {"name": self.name, "role": self.role, "state": self.state(now),
                "sessions": sorted(self.sessions) if self.sessions is not None else None,
                "networks": [str(n) for n in self.networks],
                "expires": iso_time(self.expires) if self.expires else None,
                "created": self.created or None, "revoked": self.revoked or None}


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request was refused: HTTP status, error code and an actionable message."""

    status: int
    code: str
    message: str
    token: str | None = None  # the token's name, when the token was recognised


# ---- tokens ------------------------------------------------------------------------------


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_expiry(text: str, now: float) -> float:
    """``90d``, ``12h``, ``30m`` from now, or an ISO date/time (UTC if no zone)."""
    match = DURATION.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        seconds = amount * {"d": 86400, "h": 3600, "m": 60}[unit]
        if amount < 1 or seconds > MAX_EXPIRY_SECONDS:
            raise ValueError(f"--expires {text!r}: use a lifetime of 1 minute to 100 years "
                             "(e.g. 90d), or a date")
        return now + seconds
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--expires {text!r}: use a duration such as 90d, 12h or 30m, "
                         "or a date such as 2027-01-31") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return moment.timestamp()


def entry_line(entry: TokenEntry) -> str:
    """One TOML line for the token file (JSON strings are valid TOML basic strings)."""
    fields: dict[str, Any] = {"role": entry.role, "hash": entry.hash}
    if entry.networks:
        fields["networks"] = [str(n) for n in entry.networks]
    if entry.sessions is not None:
        fields["sessions"] = sorted(entry.sessions)
    if entry.expires is not None:
        fields["expires"] = iso_time(entry.expires)
    if entry.created:
        fields["created"] = entry.created
    if entry.revoked:
        fields["revoked"] = entry.revoked
    body = ", ".join(f"{key} = {json.dumps(value)}" for key, value in fields.items())
    return f"{entry.name} = {{ {body} }}"


def parse_token_file(text: str, path: Path) -> dict[str, TokenEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"token file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"tokens"})
    if unknown:
        raise TokenFileError(f"token file {path}: unknown table [{unknown[0]}]; "
                             "tokens go under [tokens]")
    entries = {}
    for name, raw in data.get("tokens", {}).items():
        where = f"token file {path}, token {name!r}"
        if not isinstance(raw, dict):
            raise TokenFileError(f"{where}: must be an inline table {{ role = ..., hash = ... }}")
        entries[name] = _entry(name, raw, where)
    return entries


def _entry(name: str, raw: dict[str, Any], where: str) -> TokenEntry:
    known = {"role", "hash", "networks", "sessions", "expires", "created", "revoked"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TokenFileError(f"{where}: unknown key {unknown[0]!r}")
    if not NAME_PATTERN.match(name):
        raise TokenFileError(f"{where}: names are 1-64 letters, digits, '_' or '-'")
    role = raw.get("role")
    if role not in ROLES:
        raise TokenFileError(f"{where}: role must be one of {', '.join(ROLES)}")
    digest = raw.get("hash", "")
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise TokenFileError(f"{where}: hash must be 'sha256:' and 64 hex digits")
    try:
        networks = parse_networks(raw.get("networks", []), where)
    except ValueError as exc:
        raise TokenFileError(str(exc)) from None
    sessions = raw.get("sessions")
    if sessions is not None:
        if not isinstance(sessions, list) or not all(
                is_session_name(s) for s in sessions):
            raise TokenFileError(f"{where}: sessions must be a list of session names")
        sessions = frozenset(sessions)
    expires = raw.get("expires")
    if expires is not None:
        try:
            expires = datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise TokenFileError(f"{where}: expires must be an ISO date-time") from None
    return TokenEntry(name=name, role=role, hash=digest, networks=networks, sessions=sessions,
                      expires=expires, created=str(raw.get("created", "")),
                      revoked=str(raw.get("revoked", "")))


class TokenFile:
    """The token file on disk: read, add, revoke. Writes are atomic (tmp + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> dict[str, TokenEntry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return parse_token_file(text, self.path)

    def add(self, entry: TokenEntry) -> str:
        with self._locked():
            entries = self.entries()
            if entry.name in entries:
                raise TokenFileError(f"a token named {entry.name!r} already exists in "
                                     f"{self.path}; choose another name or revoke it first")
            entries[entry.name] = entry
            self._write(entries)
        return entry_line(entry)

    def remove(self, name: str) -> None:
        """Take ``name`` out again (a token whose creation could not be audited: its
        secret was never shown, so no one can hold it)."""
        with self._locked():
            entries = self.entries()
            if entries.pop(name, None) is not None:
                self._write(entries)

    def revoke(self, name: str, now: float) -> TokenEntry:
        if not self.path.exists():  # nothing to revoke: never make a directory for it
            raise TokenFileError(f"no token named {name!r}: there is no token file "
                                 f"{self.path} (check --config and --data-dir)")
        with self._locked():
            entries = self.entries()
            if name not in entries:
                raise TokenFileError(f"no token named {name!r} in {self.path} "
                                     "(see `wagate token list`)")
            old = entries[name]
            if old.revoked:
                return old
            entries[name] = TokenEntry(old.name, old.role, old.hash, old.networks,
                                       old.sessions, old.expires, old.created, iso_time(now))
            self._write(entries)
        return entries[name]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Two `wagate token` commands at once must not lose each other's change."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, entries: dict[str, TokenEntry]) -> None:
        text = ("# wagate API tokens: hashes only; manage with `wagate token ...`\n[tokens]\n"
                + "".join(entry_line(e) + "\n" for e in entries.values()))
        write_atomic(self.path, text)


def tokens_path(config: Config) -> Path:
    """``auth.tokens_file``, or ``data_dir/tokens.toml`` when it is empty."""
    configured = config.auth.tokens_file
    if configured:
        return Path(configured).expanduser().resolve()
    return config.data_path / "tokens.toml"


# ---- networks ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    allowed: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()

    def client_address(self, remote: str, forwarded_for: str | None) -> str:
        """The caller's address. ``X-Forwarded-For`` counts only when the peer is a
        trusted proxy; then the right-most address that is not a trusted proxy is the
        client (everything left of it could have been written by the client)."""
        if not forwarded_for or not address_in(remote, self.trusted_proxies):
            return remote
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if parse_address(hop) is None:
                return remote  # a garbled header: trust only what we saw ourselves
            if not address_in(hop, self.trusted_proxies):
                return hop
        return hops[0] if hops else remote

    def allows(self, address: str) -> bool:
        return not self.allowed or address_in(address, self.allowed)


# ---- authentication ----------------------------------------------------------------------


@dataclass
class Authenticator:
    """Turns a request's address and Authorization header into a principal (or a refusal).

    ``required = False`` is the demo mode: every caller is the admin principal "demo".
    The token file's mtime is looked at on every request (one stat) and the file
    re-read when it changed, so a revocation applies to the very next request in every
    worker process.
    """

    token_path: Path
    networks: NetworkPolicy
    required: bool = True
    _entries: dict[str, TokenEntry] = field(default_factory=dict)
    _version: tuple[int, int, int] | None = None  # inode, mtime, size of the file read
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> int:
        """Read the token file now; returns how many usable tokens it holds."""
        self._reload(force=True)
        now = time.time()
        return sum(1 for e in self._entries.values() if e.state(now) == "active")

    def check_network(self, address: str) -> Denied | None:
        if self.networks.allows(address):
            return None
        return Denied(403, "FORBIDDEN", f"requests from {address} are not allowed "
                      "(auth.allowed_networks); ask the operator to add your network")

    def authenticate(self, address: str, authorization: str | None, now: float
                     ) -> Principal | Denied:
        if not self.required:
            return DEMO_PRINCIPAL
        if not authorization:
            return Denied(401, "UNAUTHENTICATED", "send an API token in the header "
                          "'Authorization: Bearer <token>' (create one with "
                          "`wagate token create`)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Denied(401, "UNAUTHENTICATED", "the Authorization header must be "
                          "'Bearer <token>'")
        entry = self._find(token)
        if entry is None:
            return Denied(401, "UNAUTHENTICATED", "this API token is not valid; check it "
                          "or ask the operator for a new one")
        if entry.revoked:
            return Denied(401, "UNAUTHENTICATED", f"API token {entry.name!r} was revoked on "
                          f"{entry.revoked}; ask the operator for a new one", entry.name)
        if entry.expires is not None and entry.expires <= now:
            return Denied(401, "UNAUTHENTICATED", f"API token {entry.name!r} expired on "
                          f"{iso_time(entry.expires)}; ask the operator for a new one", entry.name)
        if entry.networks and not address_in(address, entry.networks):
            return Denied(403, "FORBIDDEN", f"API token {entry.name!r} may not be used from "
                          f"{address}; use it from its allowed networks", entry.name)
        return entry.principal()

    def _find(self, token: str) -> TokenEntry | None:
        self._reload()
        digest = token_hash(token)
        found = None
        for entry in self._entries.values():  # no early exit: constant time per file
            if hmac.compare_digest(entry.hash, digest):
                found = entry
        return found

    def _reload(self, force: bool = False) -> None:
        try:
            stat = self.token_path.stat()
            version: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns,
                                                    stat.st_size)
        except FileNotFoundError:
            version = None
        if not force and version == self._version:
            return
        with self._lock:
            if force or version != self._version:
                # A broken hand edit keeps the tokens read before it (`wagate token list`
                # names the error) until the file changes again.
                try:
                    self._entries = TokenFile(self.token_path).entries()
                except TokenFileError:
                    if force:
                        raise
                self._version = version


# ---- authorization -----------------------------------------------------------------------


def check(principal: Principal, action: str, session: str | None = None) -> None:
    """Raise FORBIDDEN unless ``principal`` may run ``action`` (on ``session``)."""
    if not principal.may(action):
        allowed = ", ".join(sorted(ACTIONS[action]))
        raise GatewayError("FORBIDDEN", f"token {principal.name!r} has role "
                           f"{principal.role!r}, which may not do this ({action}); "
                           f"roles allowed: {allowed}")
    if session is not None and not principal.may_see(session):
        own = ", ".join(sorted(principal.sessions or ()))
        raise GatewayError("FORBIDDEN", f"token {principal.name!r} may not use session "
                           f"{session!r}; its sessions: {own}")


def authenticator_for(config: Config) -> Authenticator:
    """The token check ``config`` asks for, its token file loaded when tokens are
    required. The launcher checks the tokens with this before it starts the actor
    system, so that it need not import the web tier (Flask, GraphQL): every actor
    process is forked from the launcher and would carry that heap (issue 17)."""
    auth = config.auth
    policy = NetworkPolicy(parse_networks(auth.allowed_networks, "auth.allowed_networks"),
                           parse_networks(auth.trusted_proxies, "auth.trusted_proxies"))
    authenticator = Authenticator(tokens_path(config), policy, auth.required)
    if auth.required:
        authenticator.load()
    return authenticator
