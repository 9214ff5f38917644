"""A full disk and a bad data_dir (issue 16, part 2), on a real small file system.

Each test mounts a tmpfs of a few MiB as the gateway's data_dir (root is needed; the
test is skipped, with the reason, where mounting is not permitted), fills it with a
ballast file from outside the gateway, and unmounts it however the test ends (the
fixture is set up before ``make_gateway``, so it is torn down after the gateways
stopped).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.transport.simulator import SimulatorServer
from actors.webhooks import signing
from actors.webhooks.delivery import DISK_FULL_REST_SECONDS
from tests import media_fixtures as fx
from tests.integration.harness import Gateway, wait_for
from tests.webhooks.receiver import Received, Receiver

MIB = 1024 * 1024
SEND = ("mutation($p: String!, $m: String!) { sendWhatsAppMessage(input: "
        "{phoneNumber: $p, message: $m}) { id } }")
CONFIG = {"storage": {"min_free_mb": 2},
          "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                     "global_per_day": 100_000}}
# Root without the capabilities that let it read and write any file: file modes count.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]


@pytest.fixture
def small_fs() -> Iterator[Callable[[Path, int], Path]]:
    """``mount(path, mib)``: a tmpfs of ``mib`` MiB at ``path``; all unmounted at the end."""
    mounted: list[Path] = []

    def mount(path: Path, mib: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700",
                               "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``path``'s file system."""
    ballast = path / "ballast"
    with ballast.open("wb") as handle:
        handle.write(b"\0" * max(0, free_bytes(path) - leave))
    return ballast


def send(gateway: Gateway, text: str) -> dict[str, Any]:
    return gateway.gql(SEND, {"p": "+14155552671", "m": text}).body


