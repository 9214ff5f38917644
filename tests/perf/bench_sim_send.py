"""Simulator send benchmark: the CPU one simulated send costs its session process.

Why it exists: issue 17 measured the session process at 4.3 ms of CPU per send under
load, and the simulator's own disk work (15-18 diskcache operations per send) was the
largest part of it that is not Thespian's. A test double that costs that much makes
every benchmark of the gateway measure the double. This isolates that part: the
transport alone, no actors, no HTTP, so the figure does not depend on what else runs.

How: a ``SimulatorTransport`` paired against a fresh server directory, then ``--count``
texts sent one by one (``send_text``, as a worker thread did), then the same count in
batches (``send_texts``, as the session now does per ``DeliverBatch``). The figure is
the process's CPU time (user + system, every thread, the connection's poller included)
per message. The floor is one bare ``diskcache.Deque.append`` per message in the same
run: what a durable append costs at all.

Run: ``python -m tests.perf.bench_sim_send`` (``--count``, ``--batch``). Exits 0
whatever the figures. Nothing leaves the machine; the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diskcache

from actors.transport.base import Connected, QrCode
from actors.transport.simulator import SimulatorServer, SimulatorTransport
from gateway.core.config import QrConfig, SimulatorConfig
from tests.unit.sim_helpers import EventLog

RECIPIENT = "4915112345678"
TARGET_MS = 1.0  # issue 17 (this session's brief): the session's CPU per send


def cpu_ms_per(count: int, work: Callable[[], None]) -> float:
    """CPU milliseconds of the whole process per item while ``work`` runs."""
    started = time.process_time()
    work()
    return 1000 * (time.process_time() - started) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per figure")
    parser.add_argument("--batch", type=int, default=16, help="messages per send_texts")
    args = parser.parse_args(argv)
    count, size = args.count, args.batch
    with tempfile.TemporaryDirectory(prefix="wagate-simsend-") as tmp:
        root = Path(tmp)
        floor = diskcache.Deque(directory=str(root / "floor"))
        floor_ms = cpu_ms_per(count, lambda: [floor.append({"n": n}) for n in range(count)])
        floor.cache.close()
        server = SimulatorServer(root)
        transport = SimulatorTransport("bench", root, QrConfig(), SimulatorConfig())
        try:
            log = EventLog()
            transport.connect(log)
            log.wait_count(QrCode, timeout=30)
            server.scan("bench")
            log.wait_count(Connected, timeout=30)
            one_ms = cpu_ms_per(count, lambda: [transport.send_text(RECIPIENT, f"one {n}")
                                                for n in range(count)])
            batches = [[(RECIPIENT, f"batch {b}-{n}") for n in range(size)]
                       for b in range(count // size)]
            batch_ms = cpu_ms_per(size * len(batches),
                                  lambda: [transport.send_texts(b) for b in batches])
            landed = len(server.inbox())
        finally:
            transport.close()
            server.close()
    print(f"floor: one diskcache Deque.append       {floor_ms:6.3f} ms CPU per message")
    print(f"send_text, one by one                   {one_ms:6.3f} ms CPU per message")
    print(f"send_texts, batches of {size:<3}              {batch_ms:6.3f} ms CPU per message")
    print(f"inbox holds {landed} of {count + size * len(batches)} sent")
    verdict = "PASS" if batch_ms <= TARGET_MS else "FAIL"
    print(f"{verdict}: batched simulated send {batch_ms:.3f} ms <= {TARGET_MS} ms "
          f"({batch_ms / floor_ms:.1f}x the floor)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
