"""Every simulated connection's up and down, and where two of one account overlapped.

The multi-host mode promises that one WhatsApp account is never connected from two
processes at once (issue 22); a test can only prove it if the service records every
connection. The simulator appends one record per event to ``connections.jsonl`` in
its server directory (``SimulatorServer.connection_records``); this module, pure, reads
those records and computes the overlaps exactly.

A record is an instant on the shared wall clock in nanoseconds (the tests' hosts are
network namespaces of one machine, so one clock; hosts on several machines would need
synchronised clocks for the maths to mean anything). A connection is one ``up`` to the
``down`` with the same ``conn`` id. A process that was killed writes no ``down``: its
connection counts as open until the instant the caller says it died (``died``, by
host and pid), else until ``until``, so a missing record can only show *more* overlap,
never hide one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["up", "down"]
ProcessId = tuple[str, int]  # (host, pid)


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One line of the log: ``kind`` of connection ``conn`` of ``account`` at ``at_ns``."""

    at_ns: int
    kind: Kind
    session: str
    account: str  # the linked phone number: what WhatsApp sees as one account
    host: str
    pid: int
    conn: str  # unique per connection (a process may connect and drop many times)

    def to_line(self) -> str:
        return json.dumps({"at_ns": self.at_ns, "kind": self.kind, "session": self.session,
                           "account": self.account, "host": self.host, "pid": self.pid,
                           "conn": self.conn}, separators=(",", ":")) + "\n"


@dataclass(frozen=True, slots=True)
class Interval:
    """One connection, from its ``up`` to its ``down`` (or its process's death)."""

    account: str
    process: ProcessId
    conn: str
    start_ns: int
    end_ns: int
    closed: bool  # a ``down`` was recorded (False: ended by ``died`` or ``until``)


@dataclass(frozen=True, slots=True)
class Overlap:
    """A stretch during which ``account`` had ``count`` connections at once."""

    account: str
    start_ns: int
    end_ns: int
    count: int
    processes: tuple[ProcessId, ...]

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def parse_records(text: str) -> list[ConnectionRecord]:
    """The records of a log's text, skipping a torn last line (a writer killed mid-write)."""
    records = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            records.append(ConnectionRecord(
                int(data["at_ns"]), _kind(data["kind"]), str(data["session"]),
                str(data["account"]), str(data["host"]), int(data["pid"]), str(data["conn"])))
        except (ValueError, KeyError, TypeError):
            continue
    return records


def _kind(value: object) -> Kind:
    if value == "up":
        return "up"
    if value == "down":
        return "down"
    raise ValueError(f"not a connection event: {value!r}")


def intervals(records: Iterable[ConnectionRecord], until_ns: int,
              died: Mapping[ProcessId, int] | None = None) -> list[Interval]:
    """Each connection's interval. An ``up`` without its ``down`` lasts until its
    process's death in ``died``, else until ``until_ns``."""
    died = died or {}
    ups: dict[str, ConnectionRecord] = {}
    downs: dict[str, int] = {}
    for record in records:
        if record.kind == "up":
            ups.setdefault(record.conn, record)
        else:
            downs[record.conn] = record.at_ns
    found = []
    for conn, up in ups.items():
        process = (up.host, up.pid)
        closed = conn in downs
        end = downs[conn] if closed else min(died.get(process, until_ns), until_ns)
        found.append(Interval(up.account, process, conn, up.at_ns, max(end, up.at_ns), closed))
    return sorted(found, key=lambda i: (i.account, i.start_ns, i.conn))


def overlaps(records: Iterable[ConnectionRecord], until_ns: int,
             died: Mapping[ProcessId, int] | None = None) -> list[Overlap]:
    """Every stretch of time with two or more connections of one account, by a sweep
    over the intervals' ends. Touching intervals (one ends the instant the next one
    starts) do not overlap."""
    by_account: dict[str, list[Interval]] = defaultdict(list)
    for interval in intervals(records, until_ns, died):
        by_account[interval.account].append(interval)
    found: list[Overlap] = []
    for account, spans in sorted(by_account.items()):
        found += _sweep(account, spans)
    return found


def _sweep(account: str, spans: list[Interval]) -> list[Overlap]:
    # At one instant ends sort before starts (0 < 1), so touching is not overlapping.
    events = sorted([(s.end_ns, 0, s) for s in spans] + [(s.start_ns, 1, s) for s in spans],
                    key=lambda e: (e[0], e[1]))
    open_now: dict[str, Interval] = {}
    found: list[Overlap] = []
    since = 0
    for at, is_start, span in events:
        if len(open_now) >= 2 and at > since:
            found.append(Overlap(account, since, at, len(open_now),
                                 tuple(sorted({s.process for s in open_now.values()}))))
        if is_start:
            open_now[span.conn] = span
        else:
            open_now.pop(span.conn, None)
        since = at
    return _merged(found)


def _merged(found: list[Overlap]) -> list[Overlap]:
    """Adjacent stretches (the count changed, say from 3 to 2) as one, with the most
    connections and every process seen."""
    merged: list[Overlap] = []
    for item in found:
        last = merged[-1] if merged else None
        if last is not None and last.end_ns == item.start_ns:
            merged[-1] = Overlap(item.account, last.start_ns, item.end_ns,
                                 max(last.count, item.count),
                                 tuple(sorted(set(last.processes) | set(item.processes))))
        else:
            merged.append(item)
    return merged


def total_overlap_seconds(found: Iterable[Overlap]) -> float:
    return sum(item.seconds for item in found)
