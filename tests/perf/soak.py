"""Soak: the gateway for a long time at a steady load, with faults, memory and descriptors sampled.

Why it exists: issue 16 asks whether memory or descriptors creep over hours (peers'
operators report gateways that grow until restarted) and whether every message is
still accounted for after a long run with faults. Crash tests prove minutes; this
proves the slope.

How: ``wagate serve`` (simulator, ``--sessions`` linked sessions, every message gets a
delivery receipt from the simulated phone, chaos test timings) takes ``--rate`` sends a
second, round robin over the sessions and 100 recipients, for ``--minutes``. The
clients are the chaos test's: each message has its own idempotency key and text, and a
transient answer is retried with the same request. Every ``--drop-every`` seconds the
simulated connection of a random session drops; every ``--kill-every`` seconds a random
actor process is SIGKILLed (a session or the outbox: the supervisor restarts them).
Every ``--sample`` seconds each gateway process's RSS and open descriptors are read
from /proc.

Figures: per process, the least-squares slope of RSS (MiB/hour) and descriptors
(per hour) over its own life after its own warm-up (``--warmup``, 10 minutes: a session
process's Python objects and RSS were measured to level off 8 to 9 minutes after it
starts at this load). A killed actor's successor is a new series with its own warm-up;
a series with less than ``--min-span`` minutes after its warm-up is not judged, and the
report lists it as too young. Target: every judged slope < 1 MiB/hour. The *floor* is
the same slope of the gunicorn arbiter, a process of the same run that does no work:
what the measurement reads for a flat process. At the end, with nothing QUEUED or
SENDING, every accepted key must have exactly one record in a sent state and its text
in the simulated inbox; duplicates only where the record says uncertain.

Run: ``python -m tests.perf.soak`` (30 minutes; ``--minutes 3`` for a quick look).
Exits 0 whatever the figures; only a run that could not complete fails. Only
127.0.0.1 is contacted; every process is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.config import RANGES
from tests.integration.harness import Gateway, group_members, wait_for
from tests.integration.test_chaos import (
    CHAOS_CONFIG,
    REQUEST_TIMEOUT_SECONDS,
    SEND_MESSAGE,
    LoadClient,
    Outcome,
    drained,
    records,
)

TARGET_MIB_PER_HOUR = 1.0
WARMUP_MINUTES = 10.0  # the longest warm-up measured (session processes, 8 to 9 minutes)
MIN_SPAN_MINUTES = 10.0
RECIPIENTS = [f"+141555501{i:02d}" for i in range(100)]
LOAD_THREADS = 12
MAX_DAILY_LIMIT = int(RANGES["limits.global_per_day"].high)


@dataclass(frozen=True, slots=True)
class SoakSettings:
    minutes: float
    rate: float
    sessions: int
    drop_every: float
    kill_every: float
    sample: float
    seed: int
    warmup: float = WARMUP_MINUTES  # minutes of each process's own life not judged
    min_span: float = MIN_SPAN_MINUTES  # minutes after the warm-up a judged series needs
    samples_out: Path | None = None  # every sample as CSV: a slope cannot tell a step


@dataclass(slots=True)
class Sample:
    at: float  # seconds since the load started
    rss_kib: int
    fds: int
    anon_kib: int = 0  # RssAnon: what the process allocated itself (heap, stacks)
    file_kib: int = 0  # RssFile: mapped file pages (SQLite's mmap), the page cache's
    threads: int = 0  # a pool that grows shows here before its memory does


@dataclass
class Soak:
    """The run's state, shared by the load, fault and sampling threads."""

    settings: SoakSettings
    gw: Gateway
    names: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    series: dict[tuple[str, int], list[Sample]] = field(default_factory=lambda: defaultdict(list))
    faults: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    start: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def note(self, what: str) -> None:
        with self.lock:
            self.faults.append(f"{self.elapsed():.0f}s {what}")


# --------------------------------------------------------------------------- load


def send_body(outcome: Outcome, session: str, phone: str) -> dict[str, Any]:
    return {"query": SEND_MESSAGE, "variables": {"input": {
        "phoneNumber": phone, "message": outcome.text, "idempotencyKey": outcome.key,
        "session": session}}}


