"""An upgrade of a running data_dir: this code resumes what an older wagate left.

The older wagate is commit 8785619 (before the move into gateway/{core,auth,api,web,cli}
and actors/{supervisor,session,outbox,audit}), taken from this repository's history
with ``git archive`` and run from its own tree. It links a session, loses the
(simulated) WhatsApp server, accepts messages it cannot deliver yet, and stops
cleanly. Then this code starts on the same data_dir, key and token file: the session
comes back CONNECTED without a new QR code, the queued messages reach their
recipients, the old version's token still works, and the audit log, written by both
versions, still verifies. The outbox's store, which predates schema versions, is
migrated (the event log and the incoming messages added) and keeps the old version's
messages.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from actors.outbox.store import MIGRATIONS
from tests.integration.harness import (
    FAST,
    Gateway,
    _die_with_parent,
    _merge,
    _toml,
    free_port,
    group_alive,
    stop_on_termination,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
OLD_COMMIT = "8785619"
PHONE = "14155550100"  # the simulated phone that links the session
RECIPIENTS = ("+14155552671", "+14155552672")
# The old run keeps its session RECONNECTING (not FAILED) while the server is down:
# one retry every 60 s, far longer than the old run lasts.
OLD_OVERRIDES = {"reconnect": {"attempts": 5, "delay_seconds": 60.0,
                               "connect_timeout_seconds": 5.0}}

pytestmark = pytest.mark.integration


def extract_old(where: Path) -> Path:
    """The tree of ``OLD_COMMIT`` in ``where``; skips when this checkout lacks it (a
    shallow clone or an exported tree)."""
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    if found.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout (a shallow clone?): "
                    "the upgrade test needs the repository's history")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", OLD_COMMIT],
                             capture_output=True, timeout=120, check=True,
                             stdin=subprocess.DEVNULL)
    where.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extraction_filter = tarfile.data_filter
        tar.extractall(where)
    return where


class OldGateway:
    """``wagate serve`` of the old tree (its own launcher, its own CLI), on loopback."""

    def __init__(self, code: Path, root: Path) -> None:
        self.code, self.root = code, root
        self.data_dir = root / "data"
        self.config_path = root / "old.toml"
        self.key_file = root / "store.key"
        self.tokens_file = root / "tokens.toml"
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(code)}
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: set[int] = set()
        config = _merge(_merge(FAST, OLD_OVERRIDES), {
            "storage": {"data_dir": str(self.data_dir)},
            "transport": {"engine": "simulator"},
            "auth": {"tokens_file": str(self.tokens_file)},
            "encryption": {"key_file": str(self.key_file)}})
        self.config_path.write_text(_toml(config), encoding="utf-8")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=self.code,
                              env=self.env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"old wagate {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done

    def start(self) -> None:
        """Started as the harness starts ours: it dies with the test process, and a
        SIGTERM to pytest still runs the test's ``finally`` (``kill``)."""
        stop_on_termination()
        log = open(self.root / "old-serve.log", "ab")  # noqa: SIM115 (kept for the process)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
             "--port", str(self.port), "--admin-port", str(self.admin_port)],
            cwd=self.code, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()))
        log.close()
        wait_for(self._ready, 60, 0.1, "the old gateway to be ready")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"old wagate serve exited with {self.process.returncode}:\n"
                                 + self.log())
        with contextlib.suppress(FileNotFoundError, ValueError):
            state = json.loads((self.data_dir / "run" / "gateway.json").read_text())
            self.groups.update(int(state[k]) for k in ("actor_pgid", "web_pgid") if k in state)
        try:
            return requests.get(self.url + "/readyz", timeout=2,
                                headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            return False

    def gql(self, token: str, query: str, variables: dict[str, Any] | None = None
            ) -> dict[str, Any]:
        response = requests.post(self.url + "/graphql", timeout=30,
                                 json={"query": query, "variables": variables or {}},
                                 headers={"Authorization": f"Bearer {token}",
                                          "Connection": "close"})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def state(self, token: str) -> str:
        body = self.gql(token, "{ whatsAppStatus { state } }")
        assert not body.get("errors"), body
        state: str = body["data"]["whatsAppStatus"]["state"]
        return state

    def stop(self) -> None:
        """SIGTERM, as an operator stops it before an upgrade; it must end cleanly."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.process = None
        assert code == 0, f"old wagate serve exited with {code}:\n{self.log()}"
        wait_for(lambda: not any(group_alive(g) for g in self.groups), 30, 0.1,
                 "the old gateway's processes to end")

    def kill(self) -> None:
        """Whatever is left of it, killed (the finally of a failed test)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            self.process = None
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        wait_for(lambda: not any(group_alive(g) for g in self.groups), 30, 0.1,
                 "the old gateway's processes to be gone")

    def log(self) -> str:
        text = ""
        for path in (self.root / "old-serve.log", self.data_dir / "logs" / "actors.log"):
            if path.exists():
                text += f"--- {path.name}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-60:]) + "\n"
        return text


def created_token(output: str) -> str:
    """The token ``wagate token create`` printed (once, indented, on its own line)."""
    found = re.search(r"shown only now:\s*\n\s*(\S+)\s*\n", output)
    assert found, output
    return found[1]


def run_old(old: OldGateway) -> str:
    """The old version's life before the upgrade; returns the token it created."""
    old.cli("keys", "create", "--out", str(old.key_file))
    admin = created_token(old.cli("token", "create", "--config", str(old.config_path),
                                  "--name", "old-admin", "--role", "admin").stdout)
    sender = created_token(old.cli("token", "create", "--config", str(old.config_path),
                                   "--name", "old-sender", "--role", "sender").stdout)
    old.start()
    assert old.gql(admin, "mutation { whatsAppConnect }")["data"] == {"whatsAppConnect": True}
    wait_for(lambda: old.state(admin) == "QR_PENDING", 30, 0.1, "a QR code")
    old.cli("sim", "scan", "--config", str(old.config_path), "--phone", PHONE)
    wait_for(lambda: old.state(admin) == "CONNECTED", 30, 0.1, "the old session to connect")
    # The server goes away: the session reconnects, and what is sent now waits in the queue.
    old.cli("sim", "drop", "--config", str(old.config_path), "--down-for", "3600")
    wait_for(lambda: old.state(admin) == "RECONNECTING", 30, 0.1, "the session to reconnect")
    for n, phone in enumerate(RECIPIENTS):
        body = old.gql(sender, "mutation($p: String!, $m: String!) { "
                       "sendWhatsAppNotification(phoneNumber: $p, message: $m) }",
                       {"p": phone, "m": f"queued before the upgrade {n}"})
        assert body == {"data": {"sendWhatsAppNotification": True}}, body
    assert old.state(admin) == "RECONNECTING"
    old.stop()
    inbox = json.loads(old.cli("sim", "inbox", "--json", "--config", str(old.config_path)).stdout)
    assert not [m for m in inbox if m["text"].startswith("queued")], inbox  # still queued
    return sender


def audit_entries(done: subprocess.CompletedProcess[str]) -> int:
    """The entry count of ``wagate audit verify``'s "audit log OK: N entries ..." line."""
    found = re.search(r"audit log OK: (\d+) entries", done.stdout)
    assert found, done.stdout + done.stderr
    return int(found[1])


def check_outbox_store(path: Path, old_texts: set[str]) -> None:
    """The old store was migrated (schema version 0 -> 3: the event log, the incoming
    messages, then media) and kept its messages; what they did after the upgrade is in
    the log."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 3
        assert db.execute("SELECT count(*) FROM incoming").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM media").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM messages WHERE media_sha256 IS NOT NULL"
                          ).fetchone()[0] == 0
        rows = {text: (message_id, state) for message_id, text, state in db.execute(
            "SELECT id, text, state FROM messages")}
        events = [(json.loads(data)["message_id"], json.loads(data)["state"]) for (data,) in
                  db.execute("SELECT data FROM events WHERE type = 'message.status' "
                             "ORDER BY seq")]
    assert old_texts <= set(rows), rows  # accepted by the old version, kept
    for text in old_texts:
        message_id, state = rows[text]
        assert state == "SENT" and (message_id, "SENT") in events, (text, state, events)
    new_id, _ = rows["sent after the upgrade"]
    assert [s for m, s in events if m == new_id][:2] == ["QUEUED", "SENT"]


def test_new_code_resumes_a_data_dir_of_8785619(tmp_path: Path) -> None:
    code = extract_old(tmp_path / "wagate-8785619")
    # The old tree is what runs: its flat gateway/ has modules the new layout moved.
    probe = subprocess.run([sys.executable, "-c", "import gateway.app, actors.limiter"],
                           cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    root = tmp_path / "gw"
    root.mkdir()
    old = OldGateway(code, root)
    new: Gateway | None = None
    try:
        sender = run_old(old)
        written_by_old = audit_entries(old.cli("audit", "verify", "--config",
                                               str(old.config_path)))
        new = Gateway(root, key_file=old.key_file)
        new.sim("restore")  # the server is back while nothing runs
        new.start(60)
        status = new.wait_state("CONNECTED", timeout=60)
        assert status["phoneNumber"] == "+" + PHONE, status  # resumed, not linked anew
        assert status["qrCode"] is None, status
        texts = {f"queued before the upgrade {n}" for n in range(len(RECIPIENTS))}
        wait_for(lambda: texts <= {m["text"] for m in new.inbox()}, 60, 0.2,
                 "the queued messages to reach their recipients")

        # The old version's token works with the new code.
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {sender}"
            answer = http.post(new.url + "/graphql", timeout=30, json={
                "query": "mutation { sendWhatsAppNotification(phoneNumber: \"+14155552673\", "
                         "message: \"sent after the upgrade\") }"}).json()
        assert answer == {"data": {"sendWhatsAppNotification": True}}, answer
        new.stop()
        check_outbox_store(new.data_dir / "outbox" / "messages.sqlite3", texts)

        # One chain across both versions.
        verified = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "audit", "verify", "--config",
             str(new.config_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert audit_entries(verified) > written_by_old, verified.stdout  # both versions'
    finally:
        old.kill()
        if new is not None:
            with contextlib.suppress(AssertionError):
                new.stop()
            leaked = new.cleanup()
            assert not leaked, f"processes left behind: {leaked}"
