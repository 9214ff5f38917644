"""API benchmark: the gateway's GraphQL throughput and latency against a framework floor.

Why it exists: the gateway answers over gunicorn + Flask + Ariadne and then makes an
actor round trip (web worker -> supervisor -> limiter -> outbox -> session ->
simulated WhatsApp -> outbox -> web worker), each hop a Thespian message between
processes. To know whether the gateway part is cheap
enough, it is measured against a *floor*: a bare Flask + Ariadne app with no-op
resolvers, served by the same gunicorn settings, loaded by the same generator on the
same machine. Targets (issue 17; printed as PASS/FAIL, never asserted):

* server CPU per ``sendWhatsAppNotification``, full path (auth, audit, durable accept,
  WhatsApp ack), in the closed-loop send window: <= 3.5 ms;
* ``sendWhatsAppNotification`` throughput >= 35 % of the floor's no-op mutation, same run;
* ``sendWhatsAppNotification`` p99 <= 15 ms at 100 requests/s (open loop) in *every*
  one of ``--open-runs`` (5) separate open-loop windows: one lucky window proves
  little when a run-to-run spread of 16-39 ms has been seen;
* ``whatsAppStatus`` throughput >= 70 % of the floor's no-op query.

How cost grows with work is printed too (no target): CPU per send, throughput and
latency with 1, 5 and 50 concurrent closed-loop clients (``--clients``). A cost per
send that rises with the clients points at contention (a busy actor, a lock, the
GIL of one worker); one that falls, at batching or fixed per-window costs.

Each operation gets (a) a closed loop: C keep-alive connections, each sending its
next request as soon as the previous answer arrived, for a warm-up then a measured
window -> max throughput and its latencies; (b) an open loop: requests *scheduled*
at a fixed rate, each latency measured from its scheduled start, so a stalled server
shows up in the percentiles instead of silently slowing the generator down
(coordinated omission).

The generator is deliberately cheap: pre-serialised HTTP/1.1 requests written to a
raw socket and a minimal Content-Length response parser, in several processes with
threads. On a 2-core box every CPU-millisecond the client burns is taken from the
server, so http.client/requests would understate both systems; the same generator is
used for floor and gateway so the ratio stays fair. CPU used by every process (server
and client) is sampled from /proc during each measured window and printed, because
on a small box "where did the cores go" is the bottleneck answer.

Authentication is part of what is measured: the gateway runs as in production, with a
token file and a storage key (``tests.integration.harness.Gateway`` sets both up), and
the load carries ``Authorization: Bearer`` with a least-privilege token (role
``sender``, session ``default``, networks ``127.0.0.0/8``, an expiry) made for the
benchmark. So every gateway request pays the token check (a ``stat`` of the token
file, one SHA-256, a constant-time compare with every stored hash, the network and
session checks) and every ``sendWhatsAppNotification`` an audit entry (one ``tell`` to
the audit actor, one line appended to the hash-chained log). The floor has no
authentication; its requests carry a token of the same length, unchecked, so both
servers parse the same bytes. The difference is therefore gateway *including* auth
and audit, and after the run the audit log must hold one ``ok`` entry per successful
send.

Run: ``python -m tests.perf.bench_api`` (``--help`` for knobs), or
``pytest tests/perf -s``. Exits 0 whatever the figures; only a benchmark that could
not run fails. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import phonenumbers

from actors.audit.log import audit_dir, log_files
from actors.transport.simulator import SimulatorServer
from gateway.auth.tokens import new_token
from gateway.core.config import AuditConfig, HttpConfig, SimulatorConfig
from tests.integration.harness import Gateway, free_port, wait_for

HOST = "127.0.0.1"
RAISED_LIMIT = 10_000_000  # rate limits out of the way: this measures the path, not the policy
# Ban-risk pacing off (the simulator's default, spelled out): a paced session sends one
# message per second or so, which would measure the policy, not the gateway.
PACING_OFF = {"min_interval_seconds": 0.0, "jitter_seconds": 0.0, "typing_seconds": 0.0,
              "warmup_days": 0.0}
SOCKET_TIMEOUT = 30.0  # > send + ask timeouts of the harness config: slow, not hung

# Issue 17's targets (printed as PASS/FAIL against the floor of the same run).
TARGET_SEND_CPU_MS = 3.5  # server CPU per send, closed loop, all server processes
TARGET_SEND_RATIO = 0.35  # send throughput / floor mutation throughput
TARGET_OPEN_P99_MS = 15.0  # send p99 at --rate, open loop, in every one of --open-runs
TARGET_STATUS_RATIO = 0.70  # whatsAppStatus throughput / floor query throughput
DEFAULT_CLIENTS = (1, 5, 50)  # the growth table's closed-loop client counts

SEND_MUTATION = ("mutation Send($phoneNumber: String!, $message: String!) { "
                 "sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message) }")
# The same send naming its session: a load spread over several sessions (bench_cluster).
SEND_SESSION_MUTATION = (
    "mutation Send($phoneNumber: String!, $message: String!, $session: String) { "
    "sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message, "
    "session: $session) }")
STATUS_QUERY = "query { whatsAppStatus { connected qrCode qrCodeSvg } }"
NOOP_MUTATION = "mutation { noop }"
NOOP_QUERY = "query { noop }"
SEND_TEXT = "wagate benchmark: your code is 123456"
# The load's API token: what a production client holds (README, "API tokens").
BENCH_TOKEN_NAME = "bench-sender"
BENCH_SESSION = "default"

# kind -> (GraphQL document, what a correct answer's "data" is)
OPERATIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "noop_mutation": (NOOP_MUTATION, lambda data: data == {"noop": True}),
    "noop_query": (NOOP_QUERY, lambda data: data == {"noop": True}),
    "send": (SEND_MUTATION, lambda data: data == {"sendWhatsAppNotification": True}),
    "status": (STATUS_QUERY, lambda data: data == {"whatsAppStatus": {
        "connected": True, "qrCode": None, "qrCodeSvg": None}}),
}


@dataclass(frozen=True, slots=True)
class Settings:
    workers: int
    threads: int
    concurrency: int  # closed-loop connections in total
    procs: int  # closed-loop generator processes (connections are split among them)
    warmup: float
    duration: float
    rate: float  # open-loop requests per second
    open_duration: float
    open_threads: int  # open-loop connections (one process): the most in flight at once
    recipients: int  # distinct phone numbers the sends cycle through
    open_runs: int = 5  # separate open-loop send windows (the p99 target holds in each)
    clients: tuple[int, ...] = DEFAULT_CLIENTS  # growth table: closed-loop clients per row
    # Sessions the sends name, in turn; () = none named (the token's "default")
    sessions: tuple[str, ...] = ()


def recipients(count: int) -> list[str]:
    """``count`` distinct +1415555XXXX numbers, each checked valid with phonenumbers
    (the gateway would reject an invalid one and the benchmark would measure errors)."""
    numbers = []
    for n in range(10_000):
        raw = f"+1415555{n:04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(raw)):
            numbers.append(raw)
            if len(numbers) == count:
                return numbers
    raise RuntimeError(f"only {len(numbers)} valid +1415555XXXX numbers, {count} wanted")


def bench_token(gateway: Gateway) -> str:
    """Add the load's token to ``gateway``'s token file and return it: role ``sender``
    (may send and read the status, nothing else), one session, loopback only, expiring
    in a day, like ``wagate token create --role sender --sessions default --networks
    ... --expires ...``. The harness' admin token stays for setup and health checks."""
    return gateway.make_token("sender", sessions=[BENCH_SESSION], networks=["127.0.0.0/8"],
                              expires=time.time() + 86400, name=BENCH_TOKEN_NAME)


