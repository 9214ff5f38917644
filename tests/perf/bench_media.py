"""Media benchmark: uploads through ``wagate serve`` (issue 15's figures).

Three measurements, each printed with PASS/FAIL against its target and beside a floor
measured in the same run on the same machine:

1. **Streaming.** The web worker's peak RSS (``VmHWM`` of the gunicorn worker, read
   from ``/proc``) must grow by less than 4 MB while a 64 MB DOCUMENT is uploaded: the
   file parts stream into the encrypted media store and are never whole in memory.
   Before it, a small upload warms the code paths (imports, the first buffers) so
   their one-time cost is not counted. Floor: the growth of an upload of 1 MB (what
   the request machinery costs whatever the size).
2. **Latency.** A 16 MB DOCUMENT upload is accepted (the answer of
   ``sendWhatsAppMedia``) in at most 1.5 s. Floor: storing the same 16 MB in this
   process with the media store itself (encrypt, fsync), i.e. what the gateway
   cannot do faster.
3. **Concurrency.** 100 uploads of 1 MB each at once (100 client threads): every one
   accepted, every one at the simulated recipient byte for byte (its SHA-256), none
   lost or doubled.

Run: ``python -m tests.perf.bench_media``. Exits 0 whatever the figures; only a
benchmark that could not run fails. Only 127.0.0.1 is contacted; the gateway is
stopped at the end and its temp directory removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests import media_fixtures as fx
from tests.integration.harness import Gateway, group_members, wait_for

MB = 1024 * 1024
RSS_LIMIT_MB = 4.0
LATENCY_LIMIT_SECONDS = 1.5
CONCURRENT = 100
SEND = """mutation($input: SendWhatsAppMediaInput!) { sendWhatsAppMedia(input: $input) {
  id media { sha256 size } } }"""


def document(size: int) -> bytes:
    head = fx.pdf()
    return head + os.urandom(size - len(head))


def upload(gateway: Gateway, data: bytes, phone: str = "+14155552671") -> dict[str, Any]:
    variables = {"input": {"phoneNumber": phone, "kind": "DOCUMENT", "file": None}}
    response = requests.post(
        gateway.url + "/graphql", timeout=120,
        headers={"Authorization": f"Bearer {gateway.token}"},
        files=[("operations", (None, json.dumps({"query": SEND, "variables": variables}))),
               ("map", (None, json.dumps({"0": ["variables.input.file"]}))),
               ("0", ("doc.pdf", data, "application/pdf"))])
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"upload refused: {response.status_code} {body}")
    return dict(body["data"]["sendWhatsAppMedia"])


def web_worker(gateway: Gateway) -> int:
    """The gunicorn worker (http.workers = 1): the web group's process with a parent
    in the group (the master's child)."""
    state = gateway.run_state() or {}
    group = int(state["web_pgid"])
    members = group_members(group)
    for pid in members:
        with open(f"/proc/{pid}/stat") as handle:
            parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        if parent in members:
            return pid
    raise RuntimeError(f"no worker in the web group {members}")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def row(label: str, value: str, target: str, passed: bool, floor: str) -> None:
    print(f"{label:44} {value:>12} {target:>10}  floor {floor:>12}  "
          f"{'PASS' if passed else 'FAIL'}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="wagate-bench-media-") as tmp:
        root = Path(tmp)
        gateway = Gateway(root, {
            "http": {"workers": 1, "threads": 8},
            "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                       "global_per_day": 100_000},
            "delivery": {"check_recipient": False},
            "simulator": {"server_dir": str(root / "servers")}})
        try:
            gateway.start()
            gateway.link()
            run(gateway, root)
            gateway.stop()
        finally:
            leftovers = gateway.cleanup()
            if leftovers:
                print("left behind:", leftovers, file=sys.stderr)
    return 0


def run(gateway: Gateway, root: Path) -> None:
    worker = web_worker(gateway)
    upload(gateway, document(256 * 1024))  # warm-up
    base = peak_rss_mb(worker)
    upload(gateway, document(MB))
    floor_growth = peak_rss_mb(worker) - base
    base = peak_rss_mb(worker)
    upload(gateway, document(64 * MB))
    growth = peak_rss_mb(worker) - base
    row("peak RSS growth of the worker, 64 MB upload", f"{growth:.2f} MB",
        f"< {RSS_LIMIT_MB:g} MB", growth < RSS_LIMIT_MB, f"{floor_growth:.2f} MB")

    from actors.media import store

    data = document(16 * MB)
    started = time.perf_counter()
    store.store_bytes(gateway.data_dir / "media", data + b"floor")
    floor = time.perf_counter() - started
    started = time.perf_counter()
    upload(gateway, data)
    took = time.perf_counter() - started
    row("16 MB upload accepted", f"{took:.3f} s", f"<= {LATENCY_LIMIT_SECONDS:g} s",
        took <= LATENCY_LIMIT_SECONDS, f"{floor:.3f} s")

    files = [document(MB) for _ in range(CONCURRENT)]
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda d: upload(gateway, d, "+14155552672"), files))
    took = time.perf_counter() - started
    wanted = {hashlib.sha256(d).hexdigest() for d in files}
    accepted = {a["media"]["sha256"] for a in answers}

    def arrived() -> set[str] | None:
        found = {m.get("sha256") for m in gateway.inbox()} & wanted
        return found if found == wanted else None

    try:
        wait_for(arrived, 120, 0.5, "every upload at the recipient")
        delivered = wanted
    except AssertionError:
        delivered = {m.get("sha256") for m in gateway.inbox()} & wanted
    doubled = sum(m.get("sha256") in wanted for m in gateway.inbox()) - len(delivered)
    ok = accepted == wanted and delivered == wanted and doubled == 0
    row(f"{CONCURRENT} concurrent 1 MB uploads", f"{len(delivered)}/{CONCURRENT}",
        "all, once", ok, f"{took:.1f} s wall")


if __name__ == "__main__":
    sys.exit(main())
