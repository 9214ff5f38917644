"""Bursts of refused requests, recorded as few audit entries with counts.

Every refused request must be on record, but a client hammering the API without a
token must not be able to grow the audit log faster than a trickle. So refusals are
grouped into kinds keyed only on what a client cannot vary cheaply: its network (an
IPv4 /24, an IPv6 /64: every address of a cloud machine's /64 is one source), the
error code, the route template (``/admin/health``, or ``(no route)`` for every path
that matches none: never the raw path, which the client chooses freely) and the
recognised token's name (the operator chooses those).

The first refusal of a kind is written at once (with the path it asked for, clipped);
the rest are counted and written as one summary per window: the kind (the first
refusal's ``ip``, ``code``, ``route``, ``actor``, and ``network``) with ``repeated`` (how
many), ``first``, ``last`` and ``addresses`` (distinct addresses, up to
``MAX_ADDRESSES``). While refusals of a kind go on, its window doubles after each
summary, up to ``MAX_WINDOW_FACTOR`` windows, so a flood that lasts costs about one
line per ``MAX_WINDOW_FACTOR`` windows per kind; a kind is forgotten once it has been
quiet that long. One network holds at most ``MAX_KINDS_PER_SOURCE`` kinds (beyond
them, its refusals are counted under its own catch-all kind) and all networks
together at most ``max_kinds`` (beyond them, under one catch-all for everyone).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.networks import parse_address

MAX_KINDS = 1000
MAX_KINDS_PER_SOURCE = 8
MAX_WINDOW_FACTOR = 64
MAX_ADDRESSES = 64
MAX_KEY_CHARS = 64  # of a key value: codes, routes and token names are short
IPV4_PREFIX = 24
IPV6_PREFIX = 64
KEY_FIELDS = ("code", "route", "actor")
# What a summary repeats of its kind's first refusal (not the path nor the reason, which
# belong to that one request only).
SUMMARY_FIELDS = ("ip", "code", "route", "actor", "overflow")
ANY = "*"
UNKNOWN_NETWORK = "unknown"

Key = tuple[str, ...]


def source_network(ip: Any) -> str:
    """The network a client address counts under (``unknown`` when it is not one)."""
    address = parse_address(str(ip)) if ip is not None else None
    if address is None:
        return UNKNOWN_NETWORK
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _key_value(value: Any) -> str:
    return "" if value is None else str(value)[:MAX_KEY_CHARS]


@dataclass(slots=True)
class _Burst:
    fields: dict[str, Any]
    network: str
    started: float  # the current window's start
    window: float  # the current window's length
    last_seen: float
    repeated: int = 0  # refusals counted in the current window
    first: float = 0.0
    last: float = 0.0
    addresses: set[str] = field(default_factory=set)

    def count(self, ip: Any, now: float) -> None:
        if not self.repeated:
            self.first = now
        self.repeated += 1
        self.last = self.last_seen = now
        if len(self.addresses) < MAX_ADDRESSES:
            self.addresses.add(str(ip)[:MAX_KEY_CHARS])

    def summary(self) -> dict[str, Any] | None:
        if not self.repeated:
            return None
        kind = {k: v for k, v in self.fields.items() if k in SUMMARY_FIELDS}
        return {**kind, "network": self.network, "repeated": self.repeated,
                "first": self.first, "last": self.last, "addresses": len(self.addresses)}


class BurstCounter:
    def __init__(self, window: float, max_kinds: int = MAX_KINDS,
                 per_source: int = MAX_KINDS_PER_SOURCE,
                 max_factor: int = MAX_WINDOW_FACTOR) -> None:
        self.window = window
        self.max_window = window * max(1, max_factor)
        self.max_kinds = max(1, max_kinds)
        self.per_source = max(1, per_source)
        self._bursts: dict[Key, _Burst] = {}
        self._kinds_of: Counter[str] = Counter()  # network -> its specific kinds held

    def observe(self, fields: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        """The fields to write now (the first of a kind), or None (counted for later)."""
        network = source_network(fields.get("ip"))
        key: Key = (network, *(_key_value(fields.get(name)) for name in KEY_FIELDS))
        burst = self._bursts.get(key)
        if burst is None:
            key, first = self._admit(key, network, fields)
            burst = self._bursts.get(key)
            if burst is None:
                self._bursts[key] = _Burst(first, network if key[0] != ANY else ANY,
                                           now, self.window, now)
                if not self._catch_all(key):
                    self._kinds_of[network] += 1
                return {**first, "network": self._bursts[key].network}
        burst.count(fields.get("ip"), now)
        return None

    def due(self, now: float) -> list[dict[str, Any]]:
        """Summaries of the kinds whose window has passed (those with refusals counted);
        those that go on get a doubled window, those quiet for the longest one are
        forgotten."""
        out = []
        for key, burst in list(self._bursts.items()):
            if now - burst.started < burst.window:
                continue
            summary = burst.summary()
            if summary is not None:
                out.append(summary)
            if now - burst.last_seen >= self.max_window:
                self._forget(key)
                continue
            burst.started, burst.repeated = now, 0
            burst.addresses.clear()
            if summary is not None:
                burst.window = min(burst.window * 2, self.max_window)
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Every kind's pending summary (at exit)."""
        bursts, self._bursts = self._bursts, {}
        self._kinds_of.clear()
        return [entry for b in bursts.values() if (entry := b.summary())]

    def __len__(self) -> int:
        return len(self._bursts)

    # ---- internals ------------------------------------------------------------------------

    def _admit(self, key: Key, network: str, fields: Mapping[str, Any]
               ) -> tuple[Key, dict[str, Any]]:
        """The kind a new key is counted under, and the fields its first entry records."""
        if self._kinds_of[network] >= self.per_source:
            key = (network, ANY, ANY, ANY)
            fields = {"ip": fields.get("ip"), "code": ANY, "route": ANY, "overflow": True}
            if key in self._bursts:
                return key, fields
        if len(self._bursts) >= self.max_kinds:
            return (ANY, ANY, ANY, ANY), {"ip": ANY, "code": ANY, "route": ANY,
                                          "overflow": True}
        return key, dict(fields)

    @staticmethod
    def _catch_all(key: Key) -> bool:
        return key[1:] == (ANY, ANY, ANY)

    def _forget(self, key: Key) -> None:
        self._bursts.pop(key)
        network = key[0]
        if not self._catch_all(key):
            self._kinds_of[network] -= 1
            if self._kinds_of[network] <= 0:
                del self._kinds_of[network]
