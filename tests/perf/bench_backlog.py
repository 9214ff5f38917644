"""Backlog benchmark: what a 100 000 (or 1 000 000) message queue costs durable delivery.

Why it exists: the outbox keeps every accepted message in SQLite (``MessageStore``)
so that a long WhatsApp outage can pile up a large backlog on disk instead of in
memory, and so that the gateway keeps answering while it does. That design only
pays off if (a) accepting a send stays as fast with a full queue as with an empty
one, (b) the backlog drains quickly once the connection is back, and (c) the outbox
process does not grow with the backlog. Those are the targets, measured through the
whole stack (a real ``wagate serve`` with the simulator engine) and printed as
PASS/FAIL, never asserted (issue 17's figures):

* enqueue latency (``sendWhatsAppNotification`` while the session is RECONNECTING,
  so the answer ``true`` means "on disk") with each ``--backlog`` size (default
  100 000; issue 17 also asks for 1 000 000: ``--backlog 100000,1000000``): p50 and
  p99 within 1.5x of the same measurement with an empty queue;
* drain rate of the smallest backlog (the 100 000 of the target) to the simulator
  once the connection is back: >= 2000 messages/s over the whole drain (measured for
  at most ``--drain-cap`` seconds; beyond that the rate of that window and the
  projected total time are reported);
* RSS of the outbox process with each backlog within +10 MB of the empty-queue figure.

How: link a session, ``wagate sim drop --down-for 3600`` (the session keeps trying to
reconnect; sends are queued), measure N sequential sends, record the outbox's RSS.
Then for each backlog size, smallest first: stop the gateway, pre-fill the store up
to that size (``prefill``: sending 100 000 messages over HTTP would take minutes on 2
cores and measure the API, which bench_api already does), start the gateway again
(same data dir: the session resumes, still in the outage), measure the same sends and
the RSS again. After the first size, ``wagate sim restore`` + ``whatsAppConnect`` and
watch ``/admin/health`` ``queue.depth`` fall; if more sizes follow, ``sim drop``
starts the outage again and the next pre-fill adds what is missing. All RSS figures
are taken at the same point of a fresh outbox process's life (start-up + the same
warm-up and measured sends), so the only difference is the backlog.

The sends are sequential on one keep-alive connection: the question is the cost of
one enqueue, not throughput. The client is bench_api's raw-socket one, so the
figures are comparable with that benchmark's. CPU of every gateway process and of
the whole machine is sampled from /proc over each measured window: on 2 cores a
drain that misses its target is explained by where the CPU went (CPU ms per drained
message, per process), and ``other`` shows when something else on the machine
disturbed the figures.

As in production (and in bench_api), the gateway has a token file and a storage key
(``tests.integration.harness.Gateway``), and every measured send carries the
least-privilege ``sender`` token of bench_api (``bench_token``): the enqueue latency
includes the token check and the audit entry each send writes. After the run the
audit log must hold one ``ok`` entry per send answered ``true``.

Run: ``python -m tests.perf.bench_backlog`` (``--help`` for knobs), or
``pytest tests/perf/test_bench_backlog.py -s``. Exits 0 whatever the figures; only a
benchmark that could not run fails. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actors.outbox.events import new_event_id
from actors.outbox.store import MessageStore, NewMessage, new_message_id
from actors.transport.simulator import SimulatorServer
from gateway.core.config import HttpConfig, SimulatorConfig
from tests.integration.harness import Gateway, wait_for
from tests.perf.bench_api import (
    BENCH_SESSION,
    BENCH_TOKEN_NAME,
    PACING_OFF,
    RAISED_LIMIT,
    SEND_TEXT,
    Connection,
    audited_sends,
    bench_token,
    build_payloads,
    call,
    cpu_seconds,
    label_actor_group,
    label_web_group,
    machine_busy,
    recipients,
)

SESSION = BENCH_SESSION  # the only session the load's token may use
RAISED_QUEUE = 10_000_000  # delivery.max_queue_per_session: every backlog + sends must fit
OUTAGE_SECONDS = 3600  # longer than the benchmark: only ``sim restore`` ends it
# Reconnect attempts keep failing for the whole outage; the session must stay
# RECONNECTING (sends queue) instead of giving up and going FAILED (sends refused).
RECONNECT = {"attempts": 1_000_000, "delay_seconds": 1.0, "connect_timeout_seconds": 5.0}
PREFILL_BATCH = 50_000  # messages per pre-fill transaction
PREFILL_CACHE_KIB = 256 * 1024  # the pre-fill connection's page cache (this process only)
DRAIN_POLL_SECONDS = 0.25

TARGET_LATENCY_RATIO = 1.5
TARGET_DRAIN_RATE = 2000.0  # messages/s (issue 17; it was 1000)
DEFAULT_BACKLOGS = (100_000,)
TARGET_RSS_GROWTH_MB = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    backlogs: tuple[int, ...]  # ascending queue depths, each measured; the first drained
    requests: int  # measured sequential sends per latency phase
    warmup: int  # unmeasured sends before each latency phase (same in both)
    drain_cap: float  # seconds the drain is watched at most
    workers: int
    threads: int
    recipients: int  # distinct phone numbers the sends cycle through


# --------------------------------------------------------------------------- helpers


class CpuWindow:
    """CPU used by each labelled process, and by the whole machine, between ``start``
    and ``stop``. On a 2-core box the split is the bottleneck answer, and ``other``
    (machine CPU not used by the gateway or this script) says whether something else
    running on the machine disturbed the figures."""

    def __init__(self, labels: dict[int, str]) -> None:
        self.labels = labels
        self.cpu: dict[str, float] = {}  # label -> CPU seconds in the window
        self.busy = float("nan")  # machine cores in use during the window
        self.seconds = 0.0
        self._before: dict[int, float | None] = {}
        self._busy_before = (0.0, 0.0)
        self._began = 0.0

    def start(self) -> None:
        self._before = {pid: cpu_seconds(pid) for pid in self.labels}
        self._busy_before = machine_busy()
        self._began = time.monotonic()

    def stop(self) -> None:
        after = {pid: cpu_seconds(pid) for pid in self.labels}
        busy_after = machine_busy()
        self.seconds = time.monotonic() - self._began
        for pid, label in self.labels.items():
            b, a = self._before.get(pid), after.get(pid)
            if b is not None and a is not None:
                self.cpu[label] = self.cpu.get(label, 0.0) + a - b
        jiffies = busy_after[1] - self._busy_before[1]
        if jiffies:
            self.busy = ((busy_after[0] - self._busy_before[0]) / jiffies
                         * (os.cpu_count() or 1))

    @property
    def ours(self) -> float:
        """Cores used by the gateway and this script."""
        return sum(self.cpu.values()) / self.seconds if self.seconds else float("nan")

    @property
    def other(self) -> float:
        """Cores used by everything else on the machine."""
        return self.busy - self.ours

    def shares(self) -> str:
        parts = sorted(self.cpu.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{label} {100 * sec / self.seconds:.0f}" for label, sec in parts
                         if self.seconds and 100 * sec / self.seconds >= 0.5)


def gateway_labels(gateway: Gateway) -> dict[int, str]:
    """Every process of the running gateway, named, plus this script (the client).

    bench_api's actor naming goes by the data_dir folders a process holds open; the
    outbox and the session are named from ``/admin/health`` on top of it (the
    authoritative pids)."""
    state = gateway.run_state() or {}
    labels = {**label_web_group(int(state["web_pgid"]), "gw"),
              **label_actor_group(int(state["actor_pgid"]), gateway.data_dir)}
    document = health(gateway)
    labels[int(document["processes"]["outbox"])] = "gw outbox actor"
    for entry in document["sessions"]:
        if entry["pid"]:
            labels[int(entry["pid"])] = f"gw session actor ({entry['session']})"
    labels[os.getpid()] = "client (this script)"
    return labels


@dataclass(slots=True)
class LatencyPhase:
    """One sequential latency measurement and what the gateway looked like after it."""

    name: str
    depth_before: int
    backlog: int = 0  # the queue depth this phase was set up with (0: empty queue)
    depth_after: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, sorted
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    warm_ok: int = 0
    warm_errors: int = 0
    window: CpuWindow | None = None  # the measured sends
    rss_kb: int = 0  # outbox VmRSS after the sends
    hwm_kb: int = 0  # outbox VmHWM (peak RSS) after the sends

    def pct(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds (nan without data)."""
        if not self.latencies:
            return float("nan")
        rank = max(1, int(-(-q * len(self.latencies) // 100)))
        return self.latencies[rank - 1] * 1000


@dataclass(slots=True)
class Drain:
    depth_start: int = 0  # queue depth when the session reported CONNECTED
    depth_end: int = 0
    reconnect_seconds: float = float("nan")  # ``sim restore`` -> session CONNECTED
    seconds: float = 0.0  # CONNECTED -> empty queue (or the cap)
    finished: bool = False
    inbox: int | None = None
    audited: int | None = None  # audit log: 'ok' send entries of the load's token
    window: CpuWindow | None = None
    rss_end_kb: int = 0
    hwm_end_kb: int = 0

    @property
    def drained(self) -> int:
        return self.depth_start - self.depth_end

    @property
    def rate(self) -> float:
        return self.drained / self.seconds if self.seconds > 0 else float("nan")


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM); 0 if the process is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def health(gateway: Gateway) -> dict[str, Any]:
    document = gateway.health()
    assert "queue" in document, f"/admin/health answered {document!r}"
    return document


def queue_depth(gateway: Gateway) -> int:
    return int(health(gateway)["queue"]["depth"])


def session_state(document: dict[str, Any]) -> str | None:
    for entry in document["sessions"]:
        if entry["session"] == SESSION:
            return str(entry["state"])
    return None


def gateway_overrides(settings: Settings) -> dict[str, Any]:
    """The harness' fast config with production HTTP sizing and simulator polling (as in
    bench_api), limits and queue bound raised, and a session that keeps reconnecting."""
    return {
        "http": {"workers": settings.workers, "threads": settings.threads},
        "simulator": {"poll_interval_seconds": SimulatorConfig().poll_interval_seconds},
        "limits": {"per_number_per_minute": RAISED_LIMIT, "per_number_per_hour": RAISED_LIMIT,
                   "global_per_day": RAISED_LIMIT},
        "delivery": {"max_queue_per_session": RAISED_QUEUE},
        "reconnect": RECONNECT,
        "pacing": PACING_OFF,
    }


def measure_latency(name: str, gateway: Gateway, settings: Settings,
                    payloads: list[bytes], backlog: int = 0) -> LatencyPhase:
    """``warmup`` then ``requests`` sequential sends on one keep-alive connection; each
    must answer exactly ``true``. The connection is closed before returning (an open
    keep-alive connection would delay gunicorn's graceful stop)."""
    phase = LatencyPhase(name, depth_before=queue_depth(gateway), backlog=backlog)
    window = phase.window = CpuWindow(gateway_labels(gateway))
    conn = Connection(gateway.port)
    try:
        conn.connect()
        for i in range(settings.warmup):
            error = call(conn, payloads[i % len(payloads)], "send")
            phase.warm_ok += error is None
            phase.warm_errors += error is not None
        window.start()
        for i in range(settings.warmup, settings.warmup + settings.requests):
            began = time.perf_counter()
            error = call(conn, payloads[i % len(payloads)], "send")
            elapsed = time.perf_counter() - began
            if error is None:
                phase.latencies.append(elapsed)
            else:
                phase.errors += 1
                if len(phase.samples) < 3:
                    phase.samples.append(error)
        window.stop()
    finally:
        conn.close()
    phase.latencies.sort()
    document = health(gateway)
    phase.depth_after = int(document["queue"]["depth"])
    pid = int(document["processes"]["outbox"])
    phase.rss_kb, phase.hwm_kb = proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")
    return phase


def prefill(data_dir: Path, count: int, numbers: list[str], first: int = 0) -> float:
    """Queue ``count`` messages for the session straight into the stopped gateway's store
    (numbered from ``first``, so a second pre-fill adds distinct messages) and return the
    seconds it took.

    The figure of interest is the gateway's behaviour with the backlog, not how fast it
    was built, and a 1 000 000-message backlog must not take many minutes to build: so
    each batch's first message is written by the outbox's own ``MessageStore.add`` (the
    record and its QUEUED event exactly as the gateway writes them) and the rest of the
    batch are copies of those two rows with their own ids, number and request id,
    inserted with ``executemany`` in the same transaction. Their ids (time-ordered, the
    queue's order) are 1 ms apart in message order, ending now: the backlog drains in
    the order it was numbered, before anything sent later. A large page cache and
    ``synchronous=OFF`` for this connection only (the gateway is stopped; the file is
    synced when it is closed) keep the index updates in memory.

    The messages carry the linked account and link epoch of the last message the
    gateway accepted for the session (the empty-queue phase's): at start the outbox fails
    every queued message of an earlier link (``_end_stale_queues``), which would empty
    a backlog written with the defaults.
    """
    began = time.perf_counter()
    id_base = time.time() - (first + count) / 1000  # message i's id time: id_base + i ms
    store = MessageStore(data_dir / "outbox")
    try:
        store.db.execute(f"PRAGMA cache_size=-{PREFILL_CACHE_KIB}")
        store.db.execute("PRAGMA synchronous=OFF")
        link = store.db.execute(
            "SELECT account, link_epoch FROM messages WHERE session = ? AND request_id NOT "
            "LIKE 'backlog-prefill-%' ORDER BY id DESC LIMIT 1", (SESSION,)).fetchone()
        if link is None:
            raise RuntimeError("no message accepted by the gateway to take the link from")
        template = NewMessage(session=SESSION, phone=numbers[0], text=SEND_TEXT,
                              account=link["account"], link_epoch=link["link_epoch"])
        for start in range(first, first + count, PREFILL_BATCH):
            end = min(first + count, start + PREFILL_BATCH)
            with store.batch():
                _prefill_batch(store, template, start, end, numbers, id_base)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return time.perf_counter() - began


def _prefill_batch(store: MessageStore, template: NewMessage, start: int, end: int,
                   numbers: list[str], id_base: float) -> None:
    """Messages ``start`` .. ``end - 1`` in the caller's transaction: the first, made from
    ``template``, through ``MessageStore.add``, the others as copies of its message and
    event rows."""
    now = time.time()
    record = store.add(replace(template, phone=numbers[start % len(numbers)],
                               request_id=f"backlog-prefill-{start}"), now)
    message = dict(store.db.execute("SELECT * FROM messages WHERE id = ?",
                                    (record["id"],)).fetchone())
    event = dict(store.db.execute("SELECT * FROM events WHERE seq = last_insert_rowid()")
                 .fetchone())
    del event["seq"]  # the log's cursor: each copy gets the next one
    data = json.loads(event["data"])
    assert data.get("message_id") == record["id"], f"unexpected event row {event!r}"
    messages, events = [], []
    for i in range(start + 1, end):
        message_id = new_message_id(id_base + i / 1000)
        messages.append({**message, "id": message_id, "phone": numbers[i % len(numbers)],
                         "request_id": f"backlog-prefill-{i}"})
        events.append({**event, "id": new_event_id(), "data": json.dumps(
            {**data, "message_id": message_id}, separators=(",", ":"), sort_keys=True)})
    for table, rows in (("messages", messages), ("events", events)):
        if rows:
            columns = list(rows[0])
            store.db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})", rows)


