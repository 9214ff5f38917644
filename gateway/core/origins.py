"""Which browser requests the gateway answers: the Host and Origin checks.

Pure logic, no Flask. Two attacks come through a browser that the operator opens:

- **DNS rebinding.** A page on ``attacker.example`` re-points its own name at
  ``127.0.0.1`` and then calls a loopback gateway "same-origin": the browser sends no
  preflight and lets the page read the answers (under ``--demo`` no token is needed).
  Its requests still name ``attacker.example`` in ``Host``. A loopback listener is
  meant for this machine, so it answers only to names that mean this machine
  (``localhost``, IP addresses, which no DNS can re-point) and to the names the
  operator lists in ``http.allowed_hosts``.
- **Cross-origin calls.** A page of another origin may call the API only when that
  origin is listed in ``http.allowed_origins`` (and then CORS headers let the browser
  read the answer). A request without ``Origin`` is not a browser's cross-origin call
  (curl, a server-side client, a same-origin navigation); one whose browser says
  ``Sec-Fetch-Site: same-origin`` (a header pages cannot set) is the page's own
  origin, even when a reverse proxy rewrote ``Host``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from gateway.core.networks import is_loopback_host, parse_address

DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                       r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
SHOWN_CHARS = 100  # of a hostile header repeated in a message (and the audit log)

Verdict = Literal["none", "same", "allowed", "refused"]


def split_host(header: str) -> tuple[str, int | None] | None:
    """A ``Host`` header as (name, port): the name lowercased, without brackets or a
    trailing dot. None when it is not a host at all."""
    text = header.strip().lower()
    if text.startswith("["):  # an IPv6 literal: [::1]:8080
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or ":" not in name:
            return None  # brackets hold an IPv6 address and nothing else
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        return None
    name = name.rstrip(".")
    if not name or not (HOST_NAME.match(name) or parse_address(name) is not None):
        return None
    return name, int(port_text) if port_text else None


def parse_origin(text: str) -> tuple[str, str, int | None] | None:
    """An origin ``scheme://host[:port]`` as (scheme, host, port), the port None when it
    is the scheme's default; None for anything else (``null``, a path, user info)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (scheme not in DEFAULT_PORTS or port == 0 or parts.path or parts.query or parts.fragment
            or parts.username is not None or parts.password is not None or not parts.hostname):
        return None
    host = parts.hostname.lower().rstrip(".")
    if not (HOST_NAME.match(host) or parse_address(host) is not None):
        return None
    return scheme, host, None if port == DEFAULT_PORTS[scheme] else port


def origin_text(origin: tuple[str, str, int | None]) -> str:
    """The canonical spelling: lower case, IPv6 in brackets, no default port."""
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (f":{port}" if port is not None else "")


def check_allowed_hosts(values: tuple[str, ...], where: str) -> frozenset[str]:
    """``http.allowed_hosts`` as lower-case names; ValueError names the bad entry."""
    names = set()
    for i, value in enumerate(values):
        parsed = split_host(value)
        if parsed is None or parsed[1] is not None or "*" in value:
            raise ValueError(f"{where}[{i}] = {value!r} must be a host name such as "
                             "wagate.example.com or an IP address (no scheme, port or "
                             "wildcard)")
        names.add(parsed[0])
    return frozenset(names)


def check_allowed_origins(values: tuple[str, ...], where: str) -> frozenset[str]:
    """``http.allowed_origins`` in canonical spelling; ValueError names the bad entry."""
    origins = set()
    for i, value in enumerate(values):
        if value.strip() in ("*", "null"):
            raise ValueError(f"{where}[{i}] = {value!r} is not allowed: list each origin "
                             "(a wildcard or 'null' would let any web page use the API)")
        parsed = parse_origin(value)
        if parsed is None:
            raise ValueError(f"{where}[{i}] = {value!r} must be an origin: "
                             "http:// or https://, a host and an optional port, nothing "
                             "after it (e.g. https://ops.example.com)")
        origins.add(origin_text(parsed))
    return frozenset(origins)


def _shown(text: str) -> str:
    return repr(text[:SHOWN_CHARS] + ("..." if len(text) > SHOWN_CHARS else ""))


@dataclass(frozen=True, slots=True)
class BrowserPolicy:
    """The Host and Origin rules of one gateway (built once per web process)."""

    check_host: bool  # a loopback bind, or allowed_hosts configured
    allowed_hosts: frozenset[str] = frozenset()
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def build(cls, bind_host: str, allowed_hosts: tuple[str, ...],
              allowed_origins: tuple[str, ...]) -> BrowserPolicy:
        hosts = check_allowed_hosts(allowed_hosts, "http.allowed_hosts")
        return cls(check_host=is_loopback_host(bind_host) or bool(hosts), allowed_hosts=hosts,
                   allowed_origins=check_allowed_origins(allowed_origins,
                                                         "http.allowed_origins"))

    def host_refusal(self, host_header: str | None) -> str | None:
        """Why a request naming ``host_header`` is refused, or None. IP addresses and
        ``localhost`` always pass: DNS cannot re-point them."""
        if not self.check_host or not host_header:
            return None  # no Host at all is no browser (every browser sends one)
        parsed = split_host(host_header)
        if parsed is not None:
            name = parsed[0]
            if name == "localhost" or parse_address(name) is not None or \
                    name in self.allowed_hosts:
                return None
        return (f"this gateway does not answer to the host name {_shown(host_header)} (the "
                "request's Host header); it answers to localhost, its IP addresses and the "
                "names in http.allowed_hosts: use one of those, or ask the operator to add "
                "this name to http.allowed_hosts")

    def origin_verdict(self, origin: str | None, fetch_site: str | None,
                       host_header: str | None) -> Verdict:
        """``none``: no browser origin to check; ``same``: the gateway's own origin;
        ``allowed``: listed in http.allowed_origins (answer with CORS headers);
        ``refused``: any other page."""
        if origin is None:
            return "none"
        if (fetch_site or "").strip().lower() == "same-origin":
            return "same"
        parsed = parse_origin(origin)
        if parsed is None:
            return "refused"  # "null" (sandboxed frames, file: pages) or garbage
        if host_header and self._same_authority(parsed, host_header):
            return "same"
        return "allowed" if origin_text(parsed) in self.allowed_origins else "refused"

    @staticmethod
    def _same_authority(origin: tuple[str, str, int | None], host_header: str) -> bool:
        """Origin and Host name the same host and port. The scheme is not compared: a
        TLS-terminating proxy in front turns https into http."""
        scheme, host, port = origin
        parsed = split_host(host_header)
        if parsed is None:
            return False
        name, host_port = parsed
        if host_port == DEFAULT_PORTS[scheme]:
            host_port = None
        return (name, host_port) == (host, port)

    @staticmethod
    def origin_refusal(origin: str) -> str:
        return (f"cross-origin request from {_shown(origin)} refused: only the gateway's own "
                "pages may call it from a browser; if this page should, ask the operator to "
                "add its origin to http.allowed_origins")


PREFLIGHT_MAX_AGE_SECONDS = 600


def cors_headers(origin: str) -> dict[str, str]:
    """Headers that let a browser show an allowed origin's page our answer. No
    credentials: the API reads tokens from Authorization, never from cookies."""
    return {"Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "X-Request-Id"}


def preflight_headers(origin: str) -> dict[str, str]:
    """The answer to an allowed origin's preflight (OPTIONS) request."""
    return {**cors_headers(origin),
            "Access-Control-Allow-Methods": "GET, POST",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-Id",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS)}
