"""Which webhook targets may be called, decided on the address actually connected to.

A url names a host; DNS turns it into addresses, and a name that resolves to a public
address when checked and to 127.0.0.1 when connected (DNS rebinding) would let anyone
who may register a webhook reach the gateway's own network. So the host is resolved
once, here, every address is checked, and the client connects to the checked address
(sending the name as Host and as TLS SNI, so certificates are still checked against the
name). https is required, and private, loopback, link-local and other non-public
addresses are refused, except for names or networks in ``webhooks.allow_insecure``.
Pure, except ``resolve`` (the resolver is passed in so tests choose the answers).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.core.errors import WagateError
from gateway.core.urls import loggable_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class UnsafeTarget(WagateError, ValueError):
    """A url or an address a webhook may not be delivered to; the message says why and
    what to change."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked url: its parts, and the one address the request goes to."""

    scheme: str
    host: str  # the name, as the url gives it (sent as Host and SNI)
    port: int
    path: str  # path and query
    address: str  # the checked IP the connection is made to


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) url without credentials or fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"the webhook url is malformed ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("a webhook url is https://host/path (http:// only for hosts in "
                           "webhooks.allow_insecure)")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("a webhook url may not hold a user name or password; the "
                           "signature authenticates the gateway to the receiver")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname.lower(), port or default, path


def is_allowlisted(host: str, address: str | None, allow: Sequence[str]) -> bool:
    """Whether ``host`` (by exact name) or ``address`` (in a listed network) is in
    ``webhooks.allow_insecure``."""
    for entry in allow:
        if entry.lower() == host:
            return True
        if address is None:
            continue
        try:
            if ipaddress.ip_address(address) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_url(url: str, allow: Sequence[str]) -> tuple[str, str, int, str]:
    """The url's parts if its form is acceptable before any lookup: https, or http for
    an allowlisted name or literal address. Called when an endpoint is created, too."""
    scheme, host, port, path = split_url(url)
    literal = _literal(host)
    if scheme == "http" and not is_allowlisted(host, literal, allow):
        raise UnsafeTarget(f"webhook url {loggable_url(url)!r} is plain http: use https, or "
                           "add its host to webhooks.allow_insecure (for a receiver on a "
                           "trusted network)")
    return scheme, host, port, path


def check_address(host: str, address: str, allow: Sequence[str]) -> None:
    """Refuse a non-public ``address`` unless its host or network is allowlisted."""
    ip = embedded_ipv4(ipaddress.ip_address(address))
    if ip.is_global and not ip.is_multicast:
        return
    if is_allowlisted(host, str(ip), allow):
        return
    raise UnsafeTarget(
        f"webhook host {host!r} resolves to {ip}, a private, loopback, link-local or "
        "otherwise non-public address; add the host or its network to "
        "webhooks.allow_insecure if this receiver is meant to be reached")


# IPv6 ranges that carry an IPv4 address in their bits and reach it through a
# translator or tunnel; Python calls most of them "global", so the IPv4 is what counts.
_LOW32_WRAPPERS = tuple(ipaddress.IPv6Network(n) for n in (
    "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
    "64:ff9b:1::/48",  # NAT64 local-use prefix (RFC 8215)
    "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
    "::/96",  # IPv4-compatible (deprecated, RFC 4291)
))


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address wraps (IPv4-mapped, 6to4, NAT64,
    IPv4-translated, IPv4-compatible), else ``ip`` itself: on a host behind NAT64 or a
    6to4 relay such an address reaches that IPv4, so that IPv4 is the one to check."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in ipaddress.IPv6Network("::/127"):
        return ip  # :: and ::1 are not IPv4-compatible addresses (and are not global)
    if any(ip in network for network in _LOW32_WRAPPERS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTarget(f"webhook host {host!r} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def target(url: str, allow: Sequence[str], resolver: Resolver = resolve) -> Target:
    """Resolve ``url``'s host once and check every address it gave (one bad address
    refuses the url: a round-robin name cannot slip a private address in); the request
    then goes to the first one."""
    scheme, host, port, path = check_url(url, allow)
    literal = _literal(host)
    addresses = [literal] if literal is not None else resolver(host, port)
    if not addresses:
        raise UnsafeTarget(f"webhook host {host!r} has no address")
    for address in addresses:
        check_address(host, address, allow)
    return Target(scheme, host, port, path, addresses[0])


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