def watch_drain(gateway: Gateway, settings: Settings) -> Drain:
    """``sim restore`` + ``whatsAppConnect``, then poll ``/admin/health`` until the queue
    is empty or ``drain_cap`` seconds after the session reported CONNECTED, sampling
    the CPU of every gateway process over the same window."""
    drain = Drain()
    restored = time.monotonic()
    gateway.sim("restore")
    connect = gateway.connect(SESSION)  # a no-op while RECONNECTING: the next attempt links
    assert not connect.errors, connect
    while True:
        document = health(gateway)
        if session_state(document) == "CONNECTED":
            break
        if time.monotonic() - restored > 30:
            raise RuntimeError(f"session not CONNECTED 30 s after sim restore: {document}")
        time.sleep(0.02)
    # The window starts at the first health answer showing CONNECTED; the depth it
    # reports is the starting point (a few sends may already be under way).
    start = time.monotonic()
    drain.reconnect_seconds = start - restored
    drain.depth_start = int(document["queue"]["depth"])
    outbox = int(document["processes"]["outbox"])
    window = drain.window = CpuWindow(gateway_labels(gateway))
    window.start()
    session_pid = next((pid for pid, label in window.labels.items()
                        if label.startswith("gw session actor")), 0)
    print(f"  drain: {drain.depth_start:,} queued; outbox pid {outbox}, session pid "
          f"{session_pid} (attach a profiler now if wanted)", flush=True)
    depth = drain.depth_start
    last_report = start
    while depth > 0 and time.monotonic() - start < settings.drain_cap:
        time.sleep(DRAIN_POLL_SECONDS)
        depth = queue_depth(gateway)
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            print(f"    {last_report - start:5.1f} s: {depth:,} left", flush=True)
    drain.seconds = time.monotonic() - start
    window.stop()
    drain.depth_end, drain.finished = depth, depth == 0
    drain.rss_end_kb = proc_status_kb(outbox, "VmRSS")
    drain.hwm_end_kb = proc_status_kb(outbox, "VmHWM")
    return drain