def load_thread(soak: Soak, token: str) -> None:
    """Take the next message, wait for its moment, send it until a definite answer."""
    client = LoadClient(soak.gw.url, token)
    spacing = 1.0 / soak.settings.rate
    try:
        while not soak.stopping.is_set():
            with soak.lock:
                n = soak.next_index
                soak.next_index += 1
            due = soak.start + n * spacing
            if due - soak.start >= soak.settings.minutes * 60:
                return
            if soak.stopping.wait(max(0.0, due - time.monotonic())):
                return
            outcome = Outcome(n, f"soak-key-{n}", f"soak-{n}")
            with soak.lock:
                soak.outcomes.append(outcome)
            body = send_body(outcome, soak.names[n % len(soak.names)],
                             RECIPIENTS[n % len(RECIPIENTS)])
            give_up = time.monotonic() + 120
            while time.monotonic() < give_up and not soak.stopping.is_set():
                outcome.tries += 1
                problem = client._try(body, outcome)
                if problem is None:
                    outcome.answered_at = time.monotonic()
                    break
                outcome.transient[problem] += 1
                soak.stopping.wait(0.1)
    except BaseException as exc:
        soak.errors.append(exc)
        soak.stopping.set()
    finally:
        client.close()


# --------------------------------------------------------------------------- faults


def fault_thread(soak: Soak) -> None:
    """Drops and kills on their own clocks, each at a random member of its kind."""
    rng = random.Random(soak.settings.seed)
    next_drop = soak.settings.drop_every
    next_kill = soak.settings.kill_every
    end = soak.settings.minutes * 60
    try:
        while not soak.stopping.wait(0.5):
            now = soak.elapsed()
            if now >= end:
                return
            if now >= next_drop:
                session = rng.choice(soak.names)
                soak.gw.sim("drop", "--session", session, check=False)
                soak.note(f"dropped {session}")
                next_drop += soak.settings.drop_every
            if now >= next_kill:
                kill_random_actor(soak, rng)
                next_kill += soak.settings.kill_every
    except BaseException as exc:
        soak.errors.append(exc)
        soak.stopping.set()


def kill_random_actor(soak: Soak, rng: random.Random) -> None:
    document = soak.gw.health()
    choices = {f"session {s['session']}": int(s["pid"])
               for s in document.get("sessions", []) if s.get("pid")}
    # the supervisor is the tree's root (its death is the whole gateway's: the chaos
    # test's "kill gateway"), not an actor that is restarted
    choices.update({name: int(pid) for name, pid in document.get("processes", {}).items()
                    if pid and name != "supervisor"})
    if not choices:
        soak.note("no actor to kill (health had none)")
        return
    name = rng.choice(sorted(choices))
    soak.gw.signal_process(choices[name], signal.SIGKILL)
    soak.note(f"killed {name} ({choices[name]})")


# --------------------------------------------------------------------------- sampling


def process_roles(gw: Gateway) -> dict[int, str]:
    """Every gateway process by role: the outbox, audit, webhooks and sessions from
    health; the web processes and other actors by their group and parent."""
    state = gw.run_state() or {}
    roles: dict[int, str] = {}
    web = int(state.get("web_pgid", 0))
    for pid in group_members(web) if web else []:
        roles[pid] = "web arbiter" if pid == web else "web worker"
    actor = int(state.get("actor_pgid", 0))
    for pid in group_members(actor) if actor else []:
        roles[pid] = "actor (other)"
    try:
        document = gw.health()
    except Exception:  # restarting: this sample names what it can
        return roles
    for name, pid in document.get("processes", {}).items():
        if pid:
            roles[int(pid)] = name
    for entry in document.get("sessions", []):
        if entry.get("pid"):
            roles[int(entry["pid"])] = "session"
    return roles


def read_process(pid: int) -> tuple[int, int, int, int, int] | None:
    """VmRSS in KiB, the number of open descriptors, RssAnon and RssFile in KiB and the
    number of threads (None: the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                  if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "Threads:"))}
        return (fields["VmRSS"], len(os.listdir(f"/proc/{pid}/fd")), fields["RssAnon"],
                fields["RssFile"], fields["Threads"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def sample_thread(soak: Soak) -> None:
    try:
        while not soak.stopping.wait(soak.settings.sample):
            at = soak.elapsed()
            for pid, role in process_roles(soak.gw).items():
                found = read_process(pid)
                if found is not None:
                    soak.series[(role, pid)].append(Sample(at, *found))
            if at >= soak.settings.minutes * 60:
                return
    except BaseException as exc:
        soak.errors.append(exc)
        soak.stopping.set()


def write_samples(series: dict[tuple[str, int], list[Sample]], path: Path) -> None:
    """Every sample of every process, so a slope over the target can be read back as a
    steady creep or as one step (a buffer grown once inside the judged span)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["role", "pid", "seconds", "rss_kib", "anon_kib", "file_kib", "fds",
                      "threads"])
        for (role, pid), samples in sorted(series.items()):
            for s in samples:
                out.writerow([role, pid, f"{s.at:.1f}", s.rss_kib, s.anon_kib, s.file_kib,
                              s.fds, s.threads])


