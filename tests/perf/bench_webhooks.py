"""Webhook benchmark: how fast the gateway delivers its event log to two endpoints.

Why it exists: issue 14 asks that events reach a local receiver at >= 500 events/s
sustained with two endpoints. The delivery loop makes one signed request at a time per
endpoint, on a kept-alive connection per endpoint (``actors/webhooks/client.Channels``), reads
the log from the outbox's SQLite file and moves the endpoint's cursor in its own store
after every 2xx. What that costs is measured against a *floor*: the same receiver fed
by a plain loop of httpx POSTs (one kept-alive connection, as the gateway's client) from
this process, i.e. what the machine can do for one sequential sender.

How: ``wagate serve`` (simulator, one linked session, limits raised, pacing off, as in
``bench_api``), two endpoints created with ``createWebhook`` and at once disabled with
``updateWebhook``; N sends make 2N events (QUEUED and SENT: the simulator sends no
receipts unless told); once the log holds them all, both endpoints are enabled and the
time until each receiver has every event is measured. The rate is the events received
by both receivers together divided by the wall time from the enable to the last one;
"sustained" is the rate between 10 % and 90 % of them (start-up and tail left out).
Every event id must arrive at each endpoint exactly once and in cursor order (compared
with ``whatsAppEvents`` over the same range), and a sample of the requests must verify
with the endpoint's secret (Standard Webhooks).

Run: ``python -m tests.perf.bench_webhooks`` (``--help`` for knobs). Exits 0 whatever
the figures; only a benchmark that could not run fails. Only 127.0.0.1 is contacted;
the gateway, the receivers and every thread started are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from actors.outbox.events import event_cursor
from actors.webhooks.client import Channels, post
from actors.webhooks.safety import Target
from gateway.core.config import HttpConfig
from tests.integration.harness import Gateway, wait_for
from tests.perf.bench_api import (
    RAISED_LIMIT,
    Connection,
    Settings,
    bench_token,
    build_payloads,
    call,
    gateway_overrides,
    recipients,
)
from tests.perf.bench_backlog import CpuWindow, gateway_labels
from tests.webhooks.receiver import Receiver

ENDPOINTS = 2
TARGET_RATE = 500.0  # events/s, both endpoints together (issue 14)
SEND_THREADS = 4  # connections the burst of sends is made over (not measured)
SAMPLE = 50  # requests per endpoint whose signature is verified
PAGE = 500  # whatsAppEvents' largest page
EVENTS_QUERY = ("query($after: String, $first: Int) { whatsAppEvents(after: $after, "
                "first: $first) { edges { node { id type } } pageInfo { endCursor "
                "hasNextPage } } }")
CREATE = ("mutation($u: String!) { createWebhook(url: $u, description: \"bench\") "
          "{ secret webhook { id cursor } } }")
ENABLE = "mutation($id: ID!, $on: Boolean) { updateWebhook(id: $id, enabled: $on) { id } }"


@dataclass(frozen=True, slots=True)
class BenchSettings:
    sends: int  # each makes two events (QUEUED, SENT)
    floor_requests: int
    deadline: float  # seconds the delivery may take at most before the run gives up
    idle: float  # seconds the webhook actor's CPU is sampled with nothing to deliver


@dataclass(slots=True)
class Endpoint:
    id: str
    secret: str
    cursor: int  # the log's head when it was created: it gets what comes after
    receiver: Receiver


@dataclass(slots=True)
class Delivery:
    events: int = 0  # expected per endpoint
    seconds: float = float("nan")  # enable -> last event at both receivers
    sustained: float = float("nan")  # events/s between 10 % and 90 % of all received
    in_order: dict[str, str] = field(default_factory=dict)  # endpoint -> verdict
    verified: int = 0
    sampled: int = 0
    cpu: str = ""
    other: float = float("nan")
    idle_cpu: float = float("nan")  # webhook actor, % of a core, every endpoint up to date
    cpu_per_event: float = float("nan")  # webhook actor CPU ms per event delivered

    @property
    def rate(self) -> float:
        return ENDPOINTS * self.events / self.seconds if self.seconds else float("nan")


# --------------------------------------------------------------------------- floor


def floor_rate(receiver: Receiver, requests: int, body: bytes) -> float:
    """POSTs per second one sequential httpx loop gets from ``receiver``: one
    kept-alive connection, as the gateway's webhook client holds per endpoint (with its
    client's TCP options and quick ACKs, so the receiver's Nagle delay is not counted)."""
    channels = Channels(10.0, 10.0)
    where = Target("http", "127.0.0.1", receiver.port, "/hook", "127.0.0.1")
    try:
        began = time.perf_counter()
        for i in range(requests):
            attempt = post(channels.get(where), where, {
                "content-type": "application/json", "webhook-id": f"evt_floor_{i}"}, body,
                timeout=10.0, max_bytes=4096)
            if attempt.status != 200:
                raise RuntimeError(f"floor request {i}: {attempt}")
        elapsed = time.perf_counter() - began
    finally:
        channels.close()
    receiver.wait_for(requests, 10)
    return requests / elapsed


# --------------------------------------------------------------------------- gateway


def burst(gateway: Gateway, token: str, count: int, threads: int = SEND_THREADS) -> int:
    """``count`` sends as fast as ``threads`` keep-alive connections make them (not a
    measurement: this only fills the event log); the number answered ``true``."""
    payloads = build_payloads("send", gateway.port, recipients(500), token)
    answered = [0] * threads
    errors: list[str] = []

    def sender(index: int) -> None:
        conn = Connection(gateway.port)
        try:
            for i in range(index, count, threads):
                error = call(conn, payloads[i % len(payloads)], "send")
                if error is None:
                    answered[index] += 1
                elif len(errors) < 3:
                    errors.append(error)
        finally:
            conn.close()

    workers = [threading.Thread(target=sender, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        print(f"  send errors (first {len(errors)}): {errors}", flush=True)
    return sum(answered)


def pull_events(gateway: Gateway, after_seq: int) -> list[dict[str, Any]]:
    """Every event after ``after_seq``, oldest first, as ``whatsAppEvents`` pages it."""
    nodes: list[dict[str, Any]] = []
    cursor: str | None = event_cursor(after_seq)
    while True:
        answer = gateway.gql(EVENTS_QUERY, {"after": cursor, "first": PAGE})
        assert not answer.errors, answer.errors
        page = answer.data["whatsAppEvents"]
        nodes.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        cursor = page["pageInfo"]["endCursor"]


def create_endpoints(gateway: Gateway, receivers: list[Receiver]) -> list[Endpoint]:
    """One endpoint per receiver through the API, each disabled at once: the burst
    piles up in the log and the measurement starts when they are enabled."""
    made = []
    for receiver in receivers:
        answer = gateway.gql(CREATE, {"u": receiver.url()})
        assert not answer.errors, answer.errors
        created = answer.data["createWebhook"]
        made.append(Endpoint(created["webhook"]["id"], created["secret"],
                             int(created["webhook"]["cursor"]), receiver))
        assert not gateway.gql(ENABLE, {"id": made[-1].id, "on": False}).errors
    return made


def measure_delivery(gateway: Gateway, endpoints: list[Endpoint], expected: list[str],
                     deadline: float) -> Delivery:
    """Enable every endpoint, wait until each receiver holds ``expected`` (failing at
    ``deadline``), then check order and a sample of signatures."""
    delivery = Delivery(events=len(expected))
    labels = gateway_labels(gateway)
    pids = [pid for pid, label in labels.items() if "webhook" in label]
    print(f"  webhook actor pid(s) {pids} (to profile: py-spy record -p PID)", flush=True)
    window = CpuWindow(labels)
    window.start()
    began = time.monotonic()
    for endpoint in endpoints:
        assert not gateway.gql(ENABLE, {"id": endpoint.id, "on": True}).errors
    for endpoint in endpoints:
        endpoint.receiver.wait_for(len(expected), max(1.0, began + deadline - time.monotonic()))
    window.stop()
    arrivals = sorted(r.at for e in endpoints for r in e.receiver.requests[:len(expected)])
    delivery.seconds = arrivals[-1] - began
    low, high = arrivals[len(arrivals) // 10], arrivals[len(arrivals) * 9 // 10]
    if high > low:
        delivery.sustained = (len(arrivals) * 9 // 10 - len(arrivals) // 10) / (high - low)
    delivery.cpu, delivery.other = window.shares(), window.other
    actor = sum(sec for label, sec in window.cpu.items() if "webhook" in label)
    delivery.cpu_per_event = actor * 1000 / (ENDPOINTS * len(expected)) if expected else 0.0
    for endpoint in endpoints:
        got = [r.headers.get("webhook-id") for r in endpoint.receiver.requests]
        delivery.in_order[endpoint.id] = ("exactly, in cursor order" if got == expected else
                                          f"{len(got)} received, not the {len(expected)} "
                                          "expected in order")
        requests = endpoint.receiver.requests
        sample = random.Random(7).sample(requests, min(SAMPLE, len(requests)))
        for request in sample:
            delivery.sampled += 1
            try:
                Webhook(endpoint.secret).verify(request.body, request.headers)
                delivery.verified += 1
            except Exception as exc:  # any refusal is a failed check
                print(f"  signature refused: {exc!r}", flush=True)
    return delivery


def idle_cpu(gateway: Gateway, seconds: float) -> float:
    """The webhook actor's CPU (% of one core) over ``seconds`` with nothing to
    deliver: what the loop's polling costs an idle gateway."""
    labels = {pid: label for pid, label in gateway_labels(gateway).items()
              if "webhook" in label}
    window = CpuWindow(labels)
    window.start()
    time.sleep(seconds)  # a measurement window, not a wait for something
    window.stop()
    return 100 * sum(window.cpu.values()) / window.seconds if window.seconds else float("nan")


