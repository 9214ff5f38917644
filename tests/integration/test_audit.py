"""The audit log of a real gateway: what it records, that `wagate audit verify` passes
on it and fails on a tampered copy, that admin actions keep one writer, and that a
killed audit actor is restarted without breaking the chain."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from actors.audit.log import audit_dir, lock_holder, log_files, verify
from gateway.cli.audit_client import record_admin_action
from gateway.core.config import lease_mode, load_config
from tests.integration.harness import Gateway, wait_for

ROOT = Path(__file__).resolve().parents[2]

# A client that records one entry, waits for a line on stdin, then records another:
# the second goes to the address it cached for the audit actor before that was killed.
CACHED_CLIENT = """
import sys
from gateway.web.bridge import ActorBridge
bridge = ActorBridge(int(sys.argv[1]), 5.0)
bridge.audit("test.before", "req-before", n=1)
print("ready", flush=True)
sys.stdin.readline()
bridge.audit("test.after", "req-after", n=2)
print("done", flush=True)
"""

ADMIN_ACTION = """
import sys
from gateway.cli.audit_client import record_admin_action
from gateway.core.config import lease_mode, load_config
record_admin_action(load_config(sys.argv[1]), "token.create", name="ci", role="sender")
"""


def entries(gw: Gateway) -> list[dict[str, Any]]:
    """Every entry of ``gw``'s audit chain: its files, or in multi-host mode with a
    database the chain there (shared by every leader on it)."""
    config = load_config(gw.config_path)
    if lease_mode(config):
        return database_entries(config.cluster.database_url, _test_began(gw))
    found = []
    for _, path in log_files(audit_dir(gw.data_dir)):
        for line in path.read_text().splitlines():
            if line.endswith("}"):  # an entry being written right now is not read half
                found.append(json.loads(line))
    return found


def database_entries(url: str, since: float = 0.0) -> list[dict[str, Any]]:
    """The entries of the chain in PostgreSQL, in chain order ([] before the first),
    made (or queued) at ``since`` (unix time) or later."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('wagate_audit') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return []
        found = [json.loads(r[0]) for r in
                 conn.execute("SELECT entry FROM wagate_audit ORDER BY seq")]
    return [e for e in found if _unix(e.get("queued_at", e["time"])) >= since]


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _test_began(gw: Gateway) -> float:
    """When this test made its first gateway: a module's tests share one database, so
    entries from before are another test's. (Gateways are made under the test's
    temp dir, each with its config file.)"""
    return min(p.stat().st_mtime for p in gw.root.parent.glob("*/gateway.toml"))


