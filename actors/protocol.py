"""Which wagate a host runs, as the hosts of a cluster tell each other.

The hosts exchange pickled dataclasses, and a dataclass with ``slots=True`` is
pickled by position: a field inserted in one version silently moves every later
value on a host that runs the other (a 10 read as 99). So every host advertises, in
its actor-system capabilities, the wagate version, the protocol number, the layout
of every class that crosses a process boundary, and the Python minor version; a
leader places nothing on a host whose identity differs, and a member refuses a
leader whose identity differs (README: Deployment on several hosts).

Pure logic: no actor, Thespian or Flask import.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib
import sys
from collections.abc import Mapping
from typing import Any

from gateway.core.version import __version__

# Bump whenever a pickled class changes shape or meaning. ``LAYOUT`` records the shape
# this number stands for: a unit test fails when the classes change without a bump.
# Also bump when an actor class moves: a leader creates actors on its members by the
# class's module path (3: the actors moved into supervisor/, session/, outbox/, audit/;
# 4: message states are the MessageState enum, which Accepted and ListMessages carry,
# and SendText lost wait_for_ack, which every sender left True; 5: the event log (ListEvents,
# EventPage, Event, events.* in Config, the event counters in OutboxMetrics) and incoming
# messages (IncomingReceived, ListIncoming, IncomingPage, MarkRead, ReadIncoming,
# messages.incoming_retention_hours, opt_out_keywords and max_incoming_text_chars in the
# configuration, IncomingReceived.truncated) and webhooks ([webhooks] in Config,
# WebhookCommand).
# The dashboard's message chart: ChartMessageStates, StateBucket; fenced stops: SessionsFenced;
# GetMessageByKey; the lease keys in ClusterConfig (cluster.lease_*, cluster.database_url).
# Media messages: MediaSpec (in SendText, Deliver, IncomingReceived), OpenMedia, [media]
# in Config, the media counters in OutboxMetrics. simulator.idle_check_seconds in Config.
# Writes held for disk space: OutboxMetrics.held_writes and held_lost; HandedBack
# and OutboxReady (outbox -> supervisor). AuditBatch (web -> audit actor), audit.batch_seconds.
# SessionStatus.store_unsaved (a session's encrypted checkpoint failing).
# Held writes acknowledged: origin and seq in DeliveryReceipt and IncomingReceived,
# ReceivedCommitted (outbox -> session), ResendReceived (supervisor -> session),
# ReceivedUnkept and SessionMetrics.received_unkept, delivery.received_resend_seconds and
# delivery.max_unacknowledged_received.
# The sent journal: cluster.journal_retention_hours in Config.
# Fenced store writes: StoreWriteFenced (session -> supervisor) and
# SessionMetrics.store_writes_fenced.
# Lease-mode fenced stops: LeaseFenced (host's lease check -> supervisor) and
# RetireSession.fenced.
# Shared media files: storage.media_dir in Config.
# The watchdog of hung processes: supervisor.hang_seconds in Config.
PROTOCOL = 5
LAYOUT = "b7b410217ad8e6ba"

# The modules whose classes travel between hosts (messages, and what they carry).
PICKLED_MODULES = ("actors.messages", "actors.metrics", "actors.outbox.events",
                   "gateway.core.config")

VERSION_CAPABILITY = "wagate_version"
PROTOCOL_CAPABILITY = "wagate_protocol"
LAYOUT_CAPABILITY = "wagate_layout"
PYTHON_CAPABILITY = "wagate_python"
IDENTITY_KEYS = (VERSION_CAPABILITY, PROTOCOL_CAPABILITY, LAYOUT_CAPABILITY,
                 PYTHON_CAPABILITY)
MAX_SHOWN = 32  # characters of one advertised value in a description


def describe_class(cls: type) -> str | None:
    """One line for a class whose instances may be pickled: its name and, in order,
    what pickle relies on (dataclass fields by position, enum member values)."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    if dataclasses.is_dataclass(cls):
        return f"{name}({','.join(f.name for f in dataclasses.fields(cls))})"
    if isinstance(cls, enum.EnumMeta):
        members: list[enum.Enum] = list(cls)
        return f"{name}[{','.join(f'{m.name}={m.value!r}' for m in members)}]"
    return None


def layout_of(modules: tuple[str, ...] = PICKLED_MODULES) -> str:
    """A short digest of the pickled classes defined in ``modules``: equal on two hosts
    exactly when their classes line up field by field."""
    lines = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module_name:
                line = describe_class(value)
                if line is not None:
                    lines.append(line)
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


@functools.cache
def identity() -> dict[str, Any]:
    """This host's identity, as advertised in its capabilities (plain, picklable
    values: capabilities cross hosts before any check can run)."""
    return {VERSION_CAPABILITY: __version__, PROTOCOL_CAPABILITY: PROTOCOL,
            LAYOUT_CAPABILITY: layout_of(),
            PYTHON_CAPABILITY: f"{sys.version_info[0]}.{sys.version_info[1]}"}


def describe(capabilities: Mapping[str, Any]) -> str:
    """``wagate 0.1.0 (protocol 1, layout a49c08e2..., Python 3.11)``, or what is missing
    (each value cut short: it comes from another host and goes to logs and health)."""
    if not any(key in capabilities for key in IDENTITY_KEYS):
        return "a wagate that advertises no version (older than protocol 1)"

    def value(key: str) -> str:
        return str(capabilities.get(key, "?"))[:MAX_SHOWN]

    return (f"wagate {value(VERSION_CAPABILITY)} (protocol {value(PROTOCOL_CAPABILITY)}, "
            f"layout {value(LAYOUT_CAPABILITY)}, Python {value(PYTHON_CAPABILITY)})")


def incompatibility(theirs: Mapping[str, Any], ours: Mapping[str, Any] | None = None
                    ) -> str | None:
    """Why a host advertising ``theirs`` may not share actors with this one, or None
    when every identity key is equal. Missing keys never match (an older wagate)."""
    ours = identity() if ours is None else ours
    if all(key in theirs and theirs[key] == ours[key] for key in IDENTITY_KEYS):
        return None
    return f"it runs {describe(theirs)}, this host runs {describe(ours)}"


def compatible(capabilities: Mapping[str, Any]) -> bool:
    return incompatibility(capabilities) is None
