"""Start benchmark: ``wagate serve`` to five linked simulated sessions CONNECTED.

Why it exists: issue 17 asks that a gateway with five linked simulated sessions be back
in service (every session CONNECTED) at most 3 s after ``wagate serve`` starts: a
restart (an upgrade, a crash) is the moment an operator's queue waits.

How: ``wagate serve`` (simulator, the embedded defaults where the test harness shrinks
them: poll interval, web workers) links five sessions by QR and stops; then, ``--runs``
times, it is started again on the same data_dir and the time from the start of the
process to the first health answer showing every session CONNECTED is taken (health
polled every 20 ms once the harness saw the gateway ready, which it checks every
100 ms). The *floor* is the time from the start of a
bare ``python -c pass`` to its exit, measured the same way in the same run: what
starting any Python process costs on this machine.

Run: ``python -m tests.perf.bench_start`` (``--runs``). Exits 0 whatever the figures;
only a benchmark that could not run fails. Only 127.0.0.1 is contacted; every process
is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.harness import Gateway, wait_for

TARGET_SECONDS = 3.0
SESSIONS = 5


def floor_seconds(runs: int) -> float:
    """Median wall time of starting and ending a bare Python interpreter."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def all_connected(gw: Gateway) -> bool:
    try:
        sessions = gw.health().get("sessions", [])
    except Exception:  # not answering yet: still starting
        return False
    return sum(s.get("state") == "CONNECTED" for s in sessions) == SESSIONS


def start_times(gw: Gateway, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        gw.start(60)
        wait_for(lambda: all_connected(gw), 60, 0.02, "every session CONNECTED")
        times.append(time.monotonic() - started)
        gw.stop()
    return times


def run(runs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="wagate-start-") as tmp:
        gw = Gateway(Path(tmp), {"sessions": {"max_sessions": SESSIONS},
                                 "simulator": {"poll_interval_seconds": 0.05},
                                 "http": {"workers": 2, "threads": 8}})
        try:
            gw.start(60)
            for i in range(1, SESSIONS + 1):
                gw.link(f"start{i}")
            gw.stop()
            times = start_times(gw, runs)
        finally:
            gw.cleanup()
    floor = floor_seconds(runs)
    worst = max(times)
    print()
    print("=" * 88)
    print(f"wagate start: wagate serve -> {SESSIONS} linked simulated sessions CONNECTED, "
          f"{runs} runs")
    print("-" * 88)
    print(f"{'floor: python -c pass, median':58} {floor:8.3f} s")
    print(f"{'each run':58} " + ", ".join(f"{t:.2f}" for t in times) + " s")
    print(f"{'slowest run':58} {worst:8.2f} s   target <= {TARGET_SECONDS:g} s  "
          f"{'PASS' if worst <= TARGET_SECONDS else 'FAIL'}")
    print("=" * 88)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_start",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error(f"--runs is 1 to 100, not {args.runs}")
    return run(args.runs)


if __name__ == "__main__":
    sys.exit(main())
