"""A leader and a member in network namespaces, under load: the pieces the fault tests
share (``test_partitions``, ``test_member_faults``).

Each host is a real ``wagate serve`` in a namespace of its own, joined through a
bridge namespace that also runs the leases' PostgreSQL (``tests/netns.py``); the
simulated WhatsApp service is shared through files. ``Load`` sends messages through
the leader's API (each with its own idempotency key, retried on transient answers);
``check_messages`` holds the simulated inbox against the records, and the connection
log (``connection_log``) is the witness for overlap.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from actors.transport.connection_log import ConnectionRecord, overlaps, parse_records
from actors.transport.simulator import CONNECTIONS_LOG
from tests import netns
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_chaos import RETRYABLE_CODES, drained, records
from tests.pg import PgCluster, find_bindir

LEADER, MEMBER = "alpha", "beta"
HEARTBEAT = {"heartbeat_seconds": 1.0, "heartbeat_misses": 3}
LEASE = {"lease_seconds": 3.0, "lease_renew_seconds": 0.5, "lease_margin_seconds": 1.0}
MEMBER_START_DEADLINE = 60.0
PHONE = "+14155550123"
SEND = ("mutation($input: SendWhatsAppMessageInput!) { "
        "sendWhatsAppMessage(input: $input) { id state } }")
REQUEST_TIMEOUT_SECONDS = 15.0
DELAYED_SECONDS = 1.0  # a message that reached the inbox later than this after its send


@pytest.fixture
def net() -> Iterator[netns.Topology]:
    why_not = netns.available()
    if why_not is not None:
        pytest.skip(why_not)
    topology = netns.Topology((LEADER, MEMBER)).create()
    try:
        yield topology
    finally:
        topology.destroy()


@pytest.fixture
def pg(net: netns.Topology) -> Iterator[PgCluster]:
    """The leases' PostgreSQL, in the bridge namespace, on the bridge's address."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb and postgres are not installed; run "
                    "scripts/system-deps as root")
    cluster = PgCluster(bindir, prefix=tuple(net.bridge_prefix()), listen=net.bridge_address)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def make_cluster(make_gateway: Callable[..., Gateway], net: netns.Topology, pg: PgCluster,
                 shared: Path, lease: dict[str, float] | None = None,
                 **cluster: Any) -> tuple[Gateway, Gateway]:
    """A leader with one session slot and a member with two, each in its namespace;
    ``cluster``: more ``[cluster]`` keys for both."""
    stores = {"storage": {"sessions_dir": str(shared / "sessions")},
              "simulator": {"server_dir": str(shared / "simulator")},
              "messages": {"send_timeout_seconds": 2.0},
              "delivery": {"retry_base_seconds": 0.1, "retry_max_seconds": 0.5,
                           "tick_seconds": 0.2},
              "reconnect": {"attempts": 1000, "delay_seconds": 0.2,
                            "connect_timeout_seconds": 5.0},
              "supervisor": {"restart_backoff_seconds": [0.2], "restart_budget": 100},
              "http": {"workers": 1, "threads": 16},
              "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                         "global_per_day": 100_000}}
    common = {"allow_networks": [f"{net.address(h)}/32" for h in net.hosts],
              "database_url": pg.url(), **HEARTBEAT, **(lease or LEASE), **cluster}

    def host(role: str, name: str, slots: int, **extra: Any) -> Gateway:
        return make_gateway(
            {**stores, "cluster": {"role": role, "host_name": name, "sessions": slots,
                                   "advertise_address": net.address(name), **common, **extra}},
            name=name, prefix=tuple(net.prefix(name)), host=net.address(name),
            **({"key_file": leader.key_file} if role == "member" else {}))

    leader = host("leader", LEADER, 1)
    member = host("member", MEMBER, 2, leaders=[f"{net.address(LEADER)}:{leader.admin_port}"])
    return leader, member


def _hosts(gw: Gateway) -> dict[str, dict[str, Any]]:
    with contextlib.suppress(requests.RequestException, ValueError):
        return {h["name"]: h for h in gw.health().get("hosts", [])}
    return {}


def member_alive(leader: Gateway) -> bool:
    host = _hosts(leader).get(MEMBER)
    return bool(host and host["alive"])


def placement(gw: Gateway, session: str) -> dict[str, Any]:
    result = gw.gql("query($s: String) { whatsAppStatus(session: $s) { state host } }",
                    {"s": session})
    assert not result.errors, result
    return dict(result.data["whatsAppStatus"])


def connection_log(shared: Path) -> list[ConnectionRecord]:
    path = shared / "simulator" / CONNECTIONS_LOG
    return parse_records(path.read_text(encoding="utf-8")) if path.exists() else []


def open_connections(log: list[ConnectionRecord]) -> Counter[str]:
    """Per session, the connections up now (an up without its down)."""
    downs = {r.conn for r in log if r.kind == "down"}
    return Counter(r.session for r in log if r.kind == "up" and r.conn not in downs)


@dataclass
class Outcome:
    n: int
    session: str
    key: str
    text: str
    first_try: float = 0.0  # wall clock
    accepted: bool = False
    refused: str | None = None
    tries: int = 0


@dataclass
class Load:
    """Threads sending ``count`` messages through ``gw``'s API, one every ``spacing``
    seconds, over ``sessions`` in turn; each retries the identical request (same key)
    on a transient answer until a definite one."""

    gw: Gateway
    sessions: tuple[str, ...]
    count: int
    spacing: float
    prefix: str
    threads: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outcomes = [Outcome(n, self.sessions[n % len(self.sessions)],
                                 f"{self.prefix}-key-{n}", f"{self.prefix}-{n}")
                         for n in range(self.count)]
        self._next = iter(self.outcomes)
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def start(self, give_up_after: float) -> None:
        self.start_time = time.monotonic()
        self.deadline = self.start_time + give_up_after
        self.token = self.gw.make_token("sender")
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def join(self) -> None:
        for worker in self._workers:
            worker.join(max(0.0, self.deadline - time.monotonic()) + REQUEST_TIMEOUT_SECONDS)
        assert not [w.name for w in self._workers if w.is_alive()], "load threads still run"
        if self.errors:
            raise self.errors[0]

    def _take(self) -> Outcome | None:
        with self._lock:
            return None if self.stopping.is_set() else next(self._next, None)

    def _run(self) -> None:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {self.token}"
        try:
            while (outcome := self._take()) is not None:
                due = self.start_time + outcome.n * self.spacing
                if self.stopping.wait(max(0.0, due - time.monotonic())):
                    return
                outcome.first_try = time.time()
                while time.monotonic() < self.deadline and not self.stopping.is_set():
                    outcome.tries += 1
                    if self._try(http, outcome):
                        break
                    self.stopping.wait(0.1)
        except BaseException as exc:
            self.errors.append(exc)
            self.stopping.set()
        finally:
            http.close()

    def _try(self, http: requests.Session, outcome: Outcome) -> bool:
        """One request; True when the answer is definite."""
        body = {"query": SEND, "variables": {"input": {
            "phoneNumber": PHONE, "message": outcome.text, "session": outcome.session,
            "idempotencyKey": outcome.key}}}
        try:
            response = http.post(self.gw.url + "/graphql", json=body,
                                 timeout=REQUEST_TIMEOUT_SECONDS)
            result = response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return False
        if result is None:
            return False
        assert "Traceback" not in response.text, response.text
        errors = result.get("errors") or []
        if not errors:
            outcome.accepted = bool(result["data"]["sendWhatsAppMessage"]["id"])
            return True
        code = errors[0].get("extensions", {}).get("code", "")
        if code in RETRYABLE_CODES or code in ("SEND_UNCONFIRMED", "UNCERTAIN", "LEASE_HELD"):
            return False
        outcome.refused = f"{code}: {errors[0].get('message')}"
        return True


def check_messages(leader: Gateway, load: Load) -> dict[str, float]:
    """Nothing lost, no unflagged duplicate; returns the delays seen."""
    wait_for(lambda: drained(leader), 60, 0.2, "no message QUEUED or SENDING")
    refused = {o.key: o.refused for o in load.outcomes if o.refused}
    assert not refused, refused
    undecided = [o.key for o in load.outcomes if not o.accepted]
    assert not undecided, f"no definite answer: {undecided}"
    by_key = {o.key: o for o in load.outcomes}
    mine = [r for r in records(leader) if r["idempotencyKey"] in by_key]
    keys = Counter(r["idempotencyKey"] for r in mine)
    assert set(keys) == set(by_key) and max(keys.values()) == 1, keys
    uncertain = {by_key[r["idempotencyKey"]].text for r in mine if r["uncertain"]}
    inbox = [m for m in leader.inbox() if m["text"].startswith(load.prefix + "-")]
    arrived = Counter(m["text"] for m in inbox)
    lost = [o.text for o in load.outcomes if o.text not in arrived]
    assert not lost, f"accepted but never delivered: {lost}"
    twice = {t: n for t, n in arrived.items() if n > 1}
    unflagged = {t: n for t, n in twice.items() if t not in uncertain}
    assert not unflagged, f"duplicates not flagged uncertain: {unflagged}"
    first = {o.text: o.first_try for o in load.outcomes}
    delays = [float(m["time"]) - first[m["text"]] for m in inbox]
    return {"messages": len(load.outcomes),
            "delayed": sum(1 for d in delays if d > DELAYED_SECONDS),
            "max_delay_s": round(max(delays), 2),
            "duplicates": sum(n - 1 for n in twice.values())}


def assert_one_copy_each(shared: Path, sessions: tuple[str, ...], until_ns: int) -> None:
    """Zero overlap over the whole run, and exactly one connection per session now."""
    log = connection_log(shared)
    found = overlaps(log, until_ns=until_ns)
    assert found == [], found
    now = open_connections(log)
    assert {s: now[s] for s in sessions} == dict.fromkeys(sessions, 1), now


def start_cluster(make_gateway: Callable[..., Gateway], net: netns.Topology, pg: PgCluster,
                  shared: Path, lease: dict[str, float] | None = None,
                  **cluster: Any) -> tuple[Gateway, Gateway]:
    leader, member = make_cluster(make_gateway, net, pg, shared, lease, **cluster)
    leader.start()
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: member_alive(leader), 20, 0.1, "the member to join the leader")
    for session in ("s1", "s2", "s3"):
        leader.link(session)
    where = {s: placement(leader, s)["host"] for s in ("s1", "s2", "s3")}
    assert where == {"s1": LEADER, "s2": MEMBER, "s3": MEMBER}, where
    return leader, member