def webhook_overrides() -> dict[str, Any]:
    """bench_api's gateway (production HTTP sizing, limits raised, pacing off) with the
    loopback receivers allowlisted."""
    http = HttpConfig()
    settings = Settings(workers=http.workers, threads=http.threads, concurrency=0, procs=1,
                        warmup=0, duration=0, rate=0, open_duration=0, open_threads=0,
                        recipients=500)
    return {**gateway_overrides(settings), "webhooks": {"allow_insecure": ["127.0.0.0/8"]}}


# --------------------------------------------------------------------------- report


def print_report(settings: BenchSettings, floor: float, delivery: Delivery, sent: int,
                 config: str) -> None:
    out = print
    out()
    out("=" * 100)
    out("wagate webhook delivery benchmark")
    out(f"gateway: {config}")
    out(f"burst: {settings.sends} sends ({sent} answered true) -> {delivery.events} events "
        f"per endpoint, delivered to {ENDPOINTS} endpoints after they are enabled")
    out("-" * 100)

    def line(label: str, value: str, target: str, passed: bool) -> None:
        out(f"{label:58} {value:>16} {target:>12}  {'PASS' if passed else 'FAIL'}")

    out(f"floor: one httpx loop, one kept-alive connection, {settings.floor_requests} "
        f"requests: {floor:.0f} req/s")
    line("events/s delivered, both endpoints (enable -> last)", f"{delivery.rate:.0f}",
         f">= {TARGET_RATE:.0f}", delivery.rate >= TARGET_RATE)
    line("events/s sustained (10 % -> 90 % of arrivals)", f"{delivery.sustained:.0f}",
         f">= {TARGET_RATE:.0f}", delivery.sustained >= TARGET_RATE)
    line("per endpoint (enable -> last)", f"{delivery.rate / ENDPOINTS:.0f}", "info", True)
    line("delivered / floor", f"{delivery.rate / floor:.1%}" if floor else "n/a", "info",
         True)
    for endpoint, verdict in delivery.in_order.items():
        line(f"correctness: every event id at {endpoint}", verdict[:16], "exactly",
             verdict.startswith("exactly"))
    line("correctness: sampled signatures verify", f"{delivery.verified}/{delivery.sampled}",
         "all", delivery.sampled > 0 and delivery.verified == delivery.sampled)
    out("-" * 100)
    out(f"CPU during the delivery, % of one core: {delivery.cpu}")
    line("webhook actor CPU per event delivered", f"{delivery.cpu_per_event:.2f} ms",
         "info", True)
    line(f"webhook actor CPU while idle (endpoints up to date), {settings.idle:g} s",
         f"{delivery.idle_cpu:.1f} %", "info", True)
    out(f"other processes on the machine: {delivery.other:.2f} cores (high: rerun)")
    out("=" * 100)


