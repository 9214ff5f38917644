"""Event pull benchmark: 10 000 events by cursor through ``whatsAppEvents`` over HTTP.

Why it exists: issue 14 asks that an application catching up on the event log can pull
10 000 events, page by page with the largest ``first`` (500), in at most 1 s in total
over real HTTP through ``wagate serve``. Each page is one GraphQL request: token check,
a ``ListEvents`` round trip web tier -> supervisor -> outbox (a SQLite read of 500 rows
and their JSON), the answer pickled back and serialised. The *floor* is the same number
of requests of a bare GraphQL query (``query { noop }``) to ``tests/perf/noop_app.py``
under the same gunicorn settings: what 20 round trips cost on this machine whatever the
work behind them.

How: ``wagate serve`` (simulator, one linked session, limits raised, pacing off, as in
``bench_api``); sends fill the log (each makes a QUEUED and a SENT event) until it holds
the events wanted; then one keep-alive connection, with ``bench_api``'s ``bench-sender``
token (role sender), pages from the oldest event with ``after: endCursor``, fields
``id type session timestamp data`` and each edge's cursor, until it has them all. The
time is wall time from the first request to the last answer parsed (client JSON
parsing included, one unmeasured request before it). The events must come exactly
once, in strictly increasing cursor order.

Run: ``python -m tests.perf.bench_events_pull`` (``--help`` for knobs). Exits 0 whatever
the figures; only a benchmark that could not run fails. Only 127.0.0.1 is contacted;
both servers are stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.outbox.events import decode_event_cursor
from gateway.auth.tokens import new_token
from gateway.core.config import HttpConfig
from tests.integration.harness import Gateway, wait_for
from tests.perf.bench_api import (
    HOST,
    RAISED_LIMIT,
    Connection,
    Settings,
    bench_token,
    floor_server,
    gateway_overrides,
)
from tests.perf.bench_backlog import CpuWindow, gateway_labels
from tests.perf.bench_webhooks import burst

TARGET_SECONDS = 1.0
PULL_QUERY = ("query($after: String, $first: Int) { whatsAppEvents(after: $after, "
              "first: $first) { edges { cursor node { id type session timestamp data } } "
              "pageInfo { endCursor hasNextPage } } }")
COUNT_QUERY = ("query($after: String) { whatsAppEvents(after: $after, first: 500) "
               "{ edges { cursor } pageInfo { endCursor hasNextPage } } }")
NOOP_QUERY = "query { noop }"


@dataclass(frozen=True, slots=True)
class PullSettings:
    events: int
    page: int
    workers: int
    threads: int


@dataclass(slots=True)
class Pull:
    seconds: float = float("nan")
    requests: int = 0
    events: int = 0
    bytes: int = 0
    ordered: bool = False
    cpu: str = ""
    other: float = float("nan")
    pages_ms: list[float] = field(default_factory=list)
    server_cpu: float = float("nan")  # seconds, every gateway process, during the pull


def request_bytes(port: int, token: str, query: str, variables: dict[str, Any]) -> bytes:
    raw = json.dumps({"query": query, "variables": variables}).encode()
    return (f"POST /graphql HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw


def answer(conn: Connection, payload: bytes) -> tuple[dict[str, Any], int]:
    """One request; its parsed ``data`` (anything but a clean 200 fails the run) and
    the body's size."""
    status, body = conn.request(payload)
    document = json.loads(body)
    if status != 200 or document.get("errors"):
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    return document["data"], len(body)


def floor_pull(port: int, requests: int) -> float:
    """Seconds for ``requests`` sequential ``query { noop }`` on one keep-alive
    connection (after one unmeasured request)."""
    payload = request_bytes(port, new_token(), NOOP_QUERY, {})
    conn = Connection(port)
    try:
        answer(conn, payload)
        began = time.perf_counter()
        for _ in range(requests):
            answer(conn, payload)
        return time.perf_counter() - began
    finally:
        conn.close()


def pull(port: int, token: str, settings: PullSettings) -> Pull:
    """Page from the oldest event until ``settings.events`` are in hand."""
    result = Pull()
    conn = Connection(port)
    seqs: list[int] = []
    ids: set[str] = set()
    try:
        answer(conn, request_bytes(port, token, PULL_QUERY, {"first": 1}))  # warm
        after: str | None = None
        began = time.perf_counter()
        while len(seqs) < settings.events:
            started = time.perf_counter()
            data, size = answer(conn, request_bytes(port, token, PULL_QUERY,
                                                    {"after": after, "first": settings.page}))
            page = data["whatsAppEvents"]
            result.requests += 1
            result.bytes += size
            result.pages_ms.append((time.perf_counter() - started) * 1000)
            for edge in page["edges"][:settings.events - len(seqs)]:
                seqs.append(decode_event_cursor(edge["cursor"]))
                ids.add(edge["node"]["id"])
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        result.seconds = time.perf_counter() - began
    finally:
        conn.close()
    result.events = len(seqs)
    result.ordered = (len(ids) == len(seqs)
                      and all(a < b for a, b in itertools.pairwise(seqs)))
    return result