def events(gw: Gateway, name: str) -> list[dict[str, Any]]:
    return [e for e in entries(gw) if e["event"] == name]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_the_audit_log_of_a_real_gateway(make_gateway: Callable[..., Gateway],
                                         tmp_path: Path) -> None:
    gw = make_gateway().start()
    audit = audit_dir(gw.data_dir)
    gw.link()
    text = f"audit probe {uuid.uuid4().hex}"
    result = gw.send("+1 415 555 2671", text)
    assert result.data == {"sendWhatsAppNotification": True}, result
    assert not gw.disconnect().errors
    gw.wait_state("LOGGED_OUT")

    def changes() -> list[tuple[str | None, str]]:
        return [(e.get("old"), e["new"]) for e in events(gw, "session.state")
                if e["session"] == "default"]

    wait_for(lambda: changes() and changes()[-1][1] == "LOGGED_OUT",
             message="the logout in the audit log")
    states = [new for _, new in changes()]
    for state in ("CONNECTING", "QR_PENDING", "CONNECTED", "LOGGED_OUT"):
        assert state in states, states
    assert states.index("QR_PENDING") < states.index("CONNECTED") < states.index("LOGGED_OUT")
    assert ("CONNECTED", "LOGGED_OUT") in changes()
    [connected] = [e for e in events(gw, "session.state") if e["new"] == "CONNECTED"]
    assert connected["phone"].startswith("+") and "*" in connected["phone"]  # masked
    assert events(gw, "gateway.started") and events(gw, "audit.opened")

    # The web tier's mutations reach the log through the bridge, recipients masked.
    sends = wait_for(lambda: [e for e in events(gw, "mutation")
                              if e.get("operation") == "sendWhatsAppNotification"],
                     message="the send in the audit log")
    assert sends[0]["outcome"] == "ok" and sends[0]["recipient"] == "+1********71"

    # No message text, no full number, anywhere in the audit directory.
    for path in audit.iterdir():
        raw = path.read_bytes()
        assert text.encode() not in raw and b"14155552671" not in raw, path.name
    assert stat.S_IMODE(audit.stat().st_mode) == 0o700
    for _, path in log_files(audit):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # An admin action while the gateway runs goes through its audit actor ...
    writer = lock_holder(audit)
    assert writer is not None and writer["writer"] == "gateway"
    done = subprocess.run([sys.executable, "-c", ADMIN_ACTION, str(gw.config_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    [admin] = events(gw, "token.create")  # written (and confirmed) before the call returned
    assert (admin["name"], admin["role"]) == ("ci", "sender") and admin["os_user"]
    assert lock_holder(audit) == writer  # nobody else took the lock
    # ... so the actor's next entries chain on after it.
    assert not gw.connect().errors
    wait_for(lambda: any(e["seq"] > admin["seq"] for e in events(gw, "session.state")),
             message="a state change after the admin action")

    ok = cli("audit", "verify", "--config", str(gw.config_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "audit log OK:" in ok.stdout and "last hash" in ok.stdout

    # A tampered copy fails, naming the file and the line.
    copy = tmp_path / "copy"
    shutil.copytree(audit, copy / "audit")
    first = log_files(copy / "audit")[0][1]
    lines = first.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"event":"', '"event":"x', 1)
    first.write_text("".join(lines))
    bad = cli("audit", "verify", "--config", str(gw.config_path), "--data-dir", str(copy))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"file {first.name} line 3: edited" in bad.stdout

    # Stopped, the gateway closed the log; an admin action is then written directly.
    gw.stop()
    assert lock_holder(audit) is None
    record_admin_action(load_config(gw.config_path), "token.revoke", name="ci")
    result_after = verify(audit)
    assert result_after.ok, result_after.problem
    tail = [e["event"] for e in entries(gw)][-2:]
    assert tail == ["gateway.stopping", "token.revoke"]


def test_a_killed_audit_actor_is_restarted_and_the_chain_goes_on(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway().start()
    audit = audit_dir(gw.data_dir)
    pid = wait_for(lambda: (lock_holder(audit) or {}).get("pid"), message="the audit writer")
    client = subprocess.Popen([sys.executable, "-c", CACHED_CLIENT, str(gw.admin_port)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ready", client.stderr
        wait_for(lambda: events(gw, "test.before"), message="the first client entry")

        gw.signal_process(pid, signal.SIGKILL)
        wait_for(lambda: (lock_holder(audit) or {}).get("pid") not in (None, pid),
                 message="a new audit writer")
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        assert client.wait(30) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        for stream in (client.stdin, client.stdout, client.stderr):
            if stream is not None:
                stream.close()

    [after] = wait_for(lambda: events(gw, "test.after"), message="the entry sent after the kill")
    assert after["request_id"] == "req-after" and after["n"] == 2
    assert len(events(gw, "audit.opened")) == 2
    result = verify(audit, live=True)
    assert result.ok, result.problem


def test_a_flood_of_refused_requests_is_counted_but_written_compactly(
        make_gateway: Callable[..., Gateway]) -> None:
    """Every refusal is on record, but 300 of one kind in a burst are a few lines."""
    import requests

    gw = make_gateway().start()
    flood = 300
    with requests.Session() as client:  # no token
        for _ in range(flood):
            assert client.post(gw.url + "/graphql", json={"query": "{ __typename }"},
                               timeout=10).status_code == 401
    assert gw.http.get(gw.url + "/admin/health", timeout=10).ok  # with a token: no entry

    def counted() -> int:
        # The first of a burst is an entry of its own; its summary counts the repeats.
        return sum(e.get("repeated", 1) for e in events(gw, "auth.failure")
                   if e.get("route") == "/graphql" and e.get("code") == "UNAUTHENTICATED")

    def all_counted() -> int | None:
        n = counted()
        assert n <= flood, (f"{n} refusals on record for {flood} requests: "
                            f"{events(gw, 'auth.failure')}")
        return n if n == flood else None

    wait_for(all_counted, 15, 0.2, f"all {flood} refusals on record")
    written = [e for e in events(gw, "auth.failure") if e.get("route") == "/graphql"]
    # The first of each burst at once, then one summary per audit.burst_seconds window.
    assert len(written) < flood / 10, len(written)
    summaries = [e for e in written if "repeated" in e]
    assert summaries and all(e["first"] <= e["last"] for e in summaries)
    gw.stop()
    assert verify(audit_dir(gw.data_dir)).ok


def test_refused_requests_on_paths_the_client_chooses_are_a_few_counted_lines(
        make_gateway: Callable[..., Gateway]) -> None:
    """Refusals are keyed on the route template, not the path: 600 distinct long paths
    are one kind, so a few lines, and every refusal is still counted."""
    import requests

    gw = make_gateway({"audit": {"burst_seconds": 0.2}}).start()
    flood = 600
    with requests.Session() as client:  # no token
        for n in range(flood):
            response = client.get(f"{gw.url}/admin/health/{n}/{'x' * 300}", timeout=10)
            assert response.status_code == 401

    def refused() -> list[dict[str, Any]]:
        return [e for e in events(gw, "auth.failure") if e.get("code") == "UNAUTHENTICATED"
                and (e.get("route") == "(no route)"
                     or str(e.get("path", "")).startswith("/admin/health/"))]

    def all_counted() -> list[dict[str, Any]] | None:
        found = refused()
        n = sum(e.get("repeated", 1) for e in found)
        assert n <= flood, f"{n} refusals on record for {flood} requests"
        return found if n == flood else None

    written = wait_for(all_counted, 30, 0.2, f"all {flood} refusals on record")
    assert len(written) < 20, f"{len(written)} lines for one kind of refusal"
    assert all(len(e.get("path", "")) <= 200 for e in written)
    gw.stop()
    assert verify(audit_dir(gw.data_dir)).ok


def test_a_flood_of_varied_refused_requests_keeps_the_audit_directory_bounded(
        make_gateway: Callable[..., Gateway]) -> None:
    """The worst case for the log: every refusal from another network (through a trusted
    proxy) on another path, so most are a new kind and a line of their own. The
    directory still never holds more than about audit.max_files * audit.max_file_mb,
    and the chain that is left verifies, starting where retention removed files."""
    import requests

    max_files, max_file_mb = 3, 0.01
    gw = make_gateway({"audit": {"max_files": max_files, "max_file_mb": max_file_mb,
                                 "burst_seconds": 0.05},
                       "auth": {"trusted_proxies": ["127.0.0.1/32"]}}).start()
    audit = audit_dir(gw.data_dir)
    # One more file for a moment at rollover; the lock file; no line is near a file's size.
    bound = (max_files + 1) * int(max_file_mb * 1024 * 1024) + 4096

    def directory_bytes() -> int:
        return sum(p.stat().st_size for p in audit.iterdir() if p.is_file())

    flood = 1500
    with requests.Session() as client:  # no token
        for n in range(flood):
            response = client.post(f"{gw.url}/graphql/{n}/{'y' * 100}", json={},
                                   headers={"X-Forwarded-For": f"10.{n // 250}.{n % 250}.9"},
                                   timeout=10)
            assert response.status_code == 401
            if n % 100 == 0:
                assert directory_bytes() <= bound
                assert len(log_files(audit)) <= max_files + 1
    gw.stop()
    assert directory_bytes() <= bound and len(log_files(audit)) <= max_files
    result = verify(audit)
    assert result.ok, result.problem
    assert result.first_seq > 1 and result.retention_seq > result.first_seq
