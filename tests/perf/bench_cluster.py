"""Cluster benchmark (issue 22): sends per second in multi-host mode against single-host.

Why it exists: in multi-host mode a send crosses hosts. The leader's web tier hands it
to the leader's outbox, which sends it to the session process on the member and gets
the answer back. With leases, every session process also renews its lease in
PostgreSQL. This measures what that costs on one machine, in one run, with the same
load as ``bench_api``'s closed loop (its generator, its CPU sampling, its phase):

(a) single-host: one ``wagate serve`` (simulator, pacing off, limits raised, token
    file, storage key, production HTTP sizing), ``--sessions`` linked sessions,
    ``--clients`` keep-alive connections sending ``sendWhatsAppNotification`` back to
    back, spread over the sessions, a warm-up then a measured window;
(b) multi-host: a leader and a member on 127.0.0.1, two ``wagate serve`` processes
    with the integration tests' cluster config (heartbeat 1 s x 3, lease 6 s, renew
    1 s, margin 2 s, a shared session store and simulated service), leases in a
    throwaway PostgreSQL (``tests/pg.py``). The leader has no session slot, so every
    session is placed on the member (checked, and printed). The same load goes to the
    leader's API.

Both systems run side by side, idle but for the load; the windows alternate (single,
multi, single, multi, ...: ``--rounds``, default 3), so a drift in what the rest of a shared
machine does hits both modes alike. Printed for both, per window and over all windows:
sends/s, p50/p99, and CPU per send summed over every gateway process of every host
(launchers, actor systems, web tiers), read from /proc over the window;
PostgreSQL's CPU on its own line; then the ratio multi/single. The issue sets no target:
these are figures, not PASS/FAIL. Correctness is checked: every send answered true and
the simulated inbox holds one message per successful send.

Run: ``python -m tests.perf.bench_cluster`` (``--help`` for knobs; about 2 minutes,
nearer 3 on a loaded machine).
Exits 0 whatever the figures; only a benchmark that could not run fails. Only
127.0.0.1 is ever contacted; every process, the PostgreSQL cluster and the temporary
directories are gone at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from actors.transport.simulator import SimulatorServer
from gateway.core.config import HttpConfig
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster import (
    HEARTBEAT,
    LEADER,
    MEMBER,
    MEMBER_START_DEADLINE,
    _member_alive,
    _placement,
)
from tests.integration.test_cluster_leases import LEASE
from tests.perf.bench_api import (
    BENCH_TOKEN_NAME,
    Phase,
    Settings,
    gateway_overrides,
    label_actor_group,
    label_web_group,
    run_phase,
)
from tests.pg import PgCluster, find_bindir

DEFAULT_SESSIONS = 2
DEFAULT_CLIENTS = 16
POSTGRES = "postgres"  # label prefix of the database's processes (not a gateway's)
CLIENT = "client"  # bench_api's label prefix of its load generator processes


@dataclass(frozen=True, slots=True)
class Figures:
    """One mode's row of the report."""

    mode: str
    throughput: float  # answered sends per second in the window
    p50_ms: float
    p99_ms: float
    gateway_cpu_ms: float  # CPU per send, every gateway process of every host
    postgres_cpu_ms: float  # CPU per send of the PostgreSQL server (0 without one)
    errors: int  # failed sends in the window
    sent_ok: int  # sends answered true, warm-up included
    sent_failed: int
    inbox: int | None  # messages in the simulated inbox after the load
    other_cores: float  # cores the rest of the machine used during the window
    load: tuple[float, float, float]  # load average after the window (all: the highest)
    top: str  # the busiest gateway processes, CPU ms per send
    samples: list[str]


# --------------------------------------------------------------------------- pure helpers


def session_names(count: int) -> tuple[str, ...]:
    """The benchmark's sessions: ``b1`` ... ``bN`` (at least one)."""
    if count < 1:
        raise ValueError(f"at least one session, not {count}")
    return tuple(f"b{i}" for i in range(1, count + 1))


