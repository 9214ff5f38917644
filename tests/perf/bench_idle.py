"""Idle benchmark: the CPU an idle gateway with five linked simulated sessions uses.

Why it exists: issue 17 asks that the demo gateway with 5 linked simulated sessions and
no traffic use at most 0.5 % of a core (it used 5 %, mostly the simulated connections
polling their server 20 times a second). Timers and polling that wake idle processes
cost every operator all day, whatever the traffic.

How: ``wagate serve`` on its embedded defaults (simulator engine, default poll interval
and safety-net check), five sessions linked by QR, then a settling time, then the CPU
time (user + system, from /proc) of every gateway process over ``--seconds``, per
process role, as a percentage of one core. The *floor* is the gunicorn arbiter of the
same run: a process that does no work, so what one process costs the machine at rest.

Run: ``python -m tests.perf.bench_idle`` (``--seconds``, ``--settle``). Exits 0 whatever
the figures; only a benchmark that could not run fails. Only 127.0.0.1 is contacted;
every process is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.integration.harness import Gateway, wait_for
from tests.perf.soak import process_roles

TARGET_PERCENT = 0.5
SESSIONS = 5
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far (None: it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def measure(gw: Gateway, seconds: float) -> dict[str, list[float]]:
    """Per role, each process's CPU over ``seconds`` in % of a core."""
    roles = process_roles(gw)
    before = {pid: cpu_seconds(pid) for pid in roles}
    started = time.monotonic()
    time.sleep(seconds)  # the measured window itself: nothing is awaited
    elapsed = time.monotonic() - started
    found: dict[str, list[float]] = defaultdict(list)
    for pid, role in roles.items():
        first, last = before[pid], cpu_seconds(pid)
        if first is not None and last is not None:
            found[role].append((last - first) / elapsed * 100)
    return found


def report(found: dict[str, list[float]], seconds: float) -> None:
    total = sum(sum(values) for values in found.values())
    floor = sum(found.get("web arbiter", [float("nan")]))
    print()
    print("=" * 88)
    print(f"wagate idle: {SESSIONS} linked simulated sessions, embedded defaults, "
          f"{seconds:g} s measured")
    print("-" * 88)
    print(f"{'floor: the gunicorn arbiter (no work)':58} {floor:9.2f} % of a core")
    for role, values in sorted(found.items()):
        print(f"{role + f' (x{len(values)})':58} {sum(values):9.2f} % of a core")
    print("-" * 88)
    print(f"{'whole gateway':58} {total:9.2f} %   target <= {TARGET_PERCENT:g} %  "
          f"{'PASS' if total <= TARGET_PERCENT else 'FAIL'}")
    print("=" * 88)


def run(seconds: float, settle: float) -> int:
    with tempfile.TemporaryDirectory(prefix="wagate-idle-") as tmp:
        # The defaults where the harness shrinks them for its tests (the simulator's
        # poll interval, the web workers); its shorter reconnect and QR delays play no
        # part in an idle linked gateway.
        gw = Gateway(Path(tmp), {"sessions": {"max_sessions": SESSIONS},
                                 "simulator": {"poll_interval_seconds": 0.05},
                                 "http": {"workers": 2, "threads": 8}})
        try:
            gw.start(60)
            names = [f"idle{i}" for i in range(1, SESSIONS + 1)]
            for name in names:
                gw.link(name)
            wait_for(lambda: sum(s.get("state") == "CONNECTED"
                                 for s in gw.health().get("sessions", [])) == SESSIONS,
                     30, 0.2, "every session CONNECTED")
            time.sleep(settle)  # start-up work (snapshots, first checks) out of the window
            found = measure(gw, seconds)
            gw.stop()
        finally:
            gw.cleanup()
    report(found, seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_idle",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=15.0, help="wait after linking")
    args = parser.parse_args(argv)
    for name in ("seconds", "settle"):
        value = getattr(args, name)
        if not 0 < value < 3600:
            parser.error(f"--{name} must be over 0 and under 3600, not {value}")
    return run(args.seconds, args.settle)


if __name__ == "__main__":
    sys.exit(main())