@dataclass
class Figures:
    """What a scenario measured, in seconds from the fault (None: it did not happen)."""

    fence: dict[str, float | None]
    replace: dict[str, float | None]

    @staticmethod
    def of(log: list[ConnectionRecord], since_ns: int, sessions: tuple[str, ...],
           old_host: str, new_host: str) -> Figures:
        def first(kind: str, host: str, session: str) -> float | None:
            times = [r.at_ns for r in log if r.kind == kind and r.host == host
                     and r.session == session and r.at_ns >= since_ns]
            return round((min(times) - since_ns) / 1e9, 2) if times else None

        return Figures({s: first("down", old_host, s) for s in sessions},
                       {s: first("up", new_host, s) for s in sessions})


def run_with_load(leader: Gateway, prefix: str, fault: Callable[[], None],
                  count: int = 60, spacing: float = 0.25, give_up_after: float | None = None,
                  cleanup: Callable[[], None] = lambda: None) -> tuple[Load, int]:
    """Start the load, let it flow a while, inject ``fault`` (which returns once the
    fault is over and healed), finish the load; returns it and when the fault began.
    ``cleanup`` runs however it ends (e.g. heal what ``fault`` may have left)."""
    load = Load(leader, ("s1", "s2", "s3"), count, spacing, prefix)
    load.start(give_up_after=count * spacing + 60 if give_up_after is None else give_up_after)
    try:
        wait_for(lambda: sum(o.accepted for o in load.outcomes) >= 8, 20, 0.1,
                 "the load to flow")
        fault_ns = time.time_ns()
        fault()
        load.join()
    finally:
        load.stopping.set()
        cleanup()
    return load, fault_ns


def settle(leader: Gateway, shared: Path) -> None:
    """Every session connected, once, and the member back in the cluster."""
    wait_for(lambda: member_alive(leader), 30, 0.2, "the member to be back")
    wait_for(lambda: all(placement(leader, s)["state"] == "CONNECTED"
                         for s in ("s1", "s2", "s3")), 30, 0.2, "every session connected")
    wait_for(lambda: all(open_connections(connection_log(shared))[s] == 1
                         for s in ("s1", "s2", "s3")), 15, 0.2,
             "one connection per session")
