"""Backlog benchmark: what a 100 000-message queue costs the durable-delivery path.

Why it exists: the outbox keeps every accepted message in SQLite (``MessageStore``)
so that a long WhatsApp outage can pile up a large backlog on disk instead of in
memory, and so that the gateway keeps answering while it does. That design only
pays off if (a) accepting a send stays as fast with a full queue as with an empty
one, (b) the backlog drains quickly once the connection is back, and (c) the outbox
process does not grow with the backlog. Those are the targets, measured through the
whole stack (a real ``wagate serve`` with the simulator engine) and printed as
PASS/FAIL, never asserted:

* enqueue latency (``sendWhatsAppNotification`` while the session is RECONNECTING,
  so the answer ``true`` means "on disk") with a 100 000 backlog: p50 and p99 within
  1.5x of the same measurement with an empty queue;
* drain rate to the simulator once the connection is back: >= 1000 messages/s over
  the whole drain (measured for at most ``--drain-cap`` seconds; beyond that the rate
  of that window and the projected total time are reported);
* RSS of the outbox process with the backlog within +10 MB of the empty-queue figure.

How: link a session, ``wagate sim drop --down-for 3600`` (the session keeps trying to
reconnect; sends are queued), measure N sequential sends, record the outbox's RSS,
stop the gateway, pre-fill the store with ``MessageStore.add`` up to the backlog
(sending 100 000 messages over HTTP would take minutes on 2 cores and measure the
API, which bench_api already does), start the gateway again (same data dir: the
session resumes, still in the outage), measure the same sends and the RSS again,
then ``wagate sim restore`` + ``whatsAppConnect`` and watch ``/admin/health``
``queue.depth`` fall. Both RSS figures are taken at the same point of a fresh
outbox process's life (start-up + the same warm-up and measured sends), so the only
difference is the backlog.

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
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.outbox.store import MessageStore, NewMessage
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
RAISED_QUEUE = 1_000_000  # delivery.max_queue_per_session: the backlog must fit
OUTAGE_SECONDS = 3600  # longer than the benchmark: only ``sim restore`` ends it
# Reconnect attempts keep failing for the whole outage; the session must stay
# RECONNECTING (sends queue) instead of giving up and going FAILED (sends refused).
RECONNECT = {"attempts": 1_000_000, "delay_seconds": 1.0, "connect_timeout_seconds": 5.0}
PREFILL_BATCH = 5_000  # MessageStore.add calls per transaction while pre-filling
DRAIN_POLL_SECONDS = 0.25

TARGET_LATENCY_RATIO = 1.5
TARGET_DRAIN_RATE = 1000.0  # messages/s
TARGET_RSS_GROWTH_MB = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    backlog: int  # queued messages before the second latency measurement
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
                    payloads: list[bytes]) -> LatencyPhase:
    """``warmup`` then ``requests`` sequential sends on one keep-alive connection; each
    must answer exactly ``true``. The connection is closed before returning (an open
    keep-alive connection would delay gunicorn's graceful stop)."""
    phase = LatencyPhase(name, depth_before=queue_depth(gateway))
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


def prefill(data_dir: Path, count: int, numbers: list[str]) -> float:
    """Queue ``count`` messages for the session straight into the stopped gateway's store,
    with the outbox's own ``MessageStore.add`` (batched in transactions: the figure of
    interest is the gateway's behaviour with the backlog, not how fast it was built).
    Returns the seconds it took."""
    began = time.perf_counter()
    store = MessageStore(data_dir / "outbox")
    try:
        for first in range(0, count, PREFILL_BATCH):
            store.db.execute("BEGIN")
            for i in range(first, min(count, first + PREFILL_BATCH)):
                store.add(NewMessage(session=SESSION, phone=numbers[i % len(numbers)],
                                     text=SEND_TEXT, request_id=f"backlog-prefill-{i}"),
                          time.time())
            store.db.execute("COMMIT")
    finally:
        store.close()
    return time.perf_counter() - began


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
                 fill_note: str, config_note: str) -> None:
    out = print
    width = 112
    empty, backlog = phases
    out()
    out("=" * width)
    out("wagate backlog benchmark (durable delivery)")
    out(f"machine: {os.cpu_count()} CPUs | {config_note}")
    out(f"backlog: {fill_note}")
    out(f"latency: {settings.requests} sequential sendWhatsAppNotification on one keep-alive "
        f"connection after {settings.warmup} unmeasured; session RECONNECTING, so true = "
        "queued on disk")
    out("-" * width)
    out(f"{'phase':24} {'queue depth':>19} {'ok':>4} {'err':>3} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'cores':>5} {'other':>5} {'outbox RSS':>10} "
        f"{'peak':>7}")
    for p in phases:
        depth = f"{p.depth_before:,} -> {p.depth_after:,}"
        busy = p.window.busy if p.window else float("nan")
        other = p.window.other if p.window else float("nan")
        out(f"{p.name:24} {depth:>19} {len(p.latencies):4d} {p.errors:3d} {_ms(p.pct(50))} "
            f"{_ms(p.pct(95))} {_ms(p.pct(99))} {_ms(p.pct(100))} {busy:5.2f} {other:5.2f} "
            f"{p.rss_kb / 1024:7.1f} MB {p.hwm_kb / 1024:4.1f} MB")
    out("-" * width)
    state = ("drained" if drain.finished else
             f"stopped at the {settings.drain_cap:g} s cap, {drain.depth_end:,} left")
    out(f"drain: sim restore -> CONNECTED in {drain.reconnect_seconds:.2f} s; "
        f"{drain.drained:,} of {drain.depth_start:,} messages in {drain.seconds:.1f} s "
        f"({state}) = {drain.rate:,.0f} messages/s")
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
        out(f"{label:62} {value:>16} {target:>14}  {'PASS' if passed else 'FAIL'}")

    p50 = _ratio(backlog.pct(50), empty.pct(50))
    p99 = _ratio(backlog.pct(99), empty.pct(99))
    line("enqueue p50 with backlog / empty queue", f"{p50:.2f}x",
         f"<= {TARGET_LATENCY_RATIO:g}x", p50 <= TARGET_LATENCY_RATIO)
    line("enqueue p99 with backlog / empty queue", f"{p99:.2f}x",
         f"<= {TARGET_LATENCY_RATIO:g}x", p99 <= TARGET_LATENCY_RATIO)
    line(f"drain rate to the simulator ({'whole drain' if drain.finished else 'capped'})",
         f"{drain.rate:,.0f} msg/s", f">= {TARGET_DRAIN_RATE:,.0f}/s",
         drain.rate >= TARGET_DRAIN_RATE)
    growth = (backlog.rss_kb - empty.rss_kb) / 1024
    line("outbox RSS with backlog - empty queue", f"{growth:+.1f} MB",
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


def run(settings: Settings) -> int:
    numbers = recipients(settings.recipients)
    phases: list[LatencyPhase] = []
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
            gateway.stop()

            missing = settings.backlog - phases[0].depth_after
            print(f"  pre-filling {missing:,} messages with MessageStore.add (gateway "
                  "stopped) ...", flush=True)
            fill_seconds = prefill(gateway.data_dir, missing, numbers)
            fill_note = (f"{missing:,} messages pre-filled with MessageStore.add into the "
                         f"stopped gateway's data dir in {fill_seconds:.1f} s (+ "
                         f"{phases[0].depth_after:,} queued over HTTP), then wagate serve "
                         "restarted on the same data dir")
            print("gateway: restarting on the same data dir ...", flush=True)
            gateway.start()
            # The restarted session resumes and fails against the ongoing outage.
            wait_for(lambda: session_state(health(gateway)) == "RECONNECTING", 30, 0.1,
                     "the restarted session to be RECONNECTING")
            wait_for(lambda: queue_depth(gateway) >= settings.backlog, 30, 0.2,
                     "the outbox to report the backlog")
            print(f"  enqueue latency, {settings.backlog:,} backlog ({settings.requests} "
                  "sends) ...", flush=True)
            phases.append(measure_latency(f"enqueue, {settings.backlog:,} backlog",
                                          gateway, settings, payloads))
            print(f"  drain: sim restore + whatsAppConnect, watching queue.depth (cap "
                  f"{settings.drain_cap:g} s) ...", flush=True)
            drain = watch_drain(gateway, settings)
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
    print_report(settings, phases, drain, fill_note, config_note)
    return 0


def parse_args(argv: list[str] | None) -> Settings:
    defaults = HttpConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_backlog",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000,
                        help="queued messages for the second latency phase and the drain")
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
    if args.backlog < 2 * (args.requests + args.warmup):
        parser.error("--backlog must be well above the sends of the empty-queue phase")
    return Settings(backlog=args.backlog, requests=args.requests, warmup=args.warmup,
                    drain_cap=args.drain_cap, workers=args.workers, threads=args.threads,
                    recipients=args.recipients)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