def merge_sections(*configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Config overrides merged section by section, later keys winning: the cluster's
    ``[simulator] server_dir`` must not replace ``bench_api``'s ``poll_interval_seconds``."""
    merged: dict[str, dict[str, Any]] = {}
    for config in configs:
        for section, values in config.items():
            merged.setdefault(section, {}).update(values)
    return merged


def relabel(labels: dict[int, str], prefix: str) -> dict[int, str]:
    """``bench_api``'s labels name every gateway ``gw``; a host's get its own prefix."""
    return {pid: f"{prefix} {label.removeprefix('gw ')}" for pid, label in labels.items()}


def cpu_per_send(cpu: dict[str, float], served: int) -> tuple[float, float]:
    """(gateway, PostgreSQL) CPU milliseconds per send from a window's CPU seconds by
    label: the load generators count in neither, the database on its own."""
    if not served:
        return float("nan"), float("nan")
    gateway = sum(v for k, v in cpu.items() if not k.startswith((CLIENT, POSTGRES)))
    database = sum(v for k, v in cpu.items() if k.startswith(POSTGRES))
    return gateway * 1000 / served, database * 1000 / served


def top_processes(cpu: dict[str, float], served: int, count: int = 4) -> str:
    """The ``count`` busiest gateway processes, each with its CPU ms per send."""
    if not served:
        return "n/a"
    parts = sorted(((k, v) for k, v in cpu.items() if not k.startswith((CLIENT, POSTGRES))),
                   key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{label} {sec * 1000 / served:.2f}" for label, sec in parts)


def ratio(multi: float, single: float) -> float:
    """multi / single; nan when either is missing (nan) or single is 0."""
    if single != single or multi != multi or not single:
        return float("nan")
    return multi / single


def merge_phases(phases: list[Phase]) -> Phase:
    """Several windows of one load as one: latencies pooled, counts and CPU seconds
    added, windows added (throughput = all answered sends / all measured time), the
    machine's busy cores averaged over the time."""
    window = sum(p.window for p in phases)
    cpu: dict[str, float] = {}
    for phase in phases:
        for label, seconds in phase.cpu.items():
            cpu[label] = cpu.get(label, 0.0) + seconds
    return replace(
        phases[0], window=window, latencies=sorted(x for p in phases for x in p.latencies),
        errors=sum(p.errors for p in phases), total_ok=sum(p.total_ok for p in phases),
        total_errors=sum(p.total_errors for p in phases),
        samples=[x for p in phases for x in p.samples][:5],
        max_lag=max(p.max_lag for p in phases), cpu=cpu,
        busy=sum(p.busy * p.window for p in phases) / window if window else float("nan"),
        connections={}, tcp_opens=sum(p.tcp_opens for p in phases), run=0)


def figures(mode: str, phase: Phase, load: tuple[float, float, float],
            inbox: int | None = None) -> Figures:
    """A report row from a window (or pooled windows) of ``mode``."""
    served = phase.ok + phase.errors
    gateway_ms, database_ms = cpu_per_send(phase.cpu, served)
    return Figures(mode=mode, throughput=phase.throughput, p50_ms=phase.pct(50),
                   p99_ms=phase.pct(99), gateway_cpu_ms=gateway_ms,
                   postgres_cpu_ms=database_ms, errors=phase.errors,
                   sent_ok=phase.total_ok, sent_failed=phase.total_errors, inbox=inbox,
                   other_cores=phase.other_cores(), load=load,
                   top=top_processes(phase.cpu, served), samples=phase.samples)


# --------------------------------------------------------------------------- gateways


@dataclass(frozen=True, slots=True)
class Target:
    """One system under load: where the load goes, how its processes are named for
    the CPU table, how many messages its simulated inbox holds."""

    mode: str
    port: int
    token: str
    labels: Callable[[], dict[int, str]]
    inbox: Callable[[int], int]  # expected count -> count, waiting up to 5 s for it
    where: str  # where the sessions run


def host_labels(gateway: Gateway, prefix: str) -> dict[int, str]:
    """Every process of one running gateway, named for the CPU table: its web tier,
    its actor processes, its launcher."""
    state = gateway.run_state() or {}
    labels = {**label_web_group(int(state["web_pgid"]), "gw"),
              **label_actor_group(int(state["actor_pgid"]), gateway.data_dir)}
    if gateway.process is not None:
        labels[gateway.process.pid] = "gw launcher"
    return relabel(labels, prefix)


def session_pids(leader: Gateway) -> dict[str, int]:
    return {s["session"]: int(s["pid"]) for s in leader.health()["sessions"] if s["pid"]}


def name_sessions(labels: dict[int, str], pids: dict[str, int]) -> dict[int, str]:
    """Label the session processes found among ``labels`` ``<host> session <name>``
    (by the pids ``/admin/health`` gives: a cluster's session store is outside the
    host's data_dir, where ``label_actor_group`` looks)."""
    named = dict(labels)
    for session, pid in pids.items():
        if pid in named:
            named[pid] = f"{named[pid].split(' ', 1)[0]} session {session}"
    return named


def load_token(gateway: Gateway, sessions: tuple[str, ...]) -> str:
    """The load's token, as ``bench_api``'s but for the benchmark's sessions."""
    return gateway.make_token("sender", sessions=list(sessions), networks=["127.0.0.0/8"],
                              expires=time.time() + 86400, name=BENCH_TOKEN_NAME)


def inbox_count(data_dir: Path, root: Path | None, expected: int) -> int:
    """Messages in the simulated inbox once ``expected`` arrived (or after 5 s: a send
    the client gave up on may still land)."""
    server = SimulatorServer(data_dir, root)
    try:
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(server.inbox()) >= expected, 5.0, 0.2, "the inbox")
        return len(server.inbox())
    finally:
        server.close()


def base_overrides(settings: Settings) -> dict[str, dict[str, Any]]:
    """``bench_api``'s gateway config, with room for the benchmark's sessions."""
    return merge_sections(gateway_overrides(settings), {
        "sessions": {"max_sessions": max(5, len(settings.sessions))}})


def stop_and_clean(gateway: Gateway) -> None:
    """Stop ``gateway`` gracefully, then kill whatever is left, reporting it; the kill
    also runs when the stop is interrupted (a second Ctrl-C, a SIGTERM)."""
    try:
        with contextlib.suppress(AssertionError):
            gateway.stop()
    finally:
        leaked = gateway.cleanup()
        if leaked:
            print(f"gateway processes had to be killed: {leaked}", flush=True)


@contextlib.contextmanager
def stopped_at_the_end(*gateways: Gateway) -> Iterator[None]:
    """Stop ``gateways`` in reverse order on the way out, whatever happened: each one's
    stop runs even when another's raised."""
    with contextlib.ExitStack() as stack:
        for gateway in gateways:
            stack.callback(stop_and_clean, gateway)
        yield


@contextlib.contextmanager
def single_host(root: Path, settings: Settings) -> Iterator[Target]:
    """(a): one gateway with the sessions linked on it; stopped on the way out."""
    root.mkdir()
    gateway = Gateway(root, base_overrides(settings))
    token = load_token(gateway, settings.sessions)
    with stopped_at_the_end(gateway):
        print("single-host: starting wagate serve and linking "
              f"{len(settings.sessions)} sessions ...", flush=True)
        gateway.start()
        for session in settings.sessions:
            gateway.link(session)
        pids = session_pids(gateway)
        yield Target("single-host", gateway.port, token,
                     lambda: name_sessions(host_labels(gateway, "single"), pids),
                     lambda expected: inbox_count(gateway.data_dir, None, expected),
                     ", ".join(f"{s} (pid {pids.get(s)})" for s in settings.sessions))


def cluster_gateways(root: Path, settings: Settings, url: str) -> tuple[Gateway, Gateway]:
    """A leader without session slots and a member with one per session, on loopback,
    as the integration tests build them (tests/integration/test_cluster_leases.py),
    sharing the session store, the simulated service and the storage key."""
    shared = root / "shared"
    stores = {"storage": {"sessions_dir": str(shared / "sessions")},
              "simulator": {"server_dir": str(shared / "simulator")}}
    common = {"advertise_address": "127.0.0.1", "allow_networks": ["127.0.0.1/32"],
              "database_url": url, **HEARTBEAT, **LEASE}
    (root / "leader").mkdir()
    leader = Gateway(root / "leader", merge_sections(base_overrides(settings), stores, {
        "cluster": {"role": "leader", "host_name": LEADER, "sessions": 0, **common}}))
    (root / "member").mkdir()
    member = Gateway(root / "member", merge_sections(base_overrides(settings), stores, {
        "cluster": {"role": "member", "host_name": MEMBER,
                    "sessions": len(settings.sessions),
                    "leaders": [f"127.0.0.1:{leader.admin_port}"], **common}}),
        key_file=leader.key_file)
    return leader, member


def placements(leader: Gateway, member: Gateway, sessions: tuple[str, ...]) -> str:
    """Where each session runs, by the leader's API and by the member's processes;
    raises unless every one runs on the member (the point of the measurement)."""
    pids = session_pids(leader)
    member_pids = set(member.actor_pids())
    where = []
    for session in sessions:
        host = _placement(leader, session)["host"]
        pid = pids.get(session)
        if host != MEMBER or pid not in member_pids:
            raise RuntimeError(f"session {session} runs on {host!r} (pid {pid}), not on the "
                               f"member {MEMBER!r}: the cross-host path would not be measured")
        where.append(f"{session} on {host} (pid {pid})")
    return ", ".join(where)


@contextlib.contextmanager
def multi_host(root: Path, settings: Settings, bindir: Path) -> Iterator[Target]:
    """(b): PostgreSQL, a leader and a member, the sessions on the member, the load to
    the leader's API. Gateways stopped and the database removed on the way out."""
    root.mkdir()
    pg = PgCluster(bindir)
    try:
        print("multi-host: starting PostgreSQL ...", flush=True)
        pg.start()
        leader, member = cluster_gateways(root, settings, pg.url())
        token = load_token(leader, settings.sessions)
        with stopped_at_the_end(leader, member):
            print(f"multi-host: starting the leader ({LEADER}) and the member ({MEMBER}), "
                  f"linking {len(settings.sessions)} sessions ...", flush=True)
            leader.start()
            member.start(MEMBER_START_DEADLINE)
            wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join the leader")
            for session in settings.sessions:
                leader.link(session)
            where = placements(leader, member, settings.sessions)
            print(f"  sessions: {where}", flush=True)
            pids = session_pids(leader)

            def labels() -> dict[int, str]:
                named = {**host_labels(leader, "leader"), **host_labels(member, "member"),
                         **{pid: f"{POSTGRES} {pid}" for pid in pg.processes()}}
                return name_sessions(named, pids)

            yield Target("multi-host", leader.port, token, labels,
                         lambda expected: inbox_count(leader.data_dir,
                                                      root / "shared" / "simulator", expected),
                         where)
    finally:
        pg.destroy()


def measure(targets: list[Target], settings: Settings, rounds: int
            ) -> dict[str, list[tuple[Phase, tuple[float, float, float]]]]:
    """``rounds`` rounds, each one window per target in turn: on a shared machine the
    load of others drifts, and alternating exposes both modes to the same drift.
    Returns each mode's (phase, load average after it) per round."""
    measured: dict[str, list[tuple[Phase, tuple[float, float, float]]]] = {
        t.mode: [] for t in targets}
    for round_no in range(1, rounds + 1):
        for target in targets:
            print(f"  round {round_no} of {rounds}: {target.mode}, sendWhatsAppNotification "
                  f"[closed loop, {settings.concurrency} clients] ...", flush=True)
            phase = run_phase(f"{target.mode} send", "send", "closed", target.port,
                              target.token, settings, target.labels)
            phase.run = round_no
            measured[target.mode].append((phase, os.getloadavg()))
    return measured


# --------------------------------------------------------------------------- report


def _num(value: float, width: int = 8, digits: int = 2) -> str:
    return f"{'n/a':>{width}}" if value != value else f"{value:{width}.{digits}f}"


def _row(label: str, row: Figures) -> str:
    load = "/".join(f"{x:.1f}" for x in row.load)
    return (f"{label:16} {_num(row.throughput, 8, 1)} {row.errors:6d} "
            f"{_num(row.p50_ms)} {_num(row.p99_ms)} {_num(row.gateway_cpu_ms, 11)} "
            f"{_num(row.postgres_cpu_ms, 12)} {_num(row.other_cores, 5)} {load:>15}")


def print_report(settings: Settings, rounds: dict[str, list[Figures]],
                 total: dict[str, Figures], targets: list[Target]) -> None:
    out = print
    single, multi = total["single-host"], total["multi-host"]
    count = len(rounds["single-host"])
    out()
    out("=" * 104)
    out("wagate cluster benchmark (issue 22): multi-host vs single-host, one machine")
    out(f"machine: {os.cpu_count()} CPUs | gunicorn gthread workers={settings.workers} "
        f"threads={settings.threads} on every host")
    out(f"closed loop: {settings.concurrency} keep-alive connections ({settings.procs} "
        f"processes), {settings.warmup:g} s warm-up + {settings.duration:g} s measured per "
        f"window, {count} rounds of one window per mode in turn; sends spread over "
        f"{len(settings.sessions)} sessions ({', '.join(settings.sessions)})")
    out(f"multi-host: leader {LEADER} (no session slot) + member {MEMBER} on 127.0.0.1, "
        f"heartbeat {HEARTBEAT['heartbeat_seconds']:g} s x {HEARTBEAT['heartbeat_misses']}, "
        f"lease {LEASE['lease_seconds']:g} s / renew {LEASE['lease_renew_seconds']:g} s / "
        f"margin {LEASE['lease_margin_seconds']:g} s in PostgreSQL; load sent to the leader")
    for target in targets:
        out(f"  {target.mode} sessions: {target.where}")
    out("-" * 104)
    out(f"{'mode':16} {'sends/s':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'gateway CPU':>11} {'postgres CPU':>12} {'other':>5} {'load avg':>15}")
    out(f"{'':16} {'':>8} {'':>6} {'':>8} {'':>8} {'ms/send':>11} {'ms/send':>12} "
        f"{'cores':>5} {'after window':>15}")
    for i in range(count):
        for mode in ("single-host", "multi-host"):
            out(_row(f"{mode} r{i + 1}", rounds[mode][i]))
    for mode in ("single-host", "multi-host"):
        out(_row(f"{mode} all", total[mode]))
    out("-" * 104)
    per_round = ", ".join(_num(ratio(m.throughput, s.throughput), 0)
                          for s, m in zip(rounds["single-host"], rounds["multi-host"],
                                          strict=True))
    out(f"figure: sends/s multi/single {_num(ratio(multi.throughput, single.throughput), 0)}"
        f" (by round: {per_round})")
    for label, m, s in (("p50", multi.p50_ms, single.p50_ms),
                        ("p99", multi.p99_ms, single.p99_ms),
                        ("gateway CPU per send", multi.gateway_cpu_ms, single.gateway_cpu_ms)):
        out(f"figure: {label} multi/single {_num(ratio(m, s), 0)}")
    out("-" * 104)
    for row in (single, multi):
        out(f"correctness ({row.mode}): {row.sent_ok}/{row.sent_ok + row.sent_failed} sends "
            f"answered true (warm-up included), simulated inbox {row.inbox}"
            f"{'' if row.inbox == row.sent_ok else '  MISMATCH'}")
        if row.samples:
            out(f"  error samples: {row.samples}")
        out(f"  busiest processes ({row.mode}), CPU ms/send: {row.top}")
    out("'other cores': CPU the rest of the machine used during the window (others' jobs, "
        "this script, the other mode's idle gateways); a high figure means a disturbed "
        "window: rerun")
    out("=" * 104)


# --------------------------------------------------------------------------- main


def run(settings: Settings, rounds: int) -> int:
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL's initdb and postgres are not installed (scripts/system-deps as "
              "root): the multi-host mode with leases cannot be measured", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="wagate-bench-cluster-") as tmp, \
            contextlib.ExitStack() as stack:
        root = Path(tmp)
        targets = [stack.enter_context(single_host(root / "single", settings)),
                   stack.enter_context(multi_host(root / "multi", settings, bindir))]
        measured = measure(targets, settings, rounds)
        by_round = {mode: [figures(mode, phase, load) for phase, load in runs]
                    for mode, runs in measured.items()}
        total = {}
        for target in targets:
            merged = merge_phases([phase for phase, _ in measured[target.mode]])
            loads = [load for _, load in measured[target.mode]]
            worst = max(loads, key=lambda load: load[0])
            total[target.mode] = figures(target.mode, merged, worst,
                                         target.inbox(merged.total_ok))
    print_report(settings, by_round, total, targets)
    return 0