def inbox_count(data_dir: Path) -> int:
    """Messages that reached the simulated recipients (read once, gateway stopped)."""
    server = SimulatorServer(data_dir)
    try:
        return len(server.inbox())
    finally:
        server.close()


# --------------------------------------------------------------------------- report


def _ms(value: float) -> str:
    return "    n/a" if value != value else f"{value:7.2f}"  # nan check


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def print_report(settings: Settings, phases: list[LatencyPhase], drain: Drain,
                 fill_notes: list[str], config_note: str) -> None:
    """The table: one latency row per phase (empty queue, then each backlog), the drain
    of the first backlog, the CPU split, then the targets as PASS/FAIL."""
    out = print
    width = 116
    empty, backlogs = phases[0], phases[1:]
    out()
    out("=" * width)
    out("wagate backlog benchmark (durable delivery)")
    out(f"machine: {os.cpu_count()} CPUs | {config_note}")
    for note in fill_notes:
        out(f"backlog {note}")
    out(f"latency: {settings.requests} sequential sendWhatsAppNotification on one keep-alive "
        f"connection after {settings.warmup} unmeasured; session RECONNECTING, so true = "
        "queued on disk")
    out("-" * width)
    out(f"{'phase':28} {'queue depth':>23} {'ok':>4} {'err':>3} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'cores':>5} {'other':>5} {'outbox RSS':>10} "
        f"{'peak':>7}")
    for p in phases:
        depth = f"{p.depth_before:,} -> {p.depth_after:,}"
        busy = p.window.busy if p.window else float("nan")
        other = p.window.other if p.window else float("nan")
        out(f"{p.name:28} {depth:>23} {len(p.latencies):4d} {p.errors:3d} {_ms(p.pct(50))} "
            f"{_ms(p.pct(95))} {_ms(p.pct(99))} {_ms(p.pct(100))} {busy:5.2f} {other:5.2f} "
            f"{p.rss_kb / 1024:7.1f} MB {p.hwm_kb / 1024:4.1f} MB")
    out("-" * width)
    state = ("drained" if drain.finished else
             f"stopped at the {settings.drain_cap:g} s cap, {drain.depth_end:,} left")
    out(f"drain of the {settings.backlogs[0]:,} backlog: sim restore -> CONNECTED in "
        f"{drain.reconnect_seconds:.2f} s; {drain.drained:,} of {drain.depth_start:,} messages "
        f"in {drain.seconds:.1f} s ({state}) = {drain.rate:,.0f} messages/s")
    if not drain.finished and drain.rate > 0:
        out(f"       projected time for all {drain.depth_start:,}: "
            f"{drain.depth_start / drain.rate:,.0f} s")
    window = drain.window
    if window is not None:
        out(f"       outbox RSS after the drain {drain.rss_end_kb / 1024:.1f} MB (peak "
            f"{drain.hwm_end_kb / 1024:.1f} MB); cores busy {window.busy:.2f} (gateway + "
            f"client {window.ours:.2f}, other {window.other:.2f})")
        out(f"       CPU during the drain, % of one core: {window.shares()}")
        per_message = ", ".join(
            f"{label.removeprefix('gw ')} {sec * 1000 / drain.drained:.2f}"
            for label, sec in sorted(window.cpu.items(), key=lambda kv: -kv[1])
            if drain.drained and sec * 1000 / drain.drained >= 0.01)
        out(f"       CPU ms per drained message: {per_message}")
    for p in phases:
        if p.window is not None:
            out(f"  CPU during '{p.name}', % of one core: {p.window.shares()}")
    out("-" * width)

    def line(label: str, value: str, target: str, passed: bool) -> None:
        out(f"{label:66} {value:>24} {target:>10}  {'PASS' if passed else 'FAIL'}")

    for p in backlogs:
        for q in (50, 99):
            ratio = _ratio(p.pct(q), empty.pct(q))
            line(f"enqueue p{q}, {p.backlog:,} backlog vs empty queue",
                 f"{p.pct(q):.2f} vs {empty.pct(q):.2f} ms = {ratio:.2f}x",
                 f"<= {TARGET_LATENCY_RATIO:g}x", ratio <= TARGET_LATENCY_RATIO)
    line(f"drain of the {settings.backlogs[0]:,} backlog to the simulator "
         f"({'whole drain' if drain.finished else 'capped'})",
         f"{drain.rate:,.0f} msg/s", f">= {TARGET_DRAIN_RATE:,.0f}/s",
         drain.rate >= TARGET_DRAIN_RATE)
    for p in backlogs:
        growth = (p.rss_kb - empty.rss_kb) / 1024
        line(f"outbox RSS, {p.backlog:,} backlog - empty queue", f"{growth:+.1f} MB",
             f"<= +{TARGET_RSS_GROWTH_MB:g} MB", growth <= TARGET_RSS_GROWTH_MB)
    sends = sum(len(p.latencies) + p.errors + p.warm_ok + p.warm_errors for p in phases)
    failed = sum(p.errors + p.warm_errors for p in phases)
    line("correctness: every send answered true (warm-up included)",
         f"{sends - failed}/{sends}", "all", failed == 0)
    line("correctness: audit log 'ok' send entries == sends answered true",
         f"{drain.audited}/{sends - failed}", "equal", drain.audited == sends - failed)
    line("correctness: simulator inbox == messages drained", f"{drain.inbox}/{drain.drained}",
         "equal" if drain.finished else ">=",
         drain.inbox is not None and (drain.inbox == drain.drained if drain.finished
                                      else drain.inbox >= drain.drained))
    for p in phases:
        if p.samples:
            out(f"  error samples ({p.name}): {p.samples}")
    out("=" * width)


