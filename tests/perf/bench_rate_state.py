"""Rate-state benchmark: what keeping the rate windows in PostgreSQL costs a send.

Why it exists: in multi-host mode the outbox's rate windows live in PostgreSQL
(``actors.leases.rate_state``) so that a standby leader continues them (issue 22).
``Limits.check`` writes the recipient's and the global window on every admitted send,
in the outbox's one thread: its cost bounds the leader's sends per second. This
measures that call alone, in this process, on each state:

- ``diskcache``: the single-host state in a temporary directory (as ``data_dir/limits``);
- ``postgresql, fsync off``: the tests' throwaway cluster (``tests/pg.py``);
- ``postgresql, fsync on``: the same with the server's defaults for durability, as in
  production (``synchronous_commit = on`` is set by every connection of ours anyway);
  each admitted send then waits for one WAL flush on this machine's disk.

Each run: ``--sends`` checks, closed loop, over ``--recipients`` recipients (their
windows stay in memory after the first read, as in the outbox), limits raised so every
check is admitted and written. Reported: sends/s, mean and p50/p99 wall time per check,
and this process's CPU per check (``time.process_time``; the database server's CPU is
not in it). Runs alternate between the states (``--rounds``) so that other load on the
machine hits them alike; the best round of each is kept.

Run: ``python -m tests.perf.bench_rate_state`` (``--help`` for knobs) or ``pytest
tests/perf/test_bench_rate_state.py -s``. Exits 0 whatever the figures; only 127.0.0.1
is contacted; every cluster and directory made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.leases.rate_state import PgRateState
from actors.outbox.limits import Limits
from actors.outbox.rate_state import DiskRateState, RateState
from gateway.core.clock import SteadyClock
from gateway.core.config import LimitsConfig
from tests.pg import PgCluster, find_bindir, new_database

RAISED = LimitsConfig(per_number_per_minute=1_000_000, per_number_per_hour=1_000_000,
                      global_per_day=100_000_000)


@dataclass(frozen=True)
class Figures:
    name: str
    sends: int
    seconds: float
    cpu_seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.sends / self.seconds

    def row(self) -> str:
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1e3
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
        return (f"{self.name:<26} {self.rate:>9.0f} {statistics.fmean(ordered) * 1e3:>9.3f} "
                f"{p50:>8.3f} {p99:>8.3f} {self.cpu_seconds / self.sends * 1e3:>9.3f}")


def run(name: str, state: RateState, sends: int, recipients: int) -> Figures:
    """``sends`` admitted checks through one ``Limits`` on ``state``."""
    limits = Limits(state, RAISED)
    clock = SteadyClock()
    phones = [f"1415555{n:04d}" for n in range(recipients)]
    for phone in phones:  # first reads: the windows come into memory, as in the outbox
        assert limits.check(phone, clock())[0]
    latencies = []
    cpu = time.process_time()
    started = time.perf_counter()
    for n in range(sends):
        before = time.perf_counter()
        allowed, _, _ = limits.check(phones[n % recipients], clock())
        latencies.append(time.perf_counter() - before)
        assert allowed
    seconds = time.perf_counter() - started
    return Figures(name, sends, seconds, time.process_time() - cpu, latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=5000, help="checks per round")
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL's initdb and postgres are not installed: scripts/system-deps")
        return 1
    clusters = {False: PgCluster(bindir), True: PgCluster(bindir, fsync=True)}
    best: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="wagate-bench-rate-") as tmp:
        try:
            for cluster in clusters.values():
                cluster.start()
            openers: dict[str, Callable[[int], RateState]] = {
                "diskcache": lambda n: DiskRateState.open(Path(tmp) / f"limits{n}"),
                "postgresql, fsync off": lambda n: PgRateState(
                    new_database(clusters[False], f"bench{n}")),
                "postgresql, fsync on": lambda n: PgRateState(
                    new_database(clusters[True], f"bench{n}")),
            }
            for n in range(args.rounds):
                for name, opener in openers.items():
                    state = opener(n)
                    try:
                        figures = run(name, state, args.sends, args.recipients)
                    finally:
                        state.close()
                    if name not in best or figures.rate > best[name].rate:
                        best[name] = figures
        finally:
            for cluster in clusters.values():
                cluster.destroy()
    print(f"\nLimits.check, {args.sends} admitted sends over {args.recipients} recipients, "
          f"best of {args.rounds} rounds")
    print(f"{'state':<26} {'sends/s':>9} {'mean ms':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms':>9}")
    for figures in best.values():
        print(figures.row())
    print("load average (1, 5, 15 min) at the end: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