# --------------------------------------------------------------------------- main


def run(settings: BenchSettings) -> int:
    body = json.dumps({"type": "message.status", "timestamp": "2026-01-01T00:00:00.000000Z",
                       "data": {"message_id": "x" * 26, "state": "SENT"}}).encode()
    with tempfile.TemporaryDirectory(prefix="wagate-webhooks-") as tmp:
        root = Path(tmp)
        with Receiver() as floor_receiver:
            print(f"floor: {settings.floor_requests} httpx POSTs to a loopback receiver ...",
                  flush=True)
            floor = floor_rate(floor_receiver, settings.floor_requests, body)
        gateway = Gateway(root, webhook_overrides())
        token = bench_token(gateway)
        try:
            with Receiver() as first, Receiver() as second:
                print("gateway: starting wagate serve (simulator, pacing off), linking a "
                      "session, creating 2 endpoints (disabled) ...", flush=True)
                gateway.start()
                gateway.link()
                endpoints = create_endpoints(gateway, [first, second])
                assert endpoints[0].cursor == endpoints[1].cursor
                print(f"  {settings.sends} sends ...", flush=True)
                sent = burst(gateway, token, settings.sends)
                expected = wait_for(
                    lambda: (e := pull_events(gateway, endpoints[0].cursor))
                    and sum(n["type"] == "message.status" for n in e) >= 2 * sent and e,
                    120, 0.5, "every send's QUEUED and SENT event in the log")
                print(f"  enabling both endpoints: {len(expected)} events each ...", flush=True)
                delivery = measure_delivery(gateway, endpoints, [n["id"] for n in expected],
                                            settings.deadline)
                delivery.idle_cpu = idle_cpu(gateway, settings.idle)
                gateway.stop()
        finally:
            leaked = gateway.cleanup()
            if leaked:
                print(f"gateway processes had to be killed: {leaked}", flush=True)
    config = (f"simulator engine, limits {RAISED_LIMIT:,}, pacing off, http defaults, "
              "webhooks defaults (concurrency, batch_events), allow_insecure 127.0.0.0/8; "
              "receivers: tests/webhooks/receiver.py (ThreadingHTTPServer)")
    print_report(settings, floor, delivery, sent, config)
    return 0


def parse_args(argv: list[str] | None) -> BenchSettings:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_webhooks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=1000,
                        help="sends of the burst (two events each)")
    parser.add_argument("--floor-requests", type=int, default=2000)
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds the delivery may take before the run fails")
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds the idle webhook actor's CPU is sampled")
    args = parser.parse_args(argv)
    return BenchSettings(sends=args.sends, floor_requests=args.floor_requests,
                         deadline=args.deadline, idle=args.idle)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