def logged_events(gateway: Gateway) -> int:
    """How many events the log holds (counted by paging cursors only)."""
    count, after = 0, None
    while True:
        page = gateway.gql(COUNT_QUERY, {"after": after}).data["whatsAppEvents"]
        count += len(page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return count
        after = page["pageInfo"]["endCursor"]


def print_report(settings: PullSettings, floor: float, result: Pull, config: str) -> None:
    out = print
    out()
    out("=" * 100)
    out("wagate event pull benchmark")
    out(f"gateway: {config}")
    out("-" * 100)

    def line(label: str, value: str, target: str, passed: bool) -> None:
        out(f"{label:58} {value:>16} {target:>12}  {'PASS' if passed else 'FAIL'}")

    pages = sorted(result.pages_ms)
    out(f"floor: {result.requests} x query {{ noop }} on one keep-alive connection: "
        f"{floor * 1000:.0f} ms")
    line(f"pull {result.events} events, {result.requests} pages of {settings.page}",
         f"{result.seconds * 1000:.0f} ms", f"<= {TARGET_SECONDS * 1000:.0f} ms",
         result.seconds <= TARGET_SECONDS and result.events == settings.events)
    line("pull / floor", f"{result.seconds / floor:.1f}x" if floor else "n/a", "info", True)
    if pages:
        line("page latency p50 / max", f"{pages[len(pages) // 2]:.1f}/{pages[-1]:.1f} ms",
             "info", True)
    line("gateway CPU for the whole pull (all processes)", f"{result.server_cpu * 1000:.0f} ms",
         "info", True)
    line("bytes per event (JSON answer)", f"{result.bytes / max(1, result.events):.0f}",
         "info", True)
    line("correctness: every event once, cursors strictly increasing",
         "yes" if result.ordered else "no", "yes", result.ordered)
    out("-" * 100)
    out(f"CPU during the pull, % of one core: {result.cpu}")
    out(f"other processes on the machine: {result.other:.2f} cores (high: rerun)")
    out("=" * 100)


def run(settings: PullSettings) -> int:
    api = Settings(workers=settings.workers, threads=settings.threads, concurrency=0, procs=1,
                   warmup=0, duration=0, rate=0, open_duration=0, open_threads=0,
                   recipients=500)
    requests = -(-settings.events // settings.page)
    with tempfile.TemporaryDirectory(prefix="wagate-pull-") as tmp:
        root = Path(tmp)
        print(f"floor: {requests} x query {{ noop }} to the no-op app ...", flush=True)
        with floor_server(root, api) as (port, _):
            floor = floor_pull(port, requests)
        (root / "gateway").mkdir()
        gateway = Gateway(root / "gateway", gateway_overrides(api))
        token = bench_token(gateway)
        try:
            print("gateway: starting wagate serve (simulator, pacing off), linking a "
                  "session ...", flush=True)
            gateway.start()
            gateway.link()
            sends = -(-settings.events // 2)
            print(f"  {sends} sends to fill the event log ...", flush=True)
            burst(gateway, token, sends)
            wait_for(lambda: logged_events(gateway) >= settings.events, 120, 0.5,
                     f"{settings.events} events in the log")
            print(f"  pulling {settings.events} events ...", flush=True)
            window = CpuWindow(gateway_labels(gateway))
            window.start()
            result = pull(gateway.port, token, settings)
            window.stop()
            result.cpu, result.other = window.shares(), window.other
            result.server_cpu = sum(sec for label, sec in window.cpu.items()
                                    if label.startswith("gw"))
            gateway.stop()
        finally:
            leaked = gateway.cleanup()
            if leaked:
                print(f"gateway processes had to be killed: {leaked}", flush=True)
    config = (f"simulator engine, http workers={settings.workers} threads={settings.threads}, "
              f"limits {RAISED_LIMIT:,}, pacing off, token file + storage key; pulls use "
              "token 'bench-sender' (role sender)")
    print_report(settings, floor, result, config)
    return 0


def parse_args(argv: list[str] | None) -> PullSettings:
    defaults = HttpConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_events_pull",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=500, help="first: (1 to 500)")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    args = parser.parse_args(argv)
    return PullSettings(events=args.events, page=args.page, workers=args.workers,
                        threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