def audited_sends(data_dir: Path, actor: str = BENCH_TOKEN_NAME) -> int:
    """``mutation`` entries of the audit log for sends by ``actor`` with outcome ``ok``
    (read after the gateway stopped: its audit actor has written everything by then)."""
    count = 0
    for _, path in log_files(audit_dir(data_dir)):
        with open(path, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    count += (entry.get("event") == "mutation"
                              and entry.get("operation") == "sendWhatsAppNotification"
                              and entry.get("actor") == actor
                              and entry.get("outcome") == "ok")
    return count


def build_payloads(kind: str, port: int, numbers: list[str], token: str,
                   sessions: tuple[str, ...] = ()) -> list[bytes]:
    """Complete HTTP requests, serialised once: the hot loop only writes bytes. Each
    carries ``Authorization: Bearer <token>`` (the floor gets one too and ignores it).
    ``sessions``: sends name these sessions in turn (one per recipient), so that a load
    spreads over them; none named, each send goes to the default session."""
    document = OPERATIONS[kind][0]
    bodies: list[dict[str, Any]]
    if kind == "send" and sessions:
        bodies = [{"query": SEND_SESSION_MUTATION,
                   "variables": {"phoneNumber": n, "message": SEND_TEXT,
                                 "session": sessions[i % len(sessions)]}}
                  for i, n in enumerate(numbers)]
    elif kind == "send":
        bodies = [{"query": document, "variables": {"phoneNumber": n, "message": SEND_TEXT}}
                  for n in numbers]
    else:
        bodies = [{"query": document, "variables": {}}]
    payloads = []
    for body in bodies:
        raw = json.dumps(body).encode()
        head = (f"POST /graphql HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n")
        payloads.append(head.encode() + raw)
    return payloads


# --------------------------------------------------------------------------- client


class ProtocolError(Exception):
    """A response this minimal client does not understand (counted as an error)."""


class Connection:
    """One keep-alive HTTP/1.1 connection with just enough parsing for JSON answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def connect(self) -> None:
        self.close()
        sock = socket.create_connection((HOST, self.port), timeout=SOCKET_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.buf.clear()

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def request(self, payload: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(payload)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[:end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise ProtocolError("chunked responses are not supported by this client")
        if length is None:
            raise ProtocolError("response without Content-Length")
        while len(self.buf) < length:
            self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        if close:
            self.close()
        return status, body


def call(conn: Connection, payload: bytes, kind: str) -> str | None:
    """One request; None when the answer is exactly the expected one, else why not."""
    try:
        status, body = conn.request(payload)
    except (OSError, ValueError, ProtocolError) as exc:
        conn.close()  # reconnect on the next request
        return f"transport: {exc!r}"
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        document = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if document.get("errors") or not OPERATIONS[kind][1](document.get("data")):
        return f"unexpected answer: {body[:300]!r}"
    return None


@dataclass(slots=True)
class ThreadStats:
    latencies: list[float] = field(default_factory=list)  # seconds, measured requests only
    errors: int = 0  # measured requests only
    total_ok: int = 0  # every request, warm-up included (for the inbox check)
    total_errors: int = 0
    samples: list[str] = field(default_factory=list)
    max_lag: float = 0.0  # open loop: how late a request started after its schedule

    def record(self, error: str | None, latency: float, measured: bool) -> None:
        if error is None:
            self.total_ok += 1
        else:
            self.total_errors += 1
            if len(self.samples) < 3:
                self.samples.append(error)
        if measured:
            if error is None:
                self.latencies.append(latency)
            else:
                self.errors += 1


def _closed_loop(conn: Connection, payloads: list[bytes], kind: str, first: int, step: int,
                 start: float, warm_end: float, end: float, stats: ThreadStats) -> None:
    """Send back to back; count what *completes* inside [warm_end, end)."""
    _sleep_until(start)
    for i in itertools.count(first, step):
        if time.perf_counter() >= end:
            return
        began = time.perf_counter()
        error = call(conn, payloads[i % len(payloads)], kind)
        done = time.perf_counter()
        stats.record(error, done - began, warm_end <= done < end)


def _open_loop(conn: Connection, payloads: list[bytes], kind: str, schedule: Iterator[int],
               total: int, start: float, rate: float, stats: ThreadStats) -> None:
    """Take the next slot of a shared schedule; latency counts from the slot's time, so
    waiting for a free connection (server too slow) is part of the measured latency."""
    for i in schedule:
        if i >= total:
            return
        due = start + i / rate
        _sleep_until(due)
        stats.max_lag = max(stats.max_lag, time.perf_counter() - due)
        error = call(conn, payloads[i % len(payloads)], kind)
        stats.record(error, time.perf_counter() - due, True)


def _sleep_until(moment: float) -> None:
    while (left := moment - time.perf_counter()) > 0:
        time.sleep(left)


def load_process(spec: dict[str, Any], ready: Any, go: Any, start_at: Any, results: Any) -> None:
    """One generator process (multiprocessing target): open the connections, report
    ready, wait for the common start time, run the threads, report the figures."""
    kind, port, threads = spec["kind"], spec["port"], spec["threads"]
    payloads = build_payloads(kind, port, recipients(spec["recipients"]), spec["token"],
                              tuple(spec.get("sessions", ())))
    conns = [Connection(port) for _ in range(threads)]
    for conn in conns:
        conn.connect()  # the TCP handshake is not part of any measured request
    ready.put(spec["index"])
    go.wait()
    start = time.perf_counter() + (start_at.value - time.time())  # wall clock -> perf_counter
    stats = [ThreadStats() for _ in range(threads)]
    workers: list[threading.Thread] = []
    if spec["mode"] == "closed":
        warm_end = start + spec["warmup"]
        end = warm_end + spec["duration"]
        for t, conn in enumerate(conns):
            first = spec["first_thread"] + t  # distinct recipients across all threads
            workers.append(threading.Thread(target=_closed_loop, args=(
                conn, payloads, kind, first, spec["all_threads"], start, warm_end, end,
                stats[t])))
    else:
        schedule = itertools.count()  # next() on it is atomic under the GIL
        total = round(spec["rate"] * spec["duration"])
        for t, conn in enumerate(conns):
            workers.append(threading.Thread(target=_open_loop, args=(
                conn, payloads, kind, schedule, total, start, spec["rate"], stats[t])))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for conn in conns:
        conn.close()
    results.put({
        "index": spec["index"],
        "latencies": [x for s in stats for x in s.latencies],
        "errors": sum(s.errors for s in stats),
        "total_ok": sum(s.total_ok for s in stats),
        "total_errors": sum(s.total_errors for s in stats),
        "samples": [x for s in stats for x in s.samples][:5],
        "max_lag": max(s.max_lag for s in stats),
    })


# --------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3 onwards), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return sorted(members)


def cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def connections_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """How many established client connections to ``port`` each of ``pids`` holds.

    gunicorn's gthread workers balance *connections*, not requests: with keep-alive,
    a worker that accepted more connections serves more requests on one GIL.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in itertools.islice(f, 1, None):
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    inodes.add(cols[9])
    counts = {}
    for pid in pids:
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    n += target.startswith("socket:[") and target[8:-1] in inodes
        counts[pid] = n
    return counts


def tcp_active_opens() -> int:
    """Machine-wide count of TCP connections opened so far (/proc/net/snmp).

    Keep-alive clients open none during a window, so the delta divided by the
    requests served is what the server side opens per request (loopback only here).
    """
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("ActiveOpens")])


