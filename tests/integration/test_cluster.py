"""Several hosts in one Thespian convention, on one machine: a leader and a member.

Two real ``wagate serve`` processes on loopback with their own HTTP and admin ports
and data_dirs, sharing the session store, the simulated WhatsApp service and the
storage key (as hosts of a cluster share Postgres or a network directory). Heartbeats
are shrunk through the config, never patched out.

The webhook worker runs beside the outbox on the leader: the failover test declares an
endpoint on a loopback receiver and checks that the events of sessions on the member,
and after the member's loss, all reach it once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.webhooks import signing
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_webhooks import assert_delivered_as_logged, pulled_events
from tests.webhooks.receiver import Receiver

LEADER, MEMBER = "alpha", "beta"
HEARTBEAT = {"heartbeat_seconds": 1.0, "heartbeat_misses": 3}
FAILOVER_DEADLINE = 30.0  # the bound; the measured time is printed
# A member is ready once the leader's supervisor answers it through the convention:
# a second gateway on a loaded machine took more than the harness's 30 s.
MEMBER_START_DEADLINE = 60.0


def _cluster(make_gateway: Callable[..., Gateway], shared: Path,
             webhook: str | None = None) -> tuple[Gateway, Gateway]:
    """A leader and a member; ``webhook``: a url the leader's config declares as an
    endpoint (its secret in WAGATE_TEST_WEBHOOK_SECRET)."""
    stores = {"storage": {"sessions_dir": str(shared / "sessions")},
              "simulator": {"server_dir": str(shared / "simulator")}}
    common = {"advertise_address": "127.0.0.1", "allow_networks": ["127.0.0.1/32"], **HEARTBEAT}
    hooks = {"webhooks": {"allow_insecure": ["127.0.0.0/8"]}} if webhook else {}
    leader = make_gateway({**stores, **hooks, "cluster": {"role": "leader", "host_name": LEADER,
                                                          "sessions": 1, **common}},
                          name="leader")
    if webhook:
        with leader.config_path.open("a", encoding="utf-8") as config:
            config.write(f'\n[[webhooks.endpoints]]\nurl = "{webhook}"\n'
                         'secret_env = "WAGATE_TEST_WEBHOOK_SECRET"\n')
    member = make_gateway({**stores, "cluster": {
        "role": "member", "host_name": MEMBER, "sessions": 2,
        "leaders": [f"127.0.0.1:{leader.admin_port}"], **common}},
        name="member", key_file=leader.key_file)
    return leader, member


def _hosts(gw: Gateway) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in gw.health().get("hosts", [])}


def _member_alive(leader: Gateway) -> bool:
    host = _hosts(leader).get(MEMBER)
    return bool(host and host["alive"])


def _placement(gw: Gateway, session: str) -> dict[str, Any]:
    result = gw.gql("query($s: String) { whatsAppStatus(session: $s) { state host } }",
                    {"s": session})
    assert not result.errors, result
    return result.data["whatsAppStatus"]


def _session_pids(gw: Gateway) -> dict[str, int]:
    return {s["session"]: int(s["pid"]) for s in gw.health()["sessions"] if s["pid"]}


def _holding(pids: set[int], path: Path) -> set[int]:
    """The processes among ``pids`` that have ``path`` open: which host's process runs
    a worker, seen from /proc (the workers report no host of their own)."""
    target = str(path.resolve())
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        found.add(pid)
    return found


def test_cluster_mode_refuses_to_start_without_allow_networks(tmp_path: Path) -> None:
    config = tmp_path / "leader.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                      '[transport]\nengine = "simulator"\n'
                      '[cluster]\nrole = "leader"\nadvertise_address = "127.0.0.1"\n',
                      encoding="utf-8")
    # No --demo: the demo runs on one host only (refused at load, tested in test_config).
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done
    assert "cluster.allow_networks" in done.stderr, done.stderr
    assert "firewall" in done.stderr, done.stderr


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Receiver, str]]:
    """A loopback webhook receiver answering 200 and its endpoint's secret (in the
    variable ``_cluster`` names). Asked for before ``make_gateway``: it stops after
    the gateways."""
    secret = signing.new_secret()
    monkeypatch.setenv("WAGATE_TEST_WEBHOOK_SECRET", secret)
    with Receiver() as receiver:
        yield receiver, secret


def test_sessions_spread_fail_over_and_never_run_twice(
        hook: tuple[Receiver, str], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    receiver, secret = hook
    leader, member = _cluster(make_gateway, tmp_path / "shared", webhook=receiver.url())
    leader.start()
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join the leader")

    # The actor system accepts nobody outside allow_networks (127.0.0.2 is loopback too,
    # but not in 127.0.0.1/32): the connection is closed before anything is read.
    with socket.create_connection(("127.0.0.1", leader.admin_port), timeout=5,
                                  source_address=("127.0.0.2", 0)) as probe:
        probe.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # closed, or reset: both refuse
            assert probe.recv(1) == b""

    # Placement: the leader's one slot first (ties go to the local host), then the member.
    for session in ("s1", "s2", "s3"):
        leader.link(session)
    where = {s: _placement(leader, s)["host"] for s in ("s1", "s2", "s3")}
    assert where == {"s1": LEADER, "s2": MEMBER, "s3": MEMBER}, where
    hosts = _hosts(leader)
    assert (hosts[LEADER]["sessions"], hosts[MEMBER]["sessions"]) == (1, 2), hosts
    health_hosts = {s["session"]: s["host"] for s in leader.health()["sessions"]}
    assert health_hosts == where
    member_pids = set(member.actor_pids())
    pids = _session_pids(leader)
    assert pids["s2"] in member_pids and pids["s3"] in member_pids, (pids, member_pids)
    assert pids["s1"] not in member_pids
    # The outbox and the webhook worker run on the leader, which writes the event log;
    # the events of the member's sessions reach the receiver from there.
    leader_pids = set(leader.actor_pids())
    outbox = leader.health()["processes"]["outbox"]
    assert outbox in _holding(leader_pids, leader.data_dir / "outbox" / "messages.sqlite3")
    endpoints = leader.data_dir / "webhooks" / "endpoints.sqlite3"
    assert _holding(leader_pids, endpoints) and not _holding(member_pids, endpoints)
    wait_for(lambda: _received_all(leader, receiver), 20, 0.2, "the sessions' events")
    assert {"s2", "s3"} <= {e["session"] for e in pulled_events(leader)}

    # The member's own API reaches the leader's supervisor.
    assert _placement(member, "s2") == {"state": "CONNECTED", "host": MEMBER}
    assert not member.send("+14155552671", "through the member", session="s1").errors

    # Power cut on the member: its sessions come back on the leader, over its slots.
    killed_at = time.monotonic()
    member.kill_everything()
    queued = {"s2": "queued for s2 while its host was dead",
              "s3": "queued for s3 while its host was dead"}
    for session, text in queued.items():
        result = leader.send("+14155552672", text, session=session)
        # Accepted at once, or (sent to the dead process) not confirmed in time: still
        # queued, and the answer says so.
        assert not result.errors or result.error_code == "SEND_UNCONFIRMED", result

    def moved() -> bool:
        return all(_placement(leader, s) == {"state": "CONNECTED", "host": LEADER}
                   for s in ("s2", "s3"))

    wait_for(moved, FAILOVER_DEADLINE, 0.1, "the member's sessions to connect on the leader")
    took = time.monotonic() - killed_at
    print(f"\nre-placement after SIGKILL of the member: {took:.1f} s "
          f"(heartbeat {HEARTBEAT['heartbeat_seconds']:g} s x {HEARTBEAT['heartbeat_misses']})")
    assert took < FAILOVER_DEADLINE

    def delivered() -> bool:
        texts = [m["text"] for m in leader.inbox()]
        return all(texts.count(t) == 1 for t in queued.values())

    wait_for(delivered, 20, 0.2, "the queued messages to be delivered")
    # The webhook worker went on through the member's loss: nothing of it is missing.
    wait_for(lambda: _received_all(leader, receiver), 20, 0.2,
             "the events of the re-placed sessions")

    # The member comes back: it gets no copy of a session that runs on the leader.
    member.start(MEMBER_START_DEADLINE)
    wait_for(lambda: _member_alive(leader), 15, 0.1, "the member to join again")
    leader_pids = set(leader.actor_pids())
    window_end = time.monotonic() + 4 * HEARTBEAT["heartbeat_seconds"]
    while time.monotonic() < window_end:  # several heartbeats with the member back
        for session in ("s1", "s2", "s3"):
            assert _placement(leader, session) == {"state": "CONNECTED", "host": LEADER}
        pids = _session_pids(leader)
        assert set(pids.values()) <= leader_pids, pids
        assert _hosts(leader)[MEMBER]["sessions"] == 0
        time.sleep(0.2)
    # One process per session across both hosts: none of the member's runs a session.
    assert not set(_session_pids(leader).values()) & set(member.actor_pids())
    assert len(set(_session_pids(leader).values())) == 3
    # A new session may land on the member again.
    leader.link("s4")
    assert _placement(leader, "s4")["host"] == MEMBER

    # Every event, before and after the member's loss, reached the receiver once: one
    # webhook worker delivers them, and it never stopped.
    wait_for(lambda: _received_all(leader, receiver), 20, 0.2, "every event of the log")
    requests = list(receiver.requests)
    assert_delivered_as_logged(secret, requests, pulled_events(leader))
    ids = [r.headers["webhook-id"] for r in requests]
    assert len(ids) == len(set(ids)), "an event delivered twice"


def _received_all(leader: Gateway, receiver: Receiver) -> bool:
    got = {r.headers["webhook-id"] for r in list(receiver.requests)}
    return all(e["id"] in got for e in pulled_events(leader))
