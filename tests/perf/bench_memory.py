"""Memory benchmark: the PSS of a real-engine (neonize) session process, and of the gateway.

Why it exists: issue 17 measured 41 MiB of PSS per linked real-engine session (290 MiB
for a gateway with five) and asks for at most 30 MiB per session: on a 1 GB VPS five
linked accounts should leave most of the machine free. PSS (proportional set size) is
the honest figure for a tree of forked processes: a page shared by k processes counts
1/k in each, so the PSS of all processes adds up to what the tree really costs.

The stand-in for a linked session. This machine (and CI) has no internet, so a real
session can never reach WhatsApp. The closest honest stand-in is a session whose
engine is loaded and whose Go client is started and dialing: ``whatsAppConnect`` on
the real engine, with ``transport.proxy`` pointing at a loopback TCP listener that
accepts the connection and never answers (``FaultProxy("hang")``; the engine waits
60 s for the CONNECT's answer, docs/engine-behaviour.md). What it lacks against a
linked, connected session: the TLS/Noise session, the device's keys and contacts in
the store, the app-state and history sync after login. Those come on top of the
figures printed here, and only a run with a real phone can measure them.

How: ``wagate serve`` (``tests/integration/harness.Gateway``, real engine, the proxy on
127.0.0.1, reconnects pushed out of the window) connects one session, waits until the
proxy has accepted its dial and the session's PSS is steady, reads every gateway
process's ``/proc/PID/smaps_rollup``; then connects ``--sessions`` minus one more and
does the same. Both readings happen within the first dial's 60 s. For the engine
session, ``/proc/PID/smaps`` is split by mapping: the engine library's file pages, the
Go heap arenas (anonymous mappings below the executable, where this engine's Go runtime
reserves its heap), and the rest of the anonymous memory (the Python heap, malloc,
thread stacks, Go's off-heap metadata), shared with the fork's parent or private.

Floors, measured in the same run: a bare ``python -c`` process (what any Python
process costs), and the session process of a simulator-engine gateway with one linked
session (what a session costs without the engine).

Run: ``python -m tests.perf.bench_memory`` (``--sessions``, ``--settle``). Exits 0
whatever the figures; only a benchmark that could not run fails. Only 127.0.0.1 is
contacted (the standard proxy variables also point at a refused loopback port); every
process is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.harness import Gateway, wait_for
from tests.neonize.fault_proxy import FaultProxy, refused_port
from tests.perf.soak import process_roles

TARGET_MIB = 30.0
ENGINE_LIBRARY = "neonize-linux-amd64.so"
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
_STEADY_RATIO = 0.01  # two readings 1 s apart within 1 %: the process is settled


def pss_kib(pid: int) -> int | None:
    """The process's PSS in KiB from smaps_rollup (None: it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def wait_steady(pids: list[int], settle: float, deadline: float = 60.0) -> dict[int, int]:
    """Wait ``settle`` seconds, then until the PSS of every pid changes by less than
    1 % over a second (start-up work done); return the last reading."""
    time.sleep(settle)  # the minimum settling time itself, then a condition
    last = {pid: pss_kib(pid) or 0 for pid in pids}

    def steady() -> bool:
        nonlocal last
        now = {pid: pss_kib(pid) or 0 for pid in pids}
        calm = all(abs(now[p] - last[p]) <= _STEADY_RATIO * max(last[p], 1) for p in pids)
        last = now
        return calm

    wait_for(steady, deadline, 1.0, "the processes' PSS to settle")
    return last


@dataclass
class Split:
    """One process's PSS split by mapping kind, KiB."""

    engine_file: int = 0
    other_file: int = 0
    go_arena: int = 0
    anon_shared: int = 0  # anonymous PSS of pages still shared (with the fork's parent)
    anon_private: int = 0
    total: int = 0


