"""Whose process listens on a local TCP port, from the kernel's socket tables.

``wagate status``, ``drain`` and ``sim`` find a gateway by the port its actor system
listens on, and join that actor system, which speaks pickle: whatever answers there
can run code in the joining process. Any user of the machine can listen on a port
that is free (the gateway of ``--data-dir`` is not running, or the default port was
never taken). So before joining, the listener's owner is looked up in
``/proc/net/tcp`` and ``/proc/net/tcp6`` (Linux; each socket's uid is there) and a
listener of another user is refused. Where the tables cannot be read, no owner is known
and nothing is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LISTEN = "0A"  # the kernel's TCP_LISTEN, as /proc/net/tcp shows st


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A /proc/net/tcp address: 32-bit words in the host's (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def listener_uids(port: int, host: str, tables: Iterable[str]) -> set[int]:
    """The uids of the sockets listening on ``host:port`` (or on every address, at
    ``port``) in the texts of the socket ``tables``."""
    try:
        target = ipaddress.ip_address(host)
    except ValueError:  # not an address: nothing to compare with
        return set()
    uids: set[int] = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8 or fields[3] != LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            try:
                local = _address(address)
                if int(hex_port, 16) != port:
                    continue
            except ValueError:
                continue
            mapped = getattr(local, "ipv4_mapped", None)
            if local.is_unspecified or local == target or mapped == target:
                uids.add(int(fields[7]))
    return uids


def foreign_listener(port: int, host: str, uid: int) -> int | None:
    """The uid of another user than ``uid`` listening on ``host:port``, or None (only
    ``uid``'s sockets, or the tables cannot be read)."""
    texts = []
    for table in TABLES:
        try:
            texts.append(table.read_text(encoding="ascii", errors="replace"))
        except OSError:
            continue
    others = sorted(listener_uids(port, host, texts) - {uid})
    return others[0] if others else None