@contextlib.contextmanager
def samples_kept(series: dict[tuple[str, int], list[Sample]], path: Path | None) -> Iterator[None]:
    """Write the samples taken so far when a run fails or is stopped (^C) before its
    report: 40 minutes into a run they are the only record of what happened."""
    try:
        yield
    except BaseException:
        if path is not None:
            write_samples(series, path)
            print(f"the samples taken so far: {path}", flush=True)
        raise


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) pairs, per hour."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def slope_at_fixed_threads(points: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """Least-squares fit of value = a + b * seconds + c * threads over (seconds, threads,
    value) triples: b per hour (the rise a constant thread count does not explain) and c
    (the value per thread added). None when the thread count never changed, or changed
    in step with time, so the two cannot be told apart.

    Why: a pool creates a thread only when more requests overlap than ever before, and
    the thread's stack and allocator caches stay resident after; such a step is bounded
    by the pool's size. A creep shows as b, a new peak of overlap as c. Information only:
    the verdict is the plain slope."""
    n = len(points)
    mt, mh, mv = (sum(p[i] for p in points) / n for i in range(3))
    stt = sum((t - mt) ** 2 for t, _, _ in points)
    shh = sum((h - mh) ** 2 for _, h, _ in points)
    sth = sum((t - mt) * (h - mh) for t, h, _ in points)
    stv = sum((t - mt) * (v - mv) for t, _, v in points)
    shv = sum((h - mh) * (v - mv) for _, h, v in points)
    det = stt * shh - sth * sth
    if shh == 0 or det <= 1e-9 * stt * shh:
        return None
    return (shh * stv - sth * shv) / det * 3600, (stt * shv - sth * stv) / det


@dataclass(slots=True)
class Slope:
    role: str
    pid: int
    mib_per_hour: float
    fds_per_hour: float
    last_mib: float
    span_minutes: float
    anon_per_hour: float = 0.0
    file_per_hour: float = 0.0
    threads: tuple[int, int] = (0, 0)  # at the start and at the end of the judged span
    step_mib: float = 0.0  # the largest rise between two samples: one step or a creep
    # (MiB/hour at a constant thread count, KiB per thread added); None: threads flat
    by_threads: tuple[float, float] | None = None


@dataclass(slots=True)
class Young:
    """A series not judged: it did not live ``min_span`` past its warm-up."""

    role: str
    pid: int
    life_minutes: float


def slopes(soak: Soak) -> tuple[list[Slope], list[Young]]:
    """The judged series, and those too young to judge (their life after warm-up is
    shorter than ``min_span``: a successor started late in the run)."""
    warmup, min_span = soak.settings.warmup * 60, soak.settings.min_span * 60
    found, young = [], []
    for (role, pid), samples in sorted(soak.series.items()):
        # Each process warms up from its own first sample, a successor as much as the
        # processes that started with the run.
        kept = [s for s in samples if s.at >= samples[0].at + warmup]
        if len(kept) < 3 or kept[-1].at - kept[0].at < min_span:
            young.append(Young(role, pid, (samples[-1].at - samples[0].at) / 60))
            continue
        found.append(Slope(
            role, pid, slope_per_hour([(s.at, s.rss_kib / 1024) for s in kept]),
            slope_per_hour([(s.at, s.fds) for s in kept]), kept[-1].rss_kib / 1024,
            (kept[-1].at - kept[0].at) / 60,
            slope_per_hour([(s.at, s.anon_kib / 1024) for s in kept]),
            slope_per_hour([(s.at, s.file_kib / 1024) for s in kept]),
            (kept[0].threads, kept[-1].threads),
            max(b.rss_kib - a.rss_kib for a, b in itertools.pairwise(kept)) / 1024,
            slope_at_fixed_threads([(s.at, s.threads, s.rss_kib / 1024) for s in kept])))
    return found, young


# --------------------------------------------------------------------------- accounting


def account(soak: Soak) -> dict[str, int]:
    """Nothing QUEUED or SENDING any more; every accepted key one record, sent, and its
    text at the simulated recipient; duplicates only when flagged uncertain."""
    gw = soak.gw
    wait_for(lambda: drained(gw), 120, 0.5, "no message QUEUED or SENDING")
    refused = [o for o in soak.outcomes if o.refused is not None]
    undecided = [o for o in soak.outcomes if not o.accepted and o.refused is None]
    by_key = {o.key: o for o in soak.outcomes}
    mine = [r for r in records(gw) if r["idempotencyKey"] in by_key]
    keys = Counter(r["idempotencyKey"] for r in mine)
    accepted = {o.key for o in soak.outcomes if o.accepted}
    unsent = [r for r in mine if r["state"] not in ("SENT", "DELIVERED", "READ")]
    arrived = Counter(m["text"] for m in gw.inbox())
    lost = [k for k in accepted if by_key[k].text not in arrived]
    uncertain = {by_key[r["idempotencyKey"]].text for r in mine if r["uncertain"]}
    twice = {t: n for t, n in arrived.items() if n > 1 and t.startswith("soak-")}
    return {"messages": len(soak.outcomes), "accepted": len(accepted),
            "refused": len(refused), "undecided": len(undecided),
            "keys without a record": len(accepted - set(keys)),
            "keys with several records": sum(1 for n in keys.values() if n > 1),
            "accepted not sent": len(unsent), "lost": len(lost),
            "duplicates": sum(n - 1 for n in twice.values()),
            "duplicates not flagged uncertain": sum(1 for t in twice if t not in uncertain),
            "delivered receipts": sum(1 for r in mine if r["state"] in ("DELIVERED", "READ"))}


# --------------------------------------------------------------------------- report


def print_report(soak: Soak, counts: dict[str, int], found: list[Slope],
                 young: list[Young]) -> None:
    out = print
    s = soak.settings
    out()
    out("=" * 100)
    out("wagate soak")
    out(f"{s.minutes:g} min at {s.rate:g} sends/s over {s.sessions} sessions, receipts on, "
        f"a drop every {s.drop_every:g} s, an actor SIGKILLed every {s.kill_every:g} s, "
        f"samples every {s.sample:g} s, seed {s.seed}")
    out(f"each process judged after its own first {s.warmup:g} min, when it lived "
        f"{s.min_span:g} min more")
    out("-" * 100)
    floors = [x.mib_per_hour for x in found if x.role == "web arbiter"]
    floor = floors[0] if floors else float("nan")
    out(f"floor: the gunicorn arbiter (no work): {floor:+.2f} MiB/hour")
    for x in found:
        ok = x.mib_per_hour < TARGET_MIB_PER_HOUR
        out(f"{x.role + ' ' + str(x.pid):26} RSS {x.last_mib:5.1f} MiB "
            f"{x.mib_per_hour:+6.2f} MiB/h (anon {x.anon_per_hour:+6.2f}, file "
            f"{x.file_per_hour:+6.2f})  fds {x.fds_per_hour:+6.1f}/h  "
            f"threads {x.threads[0]:>3}->{x.threads[1]:<3} step {x.step_mib:4.1f} "
            f"{x.span_minutes:4.1f} min  < {TARGET_MIB_PER_HOUR:g}  "
            f"{'PASS' if ok else 'FAIL'}")
    grown = [(x, x.by_threads) for x in found if x.by_threads is not None]
    if grown:
        out("series whose threads changed, fitted on time and thread count (information; "
            "the verdict above is the plain slope):")
    for x, (creep, per_thread) in grown:
        out(f"  {x.role + ' ' + str(x.pid):26} {creep:+6.2f} MiB/h at a constant "
            f"thread count, {per_thread * 1024:+6.0f} KiB per thread added")
    if young:
        out(f"too young to judge ({len(young)}): " + ", ".join(
            f"{x.role} {x.pid} ({x.life_minutes:.1f} min)" for x in young))
    out("-" * 100)
    bad = ("refused", "undecided", "keys without a record", "keys with several records",
           "accepted not sent", "lost", "duplicates not flagged uncertain")
    for name, value in counts.items():
        verdict = ("PASS" if value == 0 else "FAIL") if name in bad else "info"
        out(f"{name:58} {value:>10}  {verdict}")
    refusals = Counter(o.refused for o in soak.outcomes if o.refused is not None)
    if refusals:
        out("refused, by answer: " + "; ".join(f"{n} x {why}" for why, n in
                                              refusals.most_common(5)))
    out(f"faults ({len(soak.faults)}): " + "; ".join(soak.faults))
    out("=" * 100)


def daily_limit(rate: float, minutes: float) -> int:
    """``limits.global_per_day`` for a run: the chaos test's (100 000) is under what a run
    longer than 83 minutes sends, and the load would turn into refusals (a 90-minute
    run's last 7 minutes did). Twice the run's sends (``load_thread`` stops at the run's
    end), so that retries never meet it either."""
    return max(CHAOS_CONFIG["limits"]["global_per_day"], 2 * math.ceil(rate * minutes * 60))


def run(settings: SoakSettings) -> int:
    names = [f"soak{i}" for i in range(1, settings.sessions + 1)]
    per_day = daily_limit(settings.rate, settings.minutes)
    overrides = {**CHAOS_CONFIG, "simulator": {"send_delay_seconds": 0.0},
                 "limits": {**CHAOS_CONFIG["limits"], "global_per_day": per_day},
                 "sessions": {"max_sessions": settings.sessions},
                 "http": {"workers": 2, "threads": LOAD_THREADS + 4}}
    with tempfile.TemporaryDirectory(prefix="wagate-soak-") as tmp:
        gw = Gateway(Path(tmp), overrides)
        soak = Soak(settings, gw, names)
        threads: list[threading.Thread] = []
        with samples_kept(soak.series, settings.samples_out):
            try:
                print(f"starting the gateway and linking {len(names)} sessions ...", flush=True)
                gw.start(60)
                for name in names:
                    gw.link(name)
                gw.sim("auto-receipt", "delivered")
                token = gw.make_token("sender")
                print(f"soaking for {settings.minutes:g} min ...", flush=True)
                soak.start = time.monotonic()
                targets = [(load_thread, (soak, token))] * LOAD_THREADS + [
                    (fault_thread, (soak,)), (sample_thread, (soak,))]
                for target, args in targets:
                    thread = threading.Thread(target=target, args=args, daemon=True)
                    thread.start()
                    threads.append(thread)
                for thread in threads:
                    thread.join(settings.minutes * 60 + 2 * REQUEST_TIMEOUT_SECONDS + 180)
                if soak.errors:
                    raise soak.errors[0]
                print("accounting ...", flush=True)
                counts = account(soak)
                found, young = slopes(soak)
                gw.stop()
            finally:
                soak.stopping.set()
                leaked = gw.cleanup()
                if leaked:
                    print(f"gateway processes had to be killed: {leaked}", flush=True)
    print_report(soak, counts, found, young)
    if settings.samples_out is not None:  # after the report: a bad path cannot lose it
        write_samples(soak.series, settings.samples_out)
    return 0


def parse_args(argv: list[str] | None) -> SoakSettings:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.soak",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="sends per second")
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--drop-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--samples", type=Path, default=None, metavar="CSV",
                        help="also write every sample of every process to this file")
    parser.add_argument("--warmup", type=float, default=None,
                        help=f"minutes of each process's life not judged "
                             f"(default {WARMUP_MINUTES:g}, at most half the run)")
    parser.add_argument("--min-span", type=float, default=None,
                        help=f"minutes after its warm-up a process must live to be judged "
                             f"(default {MIN_SPAN_MINUTES:g}, at most the rest of the run)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(WARMUP_MINUTES, args.minutes / 2)
    if args.min_span is None:
        args.min_span = min(MIN_SPAN_MINUTES, (args.minutes - args.warmup) * 0.9)
    for name in ("minutes", "rate", "drop_every", "kill_every", "sample", "warmup",
                 "min_span"):
        value = getattr(args, name)
        if not 0 < value < float("inf"):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    if not 1 <= args.sessions <= 50:
        parser.error("--sessions is 1 to 50")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    if args.samples is not None and not args.samples.resolve().parent.is_dir():
        parser.error(f"--samples: no directory {args.samples.resolve().parent}")
    if daily_limit(args.rate, args.minutes) > MAX_DAILY_LIMIT:
        parser.error(f"--rate times --minutes is more sends than the gateway's daily limit "
                     f"can admit (at most {MAX_DAILY_LIMIT // 2:,} in a run)")
    if args.warmup + args.min_span > args.minutes:
        parser.error("--warmup plus --min-span must fit in --minutes")
    return SoakSettings(args.minutes, args.rate, args.sessions, args.drop_every,
                        args.kill_every, args.sample, seed, args.warmup, args.min_span,
                        args.samples)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