# --------------------------------------------------------------------------- main


def start_in_outage(gateway: Gateway, backlog: int) -> None:
    """Start the stopped gateway on its data dir and wait until the session has resumed
    into the ongoing outage (RECONNECTING) and the outbox reports ``backlog`` queued. A
    store of a million messages takes longer to open than a small one, hence the
    generous deadlines."""
    gateway.start()
    wait_for(lambda: session_state(health(gateway)) == "RECONNECTING", 120, 0.1,
             "the restarted session to be RECONNECTING")
    wait_for(lambda: queue_depth(gateway) >= backlog, 120, 0.2,
             "the outbox to report the backlog")


def run(settings: Settings) -> int:
    """Empty queue; then for each backlog (ascending): gateway stopped, store pre-filled
    up to it, gateway restarted into the outage, the same sends measured. The first
    backlog is also drained (its size is the drain target's), after which the outage
    is started again for the next one; the larger ones are measured, not drained."""
    numbers = recipients(settings.recipients)
    phases: list[LatencyPhase] = []
    fill_notes: list[str] = []
    drain = Drain()
    with tempfile.TemporaryDirectory(prefix="wagate-backlog-") as tmp:
        root = Path(tmp)
        gateway = Gateway(root, gateway_overrides(settings))
        payloads = build_payloads("send", gateway.port, numbers, bench_token(gateway))
        try:
            print("gateway: starting wagate serve (simulator), linking a session, "
                  f"sim drop --down-for {OUTAGE_SECONDS} ...", flush=True)
            gateway.start()
            gateway.link(SESSION)
            gateway.sim("drop", "--session", SESSION, "--down-for", str(OUTAGE_SECONDS))
            gateway.wait_state("RECONNECTING", SESSION)
            print(f"  enqueue latency, empty queue ({settings.requests} sends) ...", flush=True)
            phases.append(measure_latency("enqueue, empty queue", gateway, settings, payloads))
            depth = phases[0].depth_after
            gateway.stop()
            numbered = 0  # pre-filled messages so far (they are numbered across fills)
            for index, backlog in enumerate(settings.backlogs):
                missing = backlog - depth
                print(f"  pre-filling {missing:,} messages (gateway stopped) ...", flush=True)
                seconds = prefill(gateway.data_dir, missing, numbers, first=numbered)
                numbered += missing
                fill_notes.append(
                    f"{backlog:,}: {missing:,} messages pre-filled into the stopped gateway's "
                    f"data dir in {seconds:.1f} s ({missing / seconds:,.0f}/s; + {depth:,} "
                    "already queued), then wagate serve restarted on it")
                print("gateway: restarting on the same data dir ...", flush=True)
                start_in_outage(gateway, backlog)
                print(f"  enqueue latency, {backlog:,} backlog ({settings.requests} sends) ...",
                      flush=True)
                phases.append(measure_latency(f"enqueue, {backlog:,} backlog", gateway,
                                              settings, payloads, backlog))
                if index == 0:
                    print(f"  drain: sim restore + whatsAppConnect, watching queue.depth (cap "
                          f"{settings.drain_cap:g} s) ...", flush=True)
                    drain = watch_drain(gateway, settings)
                    if len(settings.backlogs) > 1:  # the next backlog builds up in an outage
                        gateway.sim("drop", "--session", SESSION, "--down-for",
                                    str(OUTAGE_SECONDS))
                        gateway.wait_state("RECONNECTING", SESSION)
                depth = queue_depth(gateway)
                gateway.stop()
            drain.inbox = inbox_count(gateway.data_dir)
            drain.audited = audited_sends(gateway.data_dir)
        finally:
            leaked = gateway.cleanup()
            if leaked:
                print(f"gateway processes had to be killed: {leaked}", flush=True)
    config_note = (f"wagate serve, simulator engine, http workers={settings.workers} "
                   f"threads={settings.threads}, limits {RAISED_LIMIT:,}, "
                   f"max_queue_per_session {RAISED_QUEUE:,}, pacing off, synchronous NORMAL, "
                   "logging INFO, "
                   f"token file + storage key; sends use token {BENCH_TOKEN_NAME!r} (role "
                   "sender): token check + audit entry per send")
    print_report(settings, phases, drain, fill_notes, config_note)
    return 0