def split_smaps(pid: int) -> Split:
    """Read ``/proc/PID/smaps`` and add each mapping's PSS to its kind."""
    split = Split()
    executable = min((int(m.group(1), 16) for m in _mappings(pid) if m.group(4)
                      and not m.group(4).startswith("[")), default=0)
    current: re.Match[str] | None = None
    fields: dict[str, int] = {}
    for line in [*Path(f"/proc/{pid}/smaps").read_text().splitlines(), "0-0 ---p 0 0 0 0"]:
        match = _MAPPING.match(line)
        if match is None:
            key, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                fields[key] = int(value[0])
            continue
        if current is not None:
            _add(split, current, fields, executable)
        current, fields = match, {}
    return split


def _mappings(pid: int) -> Iterator[re.Match[str]]:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        match = _MAPPING.match(line)
        if match:
            yield match


def _add(split: Split, mapping: re.Match[str], fields: dict[str, int], executable: int
         ) -> None:
    pss, name = fields.get("Pss", 0), mapping.group(4)
    split.total += pss
    if name.endswith(ENGINE_LIBRARY):
        split.engine_file += pss
    elif name and not name.startswith("["):
        split.other_file += pss
    elif not name and int(mapping.group(1), 16) < executable:
        split.go_arena += pss
    else:
        # A private page counts whole in the PSS; the rest is the shared pages' share.
        private = fields.get("Private_Dirty", 0) + fields.get("Private_Clean", 0)
        split.anon_private += private
        split.anon_shared += pss - private


@dataclass
class Reading:
    """What one configuration measured."""

    label: str
    sessions: list[int] = field(default_factory=list)  # KiB per session process
    roles: dict[str, list[int]] = field(default_factory=dict)  # KiB per process, by role
    split: Split | None = None
    states: list[str] = field(default_factory=list)

    @property
    def whole(self) -> int:
        return sum(sum(values) for values in self.roles.values())


# --------------------------------------------------------------------------- floors


def bare_python(settle: float) -> int:
    """PSS of a ``python -c`` process that only waits on its standard input."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        return wait_steady([child.pid], min(settle, 1.0))[child.pid]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def gateway_reading(gw: Gateway, label: str, settle: float) -> Reading:
    """Settle, then every gateway process's PSS by role (the launcher included)."""
    health = gw.health()
    session_pids = [int(s["pid"]) for s in health["sessions"] if s.get("pid")]
    roles = process_roles(gw)
    assert gw.process is not None
    roles[gw.process.pid] = "launcher"
    found = wait_steady(sorted(roles), settle)
    reading = Reading(label, sessions=[found[pid] for pid in session_pids],
                      states=[str(s.get("state")) for s in health["sessions"]])
    by_role: dict[str, list[int]] = defaultdict(list)
    for pid, role in roles.items():
        by_role[role].append(found[pid])
    reading.roles = dict(by_role)
    if session_pids:
        reading.split = split_smaps(session_pids[0])
    return reading


def simulator_floor(root: Path, settle: float) -> Reading:
    """A simulator gateway's one linked session process."""
    gw = Gateway(root, {"sessions": {"max_sessions": 1}})
    try:
        gw.start(60)
        gw.link("default")
        reading = gateway_reading(gw, "simulator, 1 linked session", settle)
        gw.stop()
        return reading
    finally:
        gw.cleanup()


# --------------------------------------------------------------------------- engine


