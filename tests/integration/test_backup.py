"""Online backup and restore (issue 16, part 3): ``wagate backup`` under load, then
``wagate restore`` into a fresh data_dir and a start that resumes without a QR code."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.integration.harness import Gateway, wait_for

# Far above the production limits, which protect a real account, not a simulated one.
LOAD = {"limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                   "global_per_day": 100_000}}
SEND = ("mutation($p: String!, $m: String!) { sendWhatsAppMessage(input: "
        "{phoneNumber: $p, message: $m}) { id } }")


def wagate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Sender(threading.Thread):
    """Sends one message after another until stopped; records when each was
    acknowledged (monotonic), so a test can tell which came before a given moment."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.acked: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {self.gateway.token}"
            n = 0
            while not self.halt.is_set():
                n += 1
                body = {"query": SEND, "variables": {"p": "+14155552671", "m": f"load {n}"}}
                answer = http.post(self.gateway.url + "/graphql", json=body, timeout=30).json()
                if answer.get("errors"):
                    self.failures.append(json.dumps(answer["errors"])[:300])
                    continue
                self.acked.append((time.monotonic(),
                                   answer["data"]["sendWhatsAppMessage"]["id"]))


def test_backup_under_load_restores_into_a_fresh_data_dir(
        make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    source = make_gateway(LOAD)
    source.start()
    source.link()
    sender = Sender(source)
    sender.start()
    try:
        wait_for(lambda: len(sender.acked) >= 10, 20, message="ten sends acknowledged")
        point = time.monotonic()
        out = tmp_path / "backup"
        done = wagate("backup", "--config", str(source.config_path), "--out", str(out))
        assert done.returncode == 0, done.stderr
        sent_during = sum(1 for at, _ in sender.acked if at > point)
    finally:
        sender.halt.set()
        sender.join(30)
    assert not sender.failures, sender.failures
    assert sent_during > 0, "no send was acknowledged while the backup ran: not under load"
    before = [message_id for at, message_id in sender.acked if at <= point]

    manifest = json.loads((out / "manifest.json").read_text())
    kinds = {entry["path"]: entry["kind"] for entry in manifest["files"]}
    assert kinds["outbox/messages.sqlite3"] == "sqlite"
    assert kinds["webhooks/endpoints.sqlite3"] == "sqlite"
    assert kinds["sessions/default/simulator.json"] == "bytes"  # sealed, copied as it is
    assert not any(p.startswith("run/") or p.endswith(("-wal", "-shm")) for p in kinds)
    head = manifest["audit"]["last_hash"]

    # Not while a gateway runs on the target, whatever --force says.
    refused = wagate("restore", str(out), "--force", "--config", str(source.config_path))
    assert refused.returncode == 1 and "is running" in refused.stderr, refused.stderr
    source.stop()

    target = make_gateway(LOAD, key_file=source.key_file)  # the sealed stores need their key
    restored = wagate("restore", str(out), "--config", str(target.config_path))
    assert restored.returncode == 0, restored.stderr
    again = wagate("restore", str(out), "--config", str(target.config_path))
    assert again.returncode == 1 and "not empty" in again.stderr, again.stderr

    verified = wagate("audit", "verify", "--expect-hash", head,
                      "--config", str(target.config_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    target.start()
    target.wait_state("CONNECTED", timeout=20)  # resumed from the copied store: no QR code
    missing = [m for m in before if target.gql("query($i: ID!) { whatsAppMessage(id: $i) { id } }",
                                               {"i": m}).data["whatsAppMessage"] is None]
    assert not missing, f"{len(missing)} of {len(before)} acknowledged messages lost"
    assert not target.send("+14155552671", "after the restore").errors