def parse_args(argv: list[str] | None) -> tuple[Settings, int]:
    """The load's settings and the number of rounds."""
    defaults = HttpConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench_cluster",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS,
                        help="linked simulated sessions the sends spread over "
                             "(default %(default)s)")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS,
                        help="closed-loop keep-alive connections (default %(default)s)")
    parser.add_argument("--procs", type=int, default=2, help="closed-loop generator processes")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of one window per mode in turn (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="gunicorn workers on every host (default: the product's)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="gunicorn threads per worker (default: the product's)")
    args = parser.parse_args(argv)
    for name in ("sessions", "clients", "procs", "recipients", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not (args.duration > 0 and args.warmup >= 0):
        parser.error("--duration must be over 0 and --warmup at least 0")
    return Settings(workers=args.workers, threads=args.threads, concurrency=args.clients,
                    procs=min(args.procs, args.clients), warmup=args.warmup,
                    duration=args.duration, rate=1.0, open_duration=0.0, open_threads=1,
                    recipients=args.recipients, open_runs=1, clients=(),
                    sessions=session_names(args.sessions)), args.rounds


def main(argv: list[str] | None = None) -> int:
    settings, rounds = parse_args(argv)
    return run(settings, rounds)


if __name__ == "__main__":
    sys.exit(main())