@contextlib.contextmanager
def fenced_environment() -> Iterator[None]:
    """The standard proxy variables at a refused loopback port, for the gateway this
    process starts (a client that ignored ``transport.proxy`` could not get out)."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    saved = {name: os.environ.get(name) for n in names for name in (n, n.lower())}
    dead_end = f"http://127.0.0.1:{refused_port()}"
    for name in saved:
        os.environ[name] = "127.0.0.1,localhost" if name.lower() == "no_proxy" else dead_end
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def engine_readings(root: Path, sessions: int, settle: float) -> list[Reading]:
    """The real engine: one session dialing, then ``sessions`` dialing."""
    with fenced_environment(), FaultProxy("hang") as proxy:
        gw = Gateway(root, {
            "sessions": {"max_sessions": sessions},
            "transport": {"proxy": proxy.address},
            # The dial waits 60 s on the silent proxy; nothing may replace the client
            # (a new Go client) inside the measured window.
            "reconnect": {"connect_timeout_seconds": 600, "first_delay_seconds": 3600,
                          "delay_seconds": 3600}}, engine="neonize")
        try:
            gw.start(60)
            readings = [_dialing(gw, proxy, ["m1"], settle),
                        _dialing(gw, proxy, [f"m{i}" for i in range(2, sessions + 1)], settle)]
            gw.stop()
            return readings
        finally:
            gw.cleanup()


def _dialing(gw: Gateway, proxy: FaultProxy, names: list[str], settle: float) -> Reading:
    before = proxy.connections
    for name in names:
        result = gw.connect(name)
        assert not result.errors, result
    wait_for(lambda: proxy.connections >= before + len(names), 30, 0.1,
             "every new session's dial to reach the loopback proxy")
    total = len(gw.health()["sessions"])
    return gateway_reading(gw, f"real engine, {total} session(s) dialing", settle)


# --------------------------------------------------------------------------- report


def _mib(kib: float) -> str:
    return f"{kib / 1024:8.1f} MiB"


def line(name: str, value: str) -> None:
    print(f"{name:62} {value}")


def print_split(title: str, split: Split) -> None:
    line(title, "")
    line("    engine library (.so file pages)", _mib(split.engine_file))
    line("    other files (python, libraries)", _mib(split.other_file))
    line("    Go heap arenas (anonymous, below the executable)", _mib(split.go_arena))
    line("    other anonymous, still shared with the fork's parent", _mib(split.anon_shared))
    line("    other anonymous, private (Python heap, malloc, stacks, Go metadata)",
         _mib(split.anon_private))


def report(floor: int, sim: Reading, engine: list[Reading]) -> None:
    print()
    print("=" * 96)
    print("wagate memory: PSS from /proc/PID/smaps_rollup, processes settled")
    print("stand-in for a linked session: real engine loaded, Go client started, its dial")
    print("held by a loopback proxy that accepts and never answers (no WhatsApp here)")
    print("-" * 96)
    line("floor: bare `python -c` process", _mib(floor))
    line("floor: simulator session process (1 linked session)", _mib(sim.sessions[0]))
    line("floor: simulator gateway, whole (1 linked session)", _mib(sim.whole))
    if sim.split is not None:
        print_split("  the simulator session process, split by mapping:", sim.split)
    for reading in engine:
        count = len(reading.sessions)
        per = sum(reading.sessions) / count
        print("-" * 96)
        line(f"{reading.label}: per session process (mean of {count})",
             f"{_mib(per)}  target <= {TARGET_MIB:g} MiB  "
             f"{'PASS' if per / 1024 <= TARGET_MIB else 'FAIL'}")
        line("  session states", ", ".join(sorted(set(reading.states))))
        line("  whole gateway", _mib(reading.whole))
        for role, values in sorted(reading.roles.items()):
            line(f"    {role} (x{len(values)})", _mib(sum(values)))
        if reading.split is not None:
            print_split("  one session process, split by mapping:", reading.split)
    print("=" * 96)


def run(sessions: int, settle: float) -> int:
    with tempfile.TemporaryDirectory(prefix="wagate-memory-") as tmp:
        floor = bare_python(settle)
        (Path(tmp) / "sim").mkdir()
        sim = simulator_floor(Path(tmp) / "sim", settle)
        (Path(tmp) / "engine").mkdir()
        engine = engine_readings(Path(tmp) / "engine", sessions, settle)
    report(floor, sim, engine)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5,
                        help="engine sessions of the second reading (2 to 20)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait before the PSS must be steady")
    args = parser.parse_args(argv)
    if not 2 <= args.sessions <= 20:
        parser.error(f"--sessions must be 2 to 20, not {args.sessions}")
    if not 0 < args.settle <= 20:
        parser.error(f"--settle must be over 0 and at most 20 (the dial lasts 60 s), "
                     f"not {args.settle}")
    return run(args.sessions, args.settle)


if __name__ == "__main__":
    sys.exit(main())