def _open_dirs(pid: int, data_dir: Path) -> set[str]:
    """Which top-level data_dir folders a process holds files of (names the actor)."""
    dirs: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(str(data_dir) + "/"):
                    dirs.add(target[len(str(data_dir)) + 1:].split("/", 1)[0])
    return dirs


def label_web_group(pgid: int, prefix: str) -> dict[int, str]:
    """gunicorn: the group leader is the arbiter, every other member a worker."""
    labels = {}
    workers = 0
    for pid in group_members(pgid):
        if pid == pgid:
            labels[pid] = f"{prefix} gunicorn arbiter"
        else:
            workers += 1
            labels[pid] = f"{prefix} gunicorn worker {workers}"
    return labels


def label_actor_group(pgid: int, data_dir: Path) -> dict[int, str]:
    """Name the actor processes (all share one command line) by their position in the
    process tree and by the data_dir folders they hold open. Forked children inherit
    their parent's open files, hence the order of the checks."""
    members = group_members(pgid)
    parents = {pid: int(f[1]) for pid in members if (f := _stat_fields(pid))}
    labels = {}
    for pid in members:
        dirs = _open_dirs(pid, data_dir)
        if parents.get(pid) not in parents:
            name = "thespian admin"
        elif "outbox" in dirs:
            name = "outbox actor"  # the limiter lives in its process (it holds limits/)
        elif "audit" in dirs:
            name = "audit actor"
        elif "simulator" in dirs or "sessions" in dirs:
            name = "session actor"
        elif "webhooks" in dirs:
            name = "webhook actor"  # holds the endpoint store
        elif "state" in dirs:
            name = "supervisor actor"
        else:
            name = "thespian logger"
        labels[pid] = f"gw {name}"
    return labels