def parse_backlogs(text: str, sends: int) -> tuple[int, ...]:
    """``"100000,1000000"`` -> ``(100000, 1000000)``, sorted. Each must exceed what is
    queued before its pre-fill by a wide margin: the previous backlog (or the empty
    phase) plus ``sends`` (one phase's sends) - otherwise there is nothing to pre-fill -
    and fit under ``delivery.max_queue_per_session`` with the sends that follow."""
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values:
        raise ValueError("at least one backlog size is needed")
    previous = 0
    for value in values:
        if value < previous + 2 * sends:
            raise ValueError(f"{value:,} is too close to {previous:,}: each backlog must be at "
                             f"least {2 * sends:,} (twice the sends of a phase) above the last")
        previous = value
    if values[-1] + 10 * sends > RAISED_QUEUE:
        raise ValueError(f"{values[-1]:,} does not fit the raised queue bound "
                         f"({RAISED_QUEUE:,}) with the sends")
    return tuple(values)


def parse_args(argv: list[str] | None) -> Settings:
    defaults = HttpConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_backlog",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", default=",".join(map(str, DEFAULT_BACKLOGS)),
                        help="comma-separated queue depths, each measured with the same sends "
                             "(e.g. 100000,1000000); the smallest is also drained "
                             "(default %(default)s)")
    parser.add_argument("--requests", type=int, default=500,
                        help="measured sequential sends per latency phase")
    parser.add_argument("--warmup", type=int, default=50,
                        help="unmeasured sends before each latency phase")
    parser.add_argument("--drain-cap", type=float, default=120.0,
                        help="seconds the drain is watched at most")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="gunicorn workers (default: the product's)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="gunicorn threads per worker (default: the product's)")
    parser.add_argument("--recipients", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        backlogs = parse_backlogs(args.backlog, args.requests + args.warmup)
    except ValueError as exc:
        parser.error(f"--backlog: {exc}")
    return Settings(backlogs=backlogs, requests=args.requests, warmup=args.warmup,
                    drain_cap=args.drain_cap, workers=args.workers, threads=args.threads,
                    recipients=args.recipients)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