def test_a_full_disk_refuses_sends_loses_nothing_and_recovers_by_itself(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(CONFIG)
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    accepted = [send(gateway, f"before {n}")["data"]["sendWhatsAppMessage"]["id"]
                for n in range(5)]
    health = gateway.health()
    assert health["storage"]["freeBytes"] > 2 * MIB and health["status"] == "ok", health

    ballast = fill(gateway.data_dir, MIB)
    refused = send(gateway, "while full")
    [error] = refused["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE", error
    assert error["extensions"]["reason"] == "DISK_FULL"
    assert error["extensions"]["retryAfterSeconds"] > 0
    assert "disk" in error["message"] and str(gateway.data_dir) not in error["message"]
    health = gateway.health()
    assert health["status"] == "degraded" and health["storage"]["low"] is True, health
    assert "DISK_LOW" in [w["code"] for w in health["warnings"]]
    metrics = gateway.http.get(gateway.url + "/metrics", timeout=10).text
    [line] = [x for x in metrics.splitlines() if x.startswith("wagate_data_dir_free_bytes ")]
    assert float(line.split()[1]) < 2 * MIB

    ballast.unlink()  # space comes back: no restart, the next send goes through
    after = send(gateway, "after")
    assert not after.get("errors"), after
    accepted.append(after["data"]["sendWhatsAppMessage"]["id"])
    assert gateway.health()["status"] == "ok"

    def states() -> list[str] | None:
        found = [gateway.gql("query($i: ID!) { whatsAppMessage(id: $i) { state } }",
                             {"i": m}).data["whatsAppMessage"] for m in accepted]
        return [f["state"] for f in found] if all(found) else None
    assert wait_for(lambda: (s := states()) and all(x == "SENT" for x in s) and s, 10,
                    message="every accepted message SENT")
    texts = [m["text"] for m in gateway.inbox()]
    assert "while full" not in texts and texts.count("after") == 1
    verified = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                               "--config", str(gateway.config_path)],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_read_only_or_unreadable_data_dir_refuses_to_start_naming_it(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway()
    small_fs(gateway.data_dir, 16)
    gateway.start()
    gateway.stop()

    store = gateway.data_dir / "outbox" / "messages.sqlite3"
    store.chmod(0)
    try:
        done = subprocess.run([*NO_DAC, sys.executable, "-m", "gateway.cli", "serve",
                               "--config", str(gateway.config_path)], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        store.chmod(0o600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot read {store}" in done.stderr, done.stderr

    subprocess.run(["mount", "-o", "remount,ro", str(gateway.data_dir)], check=True)
    try:
        code, log = gateway.start_refused()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(gateway.data_dir)], check=True)
    assert code == 1, log
    assert f"{gateway.data_dir} is on a read-only file system" in log, log


INCOMING = "{ whatsAppIncomingMessages(first: 50) { edges { node { text } } } }"
EVENTS = "{ whatsAppEvents(first: 500) { edges { node { id type } } } }"
STATE = "query($i: ID!) { whatsAppMessage(id: $i) { state } }"
CREATE_WEBHOOK = 'mutation($u: String!) { createWebhook(url: $u) { secret } }'
RECIPIENT = "14155552671"


def sent(gateway: Gateway, text: str) -> tuple[str, str]:
    """Send ``text`` and wait until the recipient has it and its record is SENT:
    (message id, WhatsApp id)."""
    message = send(gateway, text)["data"]["sendWhatsAppMessage"]["id"]
    whatsapp_id = wait_for(lambda: [m["id"] for m in gateway.inbox()
                                    if m["text"] == text], 15, message="sent")[0]
    wait_for(lambda: gateway.gql(STATE, {"i": message}).data["whatsAppMessage"]["state"]
             == "SENT", 10, message="SENT")
    return message, whatsapp_id


def logged_events(gateway: Gateway) -> list[str]:
    answer = gateway.gql(EVENTS)
    assert not answer.errors, answer.errors
    return [edge["node"]["id"] for edge in answer.data["whatsAppEvents"]["edges"]]


def delivered_ids(receiver: Receiver) -> list[str]:
    """Webhook ids in the order first delivered (a redelivery is at least once)."""
    return list(dict.fromkeys(r.headers["webhook-id"] for r in receiver.requests))


def held_count(gateway: Gateway) -> int:
    found = [w for w in gateway.health()["warnings"] if w["code"] == "WRITES_HELD"]
    return found[0]["count"] if found else 0


def wagate(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config",
                           str(gateway.config_path)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_replies_receipts_webhooks_and_admin_actions_survive_a_full_disk(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no byte left on data_dir: replies and receipts the (simulated) WhatsApp
    delivered wait in memory and are stored, with their events, once space returns;
    a webhook whose cursor cannot be written gets its events again afterwards (none
    skipped); an admin action whose audit line cannot be written is refused and
    undone; the gateway (web tier included) stays up and recovers without a restart."""
    monkeypatch.setenv("WAGATE_TEST_WEBHOOK_SECRET", signing.new_secret())
    ballasts: list[Path] = []
    filled_at: list[float] = []
    fill_next = threading.Event()

    def fill_while_out(_: Received) -> None:  # the disk fills while a delivery is out
        if fill_next.is_set():
            ballasts.append(fill(gateway.data_dir, 0))
            filled_at.append(time.monotonic())
            fill_next.clear()

    with Receiver(on_request=fill_while_out) as receiver:
        gateway = make_gateway({
            **CONFIG, "actors": {"ask_timeout_seconds": 4.0},
            # The simulated WhatsApp service is not on the full disk: only the gateway is.
            "simulator": {"server_dir": str(tmp_path / "whatsapp"),
                          "poll_interval_seconds": 0.02},
            "webhooks": {"allow_insecure": ["127.0.0.0/8"], "retry_scale": 0.001}})
        with gateway.config_path.open("a", encoding="utf-8") as config:
            config.write(f'\n[[webhooks.endpoints]]\nurl = "{receiver.url()}"\n'
                         'secret_env = "WAGATE_TEST_WEBHOOK_SECRET"\n')
        small_fs(gateway.data_dir, 12)
        gateway.start()
        gateway.link()
        message, whatsapp_id = sent(gateway, "hello")
        wait_for(lambda: set(logged_events(gateway)) <= set(delivered_ids(receiver)), 15,
                 message="every event so far delivered")

        fill_next.set()  # DELIVERED is stored; its webhook fills the disk while out
        gateway.sim("receipt", whatsapp_id, "delivered")
        wait_for(lambda: ballasts, 15, message="the disk filled by the webhook receiver")
        for n in range(3):
            gateway.sim("reply", "--to-session", "default", "--from", RECIPIENT,
                        "--text", f"reply {n}")
        gateway.sim("receipt", whatsapp_id, "read")
        assert wait_for(lambda: held_count(gateway) == 4, 15, message="4 writes held")
        health = gateway.health()
        assert health["status"] == "degraded", health
        metrics = gateway.http.get(gateway.url + "/metrics", timeout=10).text
        assert "wagate_held_writes 4.0" in metrics.splitlines()

        refused = gateway.gql(CREATE_WEBHOOK, {"u": receiver.url() + "/other"})
        assert refused.error_code == "UNAVAILABLE", refused
        assert refused.error["extensions"]["reason"] == "DISK_FULL", refused
        assert "disk" in refused.error["message"]
        # Refused sends are audited: enough lines to use up the audit file's last page.
        for n in range(60):
            assert send(gateway, f"full {n}")["errors"][0]["extensions"]["reason"] == \
                "DISK_FULL"
        made = wagate(gateway, "token", "create", "--name", "while-full", "--role", "viewer")
        assert made.returncode != 0 and "the token was not created" in made.stderr, made
        assert "while-full" not in gateway.tokens_file.read_text()
        assert gateway.gql(INCOMING).data["whatsAppIncomingMessages"]["edges"] == []

        # The event whose cursor could not be written went again, but not at every poll.
        full_seconds = time.monotonic() - filled_at[0]
        resent = Counter(r.headers["webhook-id"] for r in receiver.requests)
        assert max(resent.values()) <= full_seconds / DISK_FULL_REST_SECONDS + 2, resent

        ballasts[0].unlink()  # space returns: no restart
        texts = wait_for(lambda: (t := [e["node"]["text"] for e in gateway.gql(INCOMING).data[
            "whatsAppIncomingMessages"]["edges"]]) and len(t) == 3 and t, 15,
            message="the held replies stored")
        assert sorted(texts) == ["reply 0", "reply 1", "reply 2"]
        wait_for(lambda: gateway.gql(STATE, {"i": message}).data["whatsAppMessage"]["state"]
                 == "READ", 10, message="the held read receipt applied")
        logged = logged_events(gateway)
        wait_for(lambda: delivered_ids(receiver) == logged_events(gateway), 20,
                 message="every event delivered, in order, none skipped")
        types = [e["node"]["type"] for e in gateway.gql(EVENTS).data["whatsAppEvents"]["edges"]]
        assert types.count("message.received") == 3 and len(logged) == len(types)
        assert wait_for(lambda: held_count(gateway) == 0, 10, message="nothing held")
        assert gateway.health()["status"] == "ok"
        made = wagate(gateway, "token", "create", "--name", "after", "--role", "viewer")
        assert made.returncode == 0, made
    verified = wagate(gateway, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    gateway.stop()
    for store in ("outbox/messages.sqlite3", "webhooks/endpoints.sqlite3", "numbers.sqlite"):
        with contextlib.closing(sqlite3.connect(gateway.data_dir / store)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), store


def test_a_reply_that_arrives_while_the_outbox_cannot_start_is_stored_afterwards(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """The outbox dies while the disk is full and cannot start again until there is
    space (its stores write at open): a reply the session gets meanwhile is kept by the
    supervisor (and handed back by each outbox whose start failed) for the outbox that
    finally starts; nothing needs a restart."""
    whatsapp = tmp_path / "whatsapp"
    gateway = make_gateway({**CONFIG, "simulator": {"server_dir": str(whatsapp),
                                                    "poll_interval_seconds": 0.02}})
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    ballast = fill(gateway.data_dir, 0)
    os.kill(gateway.health()["processes"]["outbox"], signal.SIGKILL)
    wait_for(lambda: gateway.health().get("processes", {}).get("outbox") is None, 10,
             message="the outbox down")
    gateway.sim("reply", "--to-session", "default", "--from", RECIPIENT, "--text", "meanwhile")
    server = SimulatorServer(gateway.data_dir, whatsapp)
    try:  # the session's client took it from the simulated service (private key: a test)
        wait_for(lambda: not server._cache.get(("incoming", "default")), 10,
                 message="the reply taken by the session")
    finally:
        server.close()
    assert gateway.health().get("processes", {}).get("outbox") is None  # still not up
    ballast.unlink()

    def stored() -> list[str]:  # the outbox may still be starting: no data yet
        found = gateway.gql(INCOMING).data or {"whatsAppIncomingMessages": {"edges": []}}
        return [e["node"]["text"] for e in found["whatsAppIncomingMessages"]["edges"]]
    assert wait_for(stored, 90, message="the reply stored once the outbox started") == [
        "meanwhile"]


SENT_STATE = "query($i: ID!) { whatsAppMessage(id: $i) { state uncertain attempts } }"
MESSAGES = "{ whatsAppMessages(first: 5) { edges { node { id state } } } }"


def integrity_checked(gateway: Gateway) -> None:
    """The audit chain verifies and every SQLite store passes ``integrity_check``."""
    verified = wagate(gateway, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for store in sorted(gateway.data_dir.rglob("*.sqlite*")):
        if store.suffix in (".sqlite", ".sqlite3"):
            with contextlib.closing(sqlite3.connect(store)) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), store


def test_a_send_whose_result_comes_back_to_a_full_disk_reaches_sent_once(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """The disk fills to the last byte after a send was accepted and handed to its
    session: WhatsApp's answer cannot be written. It waits in memory; once there is
    space the record reaches SENT after one attempt (not resent as uncertain), WhatsApp
    got it once, and the outbox sends what comes next."""
    gateway = make_gateway({**CONFIG, "messages": {"send_timeout_seconds": 3},
                            "simulator": {"server_dir": str(tmp_path / "whatsapp"),
                                          "send_delay_seconds": 1.5,
                                          "poll_interval_seconds": 0.02}})
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    answers: list[dict[str, Any]] = []
    sender = threading.Thread(target=lambda: answers.append(send(gateway, "in flight")))
    sender.start()
    try:
        message = wait_for(lambda: (m := gateway.gql(MESSAGES).data["whatsAppMessages"][
            "edges"]) and m[0]["node"]["state"] == "SENDING" and m[0]["node"]["id"], 10,
            message="the send handed to its session")
        ballast = fill(gateway.data_dir, 0)
        wait_for(lambda: [m for m in gateway.inbox() if m["text"] == "in flight"], 10,
                 message="WhatsApp took the message")
    finally:
        sender.join(30)
    [answer] = answers  # the caller waited for WhatsApp: told the message is stored
    assert answer["errors"][0]["extensions"]["code"] == "SEND_UNCONFIRMED", answer
    assert answer["errors"][0]["extensions"]["messageId"] == message
    assert wait_for(lambda: held_count(gateway) == 1, 10, message="the result held")
    assert gateway.gql(SENT_STATE, {"i": message}).data["whatsAppMessage"]["state"] == \
        "SENDING"

    ballast.unlink()  # space returns: no restart
    wait_for(lambda: gateway.gql(SENT_STATE, {"i": message}).data["whatsAppMessage"]["state"]
             == "SENT", 10, message="the held result applied")
    record = gateway.gql(SENT_STATE, {"i": message}).data["whatsAppMessage"]
    assert record["attempts"] == 1, record
    after = send(gateway, "after")["data"]["sendWhatsAppMessage"]["id"]
    wait_for(lambda: gateway.gql(SENT_STATE, {"i": after}).data["whatsAppMessage"]["state"]
             == "SENT", 10, message="the outbox sends again")
    texts = [m["text"] for m in gateway.inbox()]
    assert texts.count("in flight") == 1 and texts.count("after") == 1, texts
    assert held_count(gateway) == 0 and gateway.health()["status"] == "ok"
    gateway.stop()
    integrity_checked(gateway)


def store_warnings(gateway: Gateway) -> list[dict[str, Any]]:
    return [w for w in gateway.health()["warnings"] if w["code"] == "STORE_UNSAVED"]


def test_a_session_checkpoint_on_a_full_disk_is_retried_and_the_link_survives(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """A device links while data_dir has no byte left: its encrypted checkpoint cannot
    be written. The sealed store is not corrupted (nothing half-written under its
    name), the failure is logged and shown in health, the checkpoint is retried, and
    once there is space it is written: a restart resumes the session without a QR."""
    gateway = make_gateway({**CONFIG, "encryption": {"checkpoint_seconds": 0.5},
                            "simulator": {"server_dir": str(tmp_path / "whatsapp")}})
    small_fs(gateway.data_dir, 12)
    gateway.start()
    sealed = gateway.credentials_path()
    assert not gateway.connect().errors
    gateway.wait_state("QR_PENDING")
    ballast = fill(gateway.data_dir, 0)  # the phone scans the QR code on a full disk
    gateway.sim("scan", "--session", "default")
    gateway.wait_state("CONNECTED")
    [warning] = wait_for(lambda: store_warnings(gateway), 10, message="STORE_UNSAVED")
    assert warning["session"] == "default" and "disk" in warning["message"], warning
    assert gateway.health()["status"] == "degraded"
    assert not sealed.exists()  # nothing half-written under the store's name
    assert not list(sealed.parent.glob(".*.tmp"))  # nor left beside it

    ballast.unlink()  # space returns: the next checkpoint writes the store
    wait_for(lambda: not store_warnings(gateway), 10, message="the checkpoint retried")
    assert sealed.exists() and gateway.health()["status"] == "ok"
    # The failures' lines found no room in data_dir's log: the success says they were.
    log = gateway.data_dir / "logs" / "actors.log"
    wait_for(lambda: "session store checkpoint written again after failing" in
             log.read_text(errors="replace"), 10, message="the failures logged")
    gateway.stop()
    gateway.start()
    gateway.connect()
    gateway.wait_state("CONNECTED")  # resumed from the sealed store: no QR scanned
    gateway.stop()
    integrity_checked(gateway)


INCOMING_MEDIA = ("{ whatsAppIncomingMessages(first: 10) { edges { node { text kind "
                  "mediaMissing media { id size } } } } }")


def test_a_file_received_on_a_full_disk_is_marked_missing_and_nothing_half_written(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """Someone sends a 1 MiB picture while data_dir has room for less: the file cannot
    be stored. The session process lives on, no part of the file is left (neither a
    temp file nor one under a name that reads as stored), and the message is stored
    with its caption and kind, its file marked missing (DISK_FULL) in the API and its
    event. Once there is space the next file is stored and served."""
    gateway = make_gateway({**CONFIG, "simulator": {"server_dir": str(tmp_path / "whatsapp"),
                                                    "poll_interval_seconds": 0.02}})
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    session_pid = gateway.health()["sessions"][0]["pid"]
    picture = tmp_path / "big.png"
    picture.write_bytes(fx.png() + os.urandom(MIB))
    ballast = fill(gateway.data_dir, 256 * 1024)
    gateway.sim("reply", "--to-session", "default", "--from", RECIPIENT, "--text",
                "look", "--file", str(picture))

    def nodes() -> list[dict[str, Any]]:
        answer = gateway.gql(INCOMING_MEDIA)
        assert not answer.errors, answer
        return [e["node"] for e in answer.data["whatsAppIncomingMessages"]["edges"]]
    [node] = wait_for(nodes, 15, message="the message stored")
    assert node == {"text": "look", "kind": "image", "media": None,
                    "mediaMissing": "DISK_FULL"}, node
    media_dir = gateway.data_dir / "media"
    assert not [p for p in media_dir.rglob("*") if p.is_file() and
                p.name not in ("media.key", "media.pub")], list(media_dir.rglob("*"))
    event = gateway.gql('{ whatsAppEvents(first: 50, types: [MESSAGE_RECEIVED]) '
                        '{ edges { node { data } } } }').data["whatsAppEvents"]["edges"]
    assert event[0]["node"]["data"]["media_missing"] == "DISK_FULL", event
    assert gateway.health()["sessions"][0]["pid"] == session_pid  # no crash

    ballast.unlink()  # space returns: the next file is stored
    small = tmp_path / "small.png"
    small.write_bytes(fx.png() + os.urandom(1000))
    gateway.sim("reply", "--to-session", "default", "--from", RECIPIENT, "--file", str(small))
    stored = wait_for(lambda: [n for n in nodes() if n["media"]], 15,
                      message="the next file stored")[0]
    assert stored["mediaMissing"] is None
    served = gateway.http.get(f"{gateway.url}/media/{stored['media']['id']}", timeout=10)
    assert served.status_code == 200 and served.content == small.read_bytes()
    gateway.stop()
    integrity_checked(gateway)


def test_a_queued_send_whose_move_to_sending_finds_the_disk_full_goes_once_later(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """A send accepted while its session reconnects; the disk fills before the session
    is back, so the move to SENDING cannot be written: nothing is handed over, the
    outbox does not wedge, and once there is space the message is sent once."""
    whatsapp = tmp_path / "whatsapp"
    gateway = make_gateway({**CONFIG, "simulator": {"server_dir": str(whatsapp),
                                                    "poll_interval_seconds": 0.02}})
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    server = SimulatorServer(gateway.data_dir, whatsapp)
    try:
        server.drop("default", down_for=120)
        wait_for(lambda: gateway.status()["state"] != "CONNECTED", 10, message="dropped")
        queued = send(gateway, "queued")["data"]["sendWhatsAppMessage"]["id"]
        assert gateway.gql(SENT_STATE, {"i": queued}).data["whatsAppMessage"]["state"] == \
            "QUEUED"
        ballast = fill(gateway.data_dir, 0)
        server.restore()  # the session comes back to a full disk
        gateway.wait_state("CONNECTED")
    finally:
        server.close()
    assert gateway.gql(SENT_STATE, {"i": queued}).data["whatsAppMessage"]["state"] == "QUEUED"
    ballast.unlink()
    wait_for(lambda: gateway.gql(SENT_STATE, {"i": queued}).data["whatsAppMessage"]["state"]
             == "SENT", 10, message="sent once there is space")
    record = gateway.gql(SENT_STATE, {"i": queued}).data["whatsAppMessage"]
    assert record == {"state": "SENT", "uncertain": False, "attempts": 1}, record
    assert [m["text"] for m in gateway.inbox()].count("queued") == 1
    gateway.stop()
    integrity_checked(gateway)

def stored_replies(gateway: Gateway) -> list[str]:
    """Received texts, oldest first (the outbox may still be starting: none yet)."""
    found = gateway.gql(INCOMING).data or {"whatsAppIncomingMessages": {"edges": []}}
    return [e["node"]["text"] for e in found["whatsAppIncomingMessages"]["edges"]]


def test_held_replies_and_receipts_survive_a_sigkilled_outbox(
        small_fs: Callable[[Path, int], Path], make_gateway: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """Replies and a receipt wait in the outbox's memory for disk space; the outbox is
    killed outright (nothing handed back), more replies arrive while none runs (the
    supervisor would keep them): once there is space, each is stored exactly once with
    its event, in the order WhatsApp delivered them, because the session kept every one
    until an outbox said it was committed. The session sends them again every second:
    copies reach the outbox while it holds them and after they are written."""
    gateway = make_gateway({**CONFIG, "simulator": {"server_dir": str(tmp_path / "whatsapp"),
                                                    "poll_interval_seconds": 0.02},
                            "delivery": {"received_resend_seconds": 1.0}})
    small_fs(gateway.data_dir, 12)
    gateway.start()
    gateway.link()
    message, whatsapp_id = sent(gateway, "hello")
    before = logged_events(gateway)

    ballast = fill(gateway.data_dir, 0)
    gateway.sim("receipt", whatsapp_id, "delivered")
    for n in range(3):
        gateway.sim("reply", "--to-session", "default", "--from", RECIPIENT,
                    "--text", f"reply {n}")
    gateway.sim("receipt", whatsapp_id, "read")
    assert wait_for(lambda: held_count(gateway) == 5, 15, message="5 writes held")
    resent_twice = time.monotonic() + 2.5  # no event to wait for: a copy must not count
    while time.monotonic() < resent_twice:
        assert held_count(gateway) == 5

    gateway.signal_process(gateway.health()["processes"]["outbox"], signal.SIGKILL)
    wait_for(lambda: gateway.health().get("processes", {}).get("outbox") is None, 10,
             message="the outbox down")
    for n in range(3, 5):  # while no outbox runs (it cannot start on a full disk)
        gateway.sim("reply", "--to-session", "default", "--from", RECIPIENT,
                    "--text", f"reply {n}")
    server = SimulatorServer(gateway.data_dir, tmp_path / "whatsapp")
    try:  # the session's client took them from the simulated service
        wait_for(lambda: not server._cache.get(("incoming", "default")), 10,
                 message="the replies taken by the session")
    finally:
        server.close()
    ballast.unlink()

    expected = [f"reply {n}" for n in range(5)]
    seen: list[list[str]] = [[]]

    def all_stored() -> bool:
        seen.append(stored_replies(gateway))
        return seen[-1] == expected
    try:
        wait_for(all_stored, 90, message="every reply stored once, in order")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stored: {seen[-1]}") from None
    wait_for(lambda: gateway.gql(STATE, {"i": message}).data["whatsAppMessage"]["state"]
             == "READ", 15, message="the read receipt applied")
    wait_for(lambda: held_count(gateway) == 0, 10, message="nothing held")
    edges = gateway.gql(EVENTS).data["whatsAppEvents"]["edges"]
    ids = [e["node"]["id"] for e in edges]
    assert ids[:len(before)] == before and len(set(ids)) == len(ids)
    new_types = [e["node"]["type"] for e in edges[len(before):]]
    assert new_types.count("message.received") == 5, new_types
    assert new_types.count("message.status") == 2, new_types  # DELIVERED, READ: once each
    assert stored_replies(gateway) == expected  # still once each after any resend
    verified = wagate(gateway, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