# --------------------------------------------------------------------------- one phase


@dataclass(slots=True)
class Phase:
    name: str
    kind: str
    mode: str  # "closed" or "open"
    window: float
    latencies: list[float]
    errors: int
    total_ok: int
    total_errors: int
    samples: list[str]
    max_lag: float
    cpu: dict[str, float]  # label -> CPU seconds used during the window
    busy: float  # machine CPU use during the window, in cores
    connections: dict[str, int]  # gunicorn worker label -> client connections it holds
    tcp_opens: int  # TCP connections opened on the machine during the window
    run: int = 0  # which of several windows of the same load (open-loop sends), 0 if one

    @property
    def mode_label(self) -> str:
        return f"{self.mode} {self.run}" if self.run else self.mode

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.window

    def pct(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds (nan without data)."""
        if not self.latencies:
            return float("nan")
        rank = max(1, int(-(-q * len(self.latencies) // 100)))
        return self.latencies[rank - 1] * 1000

    def server_cpu_ms(self) -> float:
        """Server CPU milliseconds per answered request (all server processes)."""
        served = self.ok + self.errors
        server = sum(v for k, v in self.cpu.items() if not k.startswith("client"))
        return server * 1000 / served if served else float("nan")

    def other_cores(self) -> float:
        """Cores used by processes outside the benchmark (others' tests, the launcher,
        this script's main process): a high figure means the window was disturbed."""
        return self.busy - sum(self.cpu.values()) / self.window

    def opens_per_request(self) -> float:
        served = self.ok + self.errors
        return self.tcp_opens / served if served else float("nan")


def wait_ready(ready: Any, procs: list[Any], timeout: float = 60.0) -> None:
    """Wait for every generator process to report its connections open; fail fast
    (instead of after the timeout) when one of them died."""
    deadline = time.monotonic() + timeout
    waiting = len(procs)
    while waiting:
        with contextlib.suppress(queue.Empty):
            ready.get(timeout=0.2)
            waiting -= 1
            continue
        dead = [p.name for p in procs if p.exitcode is not None]
        if dead:
            raise RuntimeError(f"load generator process(es) {dead} exited before starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"load generators not ready within {timeout:g} s")


def run_phase(name: str, kind: str, mode: str, port: int, token: str, settings: Settings,
              labeller: Callable[[], dict[int, str]]) -> Phase:
    """Run one closed- or open-loop load against ``port``; every process it starts is
    joined or killed before it returns."""
    ctx = mp.get_context("spawn")  # no inherited sockets, threads or handles
    ready, results = ctx.Queue(), ctx.Queue()
    go, start_at = ctx.Event(), ctx.Value("d", 0.0)
    if mode == "closed":
        split = [settings.concurrency // settings.procs + (i < settings.concurrency
                                                          % settings.procs)
                 for i in range(settings.procs)]
        split = [n for n in split if n]
        warmup, duration = settings.warmup, settings.duration
    else:
        split, warmup, duration = [settings.open_threads], 0.0, settings.open_duration
    specs = [{"index": i, "kind": kind, "port": port, "threads": n, "mode": mode,
              "first_thread": sum(split[:i]), "all_threads": sum(split),
              "warmup": warmup, "duration": duration, "rate": settings.rate,
              "recipients": settings.recipients, "token": token,
              "sessions": settings.sessions}
             for i, n in enumerate(split)]
    procs = [ctx.Process(target=load_process, args=(spec, ready, go, start_at, results),
                         name=f"bench-{kind}-{mode}-{i}", daemon=True)
             for i, spec in enumerate(specs)]
    try:
        for proc in procs:
            proc.start()
        wait_ready(ready, procs)
        labels = labeller()
        labels.update({p.pid: f"client {mode}-loop generator {i + 1}"
                       for i, p in enumerate(procs) if p.pid})
        start = time.time() + 0.2
        start_at.value = start
        go.set()
        window_start = start + warmup
        time.sleep(max(0.0, window_start - time.time()))
        before = {pid: cpu_seconds(pid) for pid in labels}
        busy_before, opens_before = machine_busy(), tcp_active_opens()
        time.sleep(max(0.0, window_start + duration / 2 - time.time()))
        workers = [pid for pid, label in labels.items() if "gunicorn worker" in label]
        connections = {labels[pid]: n
                       for pid, n in connections_by_process(port, workers).items()}
        time.sleep(max(0.0, window_start + duration - time.time()))
        after = {pid: cpu_seconds(pid) for pid in labels}
        busy_after, opens_after = machine_busy(), tcp_active_opens()
        collected = [results.get(timeout=SOCKET_TIMEOUT + 60) for _ in procs]
        for proc in procs:
            proc.join(10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    cpu: dict[str, float] = {}
    for pid, label in labels.items():
        b, a = before.get(pid), after.get(pid)
        if b is not None and a is not None:
            cpu[label] = cpu.get(label, 0.0) + a - b
    jiffies = busy_after[1] - busy_before[1]
    busy = ((busy_after[0] - busy_before[0]) / jiffies * (os.cpu_count() or 1)
            if jiffies else float("nan"))
    return Phase(
        name=name, kind=kind, mode=mode, window=duration,
        latencies=sorted(x for r in collected for x in r["latencies"]),
        errors=sum(r["errors"] for r in collected),
        total_ok=sum(r["total_ok"] for r in collected),
        total_errors=sum(r["total_errors"] for r in collected),
        samples=[x for r in collected for x in r["samples"]][:5],
        max_lag=max(r["max_lag"] for r in collected),
        cpu=cpu, busy=busy, connections=connections, tcp_opens=opens_after - opens_before)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def floor_server(root: Path, settings: Settings) -> Iterator[tuple[int, int]]:
    """The no-op app under gunicorn in its own process group; yields (port, pgid) and
    kills the whole group on the way out, whatever happened."""
    port = free_port()
    log = open(root / "floor.log", "ab")  # noqa: SIM115 (handed to the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.perf.noop_app", "--port", str(port),
         "--workers", str(settings.workers), "--threads", str(settings.threads)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    log.close()
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the floor server exited with {proc.returncode}: "
                                   + (root / "floor.log").read_text(errors="replace")[-2000:])
            with socket.socket() as s:
                return s.connect_ex((HOST, port)) == 0
        wait_for(listening, 30, 0.05, f"the floor server on port {port}")
        # gunicorn listens before its workers are up: wait until all of them are.
        wait_for(lambda: len(group_members(proc.pid)) >= settings.workers + 1, 30, 0.05,
                 "the floor's gunicorn workers")
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        deadline = time.monotonic() + 5
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def gateway_overrides(settings: Settings) -> dict[str, Any]:
    """The harness' fast test config, with production HTTP sizing and the product's
    default simulator poll interval, and limits raised so no send is refused."""
    return {
        "http": {"workers": settings.workers, "threads": settings.threads},
        "simulator": {"poll_interval_seconds": SimulatorConfig().poll_interval_seconds},
        "limits": {"per_number_per_minute": RAISED_LIMIT, "per_number_per_hour": RAISED_LIMIT,
                   "global_per_day": RAISED_LIMIT},
        "pacing": PACING_OFF,
        # The sends' recipient check stays on (the default): its lookups must not run
        # out of budget, or the benchmark would measure refused lookups instead.
        "numbers": {"per_session_per_minute": RAISED_LIMIT, "per_session_per_day": RAISED_LIMIT},
    }


def cached_check_cpu(root: Path, calls: int = 20_000) -> tuple[float, float]:
    """CPU (ms) one send spends on the recipient check when the answer is cached, with
    the check on and (for reference) the same work skipped; measured in this process
    on the gateway's own code and a real SQLite file: what ``delivery.check_recipient``
    adds to a send (target: at most 0.2 ms)."""
    from actors.outbox.numbers import Budget, check_numbers, open_cache

    cache = open_cache(root, 168.0, 24.0)
    numbers = [n.removeprefix("+") for n in recipients(50)]
    budget = Budget(RAISED_LIMIT, RAISED_LIMIT)

    def lookup(phones: list[str]) -> list[Any]:
        from actors.transport.base import NumberInfo
        return [NumberInfo(p, True, f"{p}@s.whatsapp.net") for p in phones]

    try:
        check_numbers(cache, "default", numbers, lookup, budget, 5.0, strict_budget=False)
        timings = []
        for checking in (True, False):
            started = time.process_time()
            for i in range(calls):
                if checking:
                    answer = check_numbers(cache, "default", [numbers[i % len(numbers)]],
                                           lookup, budget, 5.0, strict_budget=False)
                    assert answer[0].cached
            timings.append((time.process_time() - started) * 1000 / calls)
        return timings[0], timings[1]
    finally:
        cache.close()


# --------------------------------------------------------------------------- report


def _ms(value: float) -> str:
    return "    n/a" if value != value else f"{value:7.2f}"  # nan check


def top_server_processes(phase: Phase, count: int = 3) -> str:
    """The ``count`` server processes that used the most CPU in ``phase``, each with its
    CPU milliseconds per request served (the client generators are left out)."""
    served = phase.ok + phase.errors
    parts = sorted(((label, sec) for label, sec in phase.cpu.items()
                    if not label.startswith("client")), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{label.removeprefix('gw ')} {sec * 1000 / served:.2f}"
                     for label, sec in parts) if served else "n/a"


def print_growth(growth: dict[int, Phase]) -> None:
    """How the cost of a send grows with concurrent clients (issue 17: "track how cost
    grows with work"); no target, the trend is the figure."""
    out = print
    out("send cost by concurrent closed-loop clients (each row its own warm-up + window):")
    out(f"  {'clients':>7} {'req/s':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/send':>11} {'other':>5}  top 3 server processes, CPU ms/send")
    for clients, phase in growth.items():
        out(f"  {clients:7d} {phase.throughput:8.1f} {phase.errors:6d} {_ms(phase.pct(50))} "
            f"{_ms(phase.pct(99))} {phase.server_cpu_ms():11.2f} {phase.other_cores():5.2f}  "
            f"{top_server_processes(phase)}")


def print_report(settings: Settings, phases: dict[str, Phase], inbox: int | None,
                 audited: int | None, gateway_config: str,
                 check_cpu: tuple[float, float] | None = None,
                 growth: dict[int, Phase] | None = None) -> None:
    """The whole report; ``growth`` (clients -> closed-loop send phase) is printed as its
    own table and counted in the correctness lines (its sends reach the inbox too)."""
    growth = growth or {}
    out = print
    out()
    out("=" * 114)
    out("wagate API benchmark")
    out(f"machine: {os.cpu_count()} CPUs | gunicorn gthread workers={settings.workers} "
        f"threads={settings.threads} (floor and gateway alike)")
    out(f"closed loop: {settings.concurrency} keep-alive connections "
        f"({settings.procs} processes), {settings.warmup:g} s warm-up + "
        f"{settings.duration:g} s measured | open loop: {settings.rate:g} req/s for "
        f"{settings.open_duration:g} s over {settings.open_threads} connections, latency from "
        f"the scheduled start, {settings.open_runs} separate windows for the sends")
    out(f"gateway config: {gateway_config}")
    out(f"auth: gateway requests use token {BENCH_TOKEN_NAME!r} (role sender): token check "
        "per request, audit entry per send; the floor has no auth (its requests carry a "
        "token it ignores)")
    out("-" * 114)
    out(f"{'operation':34} {'mode':6} {'req/s':>8} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'srv CPU':>8} {'cores':>5} {'other':>5} {'TCP':>5}")
    out(f"{'':34} {'':6} {'':>8} {'':>6} {'':>7} {'':>7} {'':>7} {'':>7} {'ms/req':>8} "
        f"{'busy':>5} {'cores':>5} {'opens':>5}")
    for phase in phases.values():
        out(f"{phase.name:34} {phase.mode_label:6} {phase.throughput:8.1f} {phase.errors:6d} "
            f"{_ms(phase.pct(50))} {_ms(phase.pct(95))} {_ms(phase.pct(99))} "
            f"{_ms(phase.pct(100))} {phase.server_cpu_ms():8.2f} {phase.busy:5.2f} "
            f"{phase.other_cores():5.2f} {phase.opens_per_request():5.1f}")
    out("-" * 114)

    def ratio_line(label: str, value: str, target: str, passed: bool) -> None:
        out(f"{label:62} {value:>10} {target:>14}  {'PASS' if passed else 'FAIL'}")

    send, mut = phases["send-closed"].throughput, phases["noop_mutation-closed"].throughput
    status, query = phases["status-closed"].throughput, phases["noop_query-closed"].throughput
    cpu = phases["send-closed"].server_cpu_ms()
    ratio_line("server CPU per send, full path (closed loop)", f"{cpu:.2f} ms",
               f"<= {TARGET_SEND_CPU_MS:g} ms", cpu <= TARGET_SEND_CPU_MS)
    ratio_line("send throughput / floor mutation throughput",
               f"{send / mut:.1%}" if mut else "n/a", f">= {TARGET_SEND_RATIO:.0%}",
               bool(mut) and send / mut >= TARGET_SEND_RATIO)
    open_runs = [p for p in phases.values() if p.kind == "send" and p.mode == "open"]
    for phase in open_runs:
        p99 = phase.pct(99)
        ratio_line(f"send p99 at {settings.rate:g} req/s (open loop), run {phase.run} of "
                   f"{len(open_runs)}", f"{p99:.2f} ms", f"<= {TARGET_OPEN_P99_MS:g} ms",
                   p99 <= TARGET_OPEN_P99_MS)
    worst = max((p.pct(99) for p in open_runs), default=float("nan"))
    # nan (a run without one answer) compares false: such a run fails the target
    ratio_line(f"send p99 at {settings.rate:g} req/s: every one of {len(open_runs)} runs",
               f"{worst:.2f} ms", f"<= {TARGET_OPEN_P99_MS:g} ms",
               bool(open_runs) and all(p.pct(99) <= TARGET_OPEN_P99_MS for p in open_runs))
    ratio_line("whatsAppStatus throughput / floor query throughput",
               f"{status / query:.1%}" if query else "n/a", f">= {TARGET_STATUS_RATIO:.0%}",
               bool(query) and status / query >= TARGET_STATUS_RATIO)
    sends = [p for p in (*phases.values(), *growth.values()) if p.kind == "send"]
    ok = sum(p.total_ok for p in sends)
    failed = sum(p.total_errors for p in sends)
    ratio_line("correctness: every send answered true (warm-up included)",
               f"{ok}/{ok + failed}", "all", failed == 0)
    ratio_line("correctness: simulator inbox == successful sends",
               f"{inbox}/{ok}", "equal", inbox == ok)
    ratio_line("correctness: audit log 'ok' send entries == successful sends",
               f"{audited}/{ok}", "equal", audited == ok)
    for phase in (*phases.values(), *growth.values()):
        if phase.samples:
            out(f"  error samples ({phase.name}, {phase.mode_label}): {phase.samples}")
    out("-" * 114)
    out("CPU during each measured window, % of one core (sum over processes; "
        f"{os.cpu_count()} cores = {100 * (os.cpu_count() or 1)} %):")
    for phase in phases.values():
        parts = sorted(phase.cpu.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{label} {100 * sec / phase.window:.0f}" for label, sec in parts
                          if 100 * sec / phase.window >= 0.5)
        out(f"  {phase.name} [{phase.mode_label}]: {shown}")
        spread = ", ".join(f"{label.split('gunicorn ')[-1]} {n}"
                           for label, n in sorted(phase.connections.items()))
        lag = (f"; open-loop generator's worst start lag {phase.max_lag * 1000:.1f} ms"
               if phase.mode == "open" else "")
        out(f"      client connections per gunicorn worker: {spread}{lag}")
    if check_cpu is not None:
        on, off = check_cpu
        out(f"recipient check (cached answer), CPU per send: {on:.4f} ms with the check on, "
            f"{off:.4f} ms off: adds {on - off:.4f} ms (target <= 0.2 ms)")
    if growth:
        out("-" * 114)
        print_growth(growth)
    out("=" * 114)


# --------------------------------------------------------------------------- main


def gateway_phases(port: int, token: str, settings: Settings,
                   labeller: Callable[[], dict[int, str]]) -> dict[str, Phase]:
    """The gateway's rows of the main table: sends closed loop, then ``open_runs``
    separate open-loop send windows (each with its own generator processes), then
    ``whatsAppStatus`` closed and open loop."""
    phases: dict[str, Phase] = {}
    label = "gateway sendWhatsAppNotification"
    print(f"  {label} [closed loop] ...", flush=True)
    phases["send-closed"] = run_phase(label, "send", "closed", port, token, settings,
                                      labeller)
    for run_no in range(1, settings.open_runs + 1):
        print(f"  {label} [open loop, run {run_no} of {settings.open_runs}] ...", flush=True)
        phase = run_phase(label, "send", "open", port, token, settings, labeller)
        phase.run = run_no
        phases[f"send-open-{run_no}"] = phase
    label = "gateway whatsAppStatus"
    for mode in ("closed", "open"):
        print(f"  {label} [{mode} loop] ...", flush=True)
        phases[f"status-{mode}"] = run_phase(label, "status", mode, port, token, settings,
                                             labeller)
    return phases


def growth_phases(port: int, token: str, settings: Settings,
                  labeller: Callable[[], dict[int, str]]) -> dict[int, Phase]:
    """One closed-loop send phase per entry of ``settings.clients`` (that many
    keep-alive connections, over at most ``procs`` generator processes), each with the
    usual warm-up and window: the growth table."""
    growth: dict[int, Phase] = {}
    for clients in settings.clients:
        print(f"  gateway sendWhatsAppNotification [closed loop, {clients} clients] ...",
              flush=True)
        sized = replace(settings, concurrency=clients, procs=min(settings.procs, clients))
        growth[clients] = run_phase(f"gateway send, {clients} clients", "send", "closed",
                                    port, token, sized, labeller)
    return growth


def run(settings: Settings) -> int:
    phases: dict[str, Phase] = {}
    growth: dict[int, Phase] = {}
    inbox: int | None = None
    audited: int | None = None
    config = ""
    with tempfile.TemporaryDirectory(prefix="wagate-bench-") as tmp:
        root = Path(tmp)
        print(f"floor: gunicorn gthread workers={settings.workers} threads={settings.threads}",
              flush=True)
        floor_token = new_token()  # never checked: the floor has no auth
        with floor_server(root, settings) as (port, pgid):
            for kind, label in (("noop_mutation", "floor  mutation { noop }"),
                                ("noop_query", "floor  query { noop }")):
                for mode in ("closed", "open"):
                    print(f"  {label} [{mode} loop] ...", flush=True)
                    phases[f"{kind}-{mode}"] = run_phase(
                        label, kind, mode, port, floor_token, settings,
                        functools.partial(label_web_group, pgid, "floor"))
        (root / "gateway").mkdir()
        gateway = Gateway(root / "gateway", gateway_overrides(settings))
        token = bench_token(gateway)
        try:
            print("gateway: starting wagate serve (simulator, pacing off) and linking a "
                  "session ...", flush=True)
            gateway.start()
            gateway.link()
            state = gateway.run_state() or {}
            web_pgid, actor_pgid = int(state["web_pgid"]), int(state["actor_pgid"])

            def gateway_labels() -> dict[int, str]:
                return {**label_web_group(web_pgid, "gw"),
                        **label_actor_group(actor_pgid, gateway.data_dir),
                        **({gateway.process.pid: "gw launcher"} if gateway.process else {})}

            phases.update(gateway_phases(gateway.port, token, settings, gateway_labels))
            growth = growth_phases(gateway.port, token, settings, gateway_labels)
            ok = sum(p.total_ok for p in (*phases.values(), *growth.values())
                     if p.kind == "send")
            server = SimulatorServer(gateway.data_dir)
            try:
                # a send answered true is in the inbox already; allow stragglers of sends
                # the client gave up on, then report what is there
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: len(server.inbox()) >= ok, 5.0, 0.2, "the inbox")
                inbox = len(server.inbox())
            finally:
                server.close()
            config = (f"simulator engine, http workers={settings.workers} "
                      f"threads={settings.threads}, limits raised to {RAISED_LIMIT:,}, pacing off, "
                      f"{settings.recipients} distinct recipients, logging INFO (JSON) "
                      f"to serve.log, token file + storage key, audit recipients "
                      f"{AuditConfig().recipients}")
            gateway.stop()
            audited = audited_sends(gateway.data_dir)
        finally:
            leaked = gateway.cleanup()
            if leaked:
                print(f"gateway processes had to be killed: {leaked}", flush=True)
        check_cpu = cached_check_cpu(root)
    print_report(settings, phases, inbox, audited, config, check_cpu, growth)
    return 0


def parse_args(argv: list[str] | None) -> Settings:
    defaults = HttpConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_api",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="gunicorn workers, floor and gateway (default: the product's)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="gunicorn threads per worker (default: the product's)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="closed-loop connections")
    parser.add_argument("--procs", type=int, default=2, help="closed-loop generator processes")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s")
    parser.add_argument("--open-duration", type=float, default=10.0)
    parser.add_argument("--open-threads", type=int, default=16)
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--open-runs", type=int, default=5,
                        help="separate open-loop send windows; the p99 target must hold in "
                             "each (default 5)")
    parser.add_argument("--clients", default=",".join(map(str, DEFAULT_CLIENTS)),
                        help="comma-separated closed-loop client counts for the growth "
                             "table (default %(default)s; '' skips it)")
    args = parser.parse_args(argv)
    if args.open_runs < 1:
        parser.error("--open-runs must be at least 1")
    try:
        clients = parse_clients(args.clients)
    except ValueError as exc:
        parser.error(f"--clients: {exc}")
    return Settings(workers=args.workers, threads=args.threads, concurrency=args.concurrency,
                    procs=args.procs, warmup=args.warmup, duration=args.duration,
                    rate=args.rate, open_duration=args.open_duration,
                    open_threads=args.open_threads, recipients=args.recipients,
                    open_runs=args.open_runs, clients=clients)


def parse_clients(text: str) -> tuple[int, ...]:
    """``"1,5,50"`` -> ``(1, 5, 50)``; empty -> ``()`` (no growth table). Each count
    must be a positive integer: 0 clients would be an empty window."""
    counts = []
    for part in text.split(","):
        if not part.strip():
            continue
        count = int(part)  # ValueError names the bad part
        if count < 1:
            raise ValueError(f"client counts must be at least 1, not {count}")
        counts.append(count)
    return tuple(counts)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
