"""IP networks and addresses as the gateway checks them: one place for the parsing
rules (CIDR notation, an IPv6 scope id, IPv4-mapped IPv6 peers) shared by the API's
access checks and the actor system's accept filter."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(values: Iterable[str], where: str) -> tuple[Network, ...]:
    """``where`` names the setting in the error, e.g. ``auth.allowed_networks``."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not an IPv4 or IPv6 network "
                             "(use CIDR notation such as 10.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as a peer or a header gives it; None when it is not one. A dual-stack
    socket reports IPv4 peers as ``::ffff:a.b.c.d``: those count as IPv4."""
    try:
        parsed = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def address_in(text: str, networks: Iterable[Network]) -> bool:
    address = parse_address(text)
    return address is not None and any(
        address.version == n.version and address in n for n in networks)


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps a listener on this machine only: ``localhost`` or
    a loopback address (``127.0.0.0/8``, ``::1``). ``0.0.0.0`` and ``::`` are not."""
    if host.strip().lower() == "localhost":
        return True
    address = parse_address(host.strip().strip("[]"))
    return address is not None and address.is_loopback
