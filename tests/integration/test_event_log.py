"""The event log under SIGKILL: no event without its change, no change without its event.

Sends flow (each message gets its delivery receipt from the simulated phone at once,
``sim auto-receipt``), and the whole gateway is SIGKILLed twice while they do: once
during sends and delivery receipts, once during read receipts. After a restart and
with nothing left pending, the outbox's database is read directly: every message's
history (less SENDING, which has no event) is exactly the states of its
``message.status`` events in sequence order, no event names a message that does not
exist, and the ``session.status`` events form one unbroken chain per session. Then
``whatsAppEvents`` pages the same log from the beginning and gets every event once,
in order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.integration.harness import Gateway, wait_for

pytestmark = pytest.mark.integration

PHONE = "+14155550177"
OVERRIDES = {
    "delivery": {"retry_base_seconds": 0.1, "retry_max_seconds": 0.5, "tick_seconds": 0.2},
    "limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
               "global_per_day": 100_000},
    "simulator": {"send_delay_seconds": 0.05},  # keeps sends in flight at a kill
    "reconnect": {"attempts": 100, "delay_seconds": 0.2, "connect_timeout_seconds": 5.0},
}
SEND = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) { id } }")


class Sender:
    """A thread that sends until stopped; a refused or unanswered request (the gateway
    is down) is simply tried again: what this test checks is the store, not the
    answers."""

    def __init__(self, gw: Gateway) -> None:
        self.url, self.token = gw.url + "/graphql", gw.token
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {self.token}"
            for n in range(10_000):
                if self.stopping.is_set():
                    return
                with contextlib.suppress(requests.RequestException, ValueError):
                    body = http.post(self.url, timeout=5, json={"query": SEND, "variables": {
                        "i": {"phoneNumber": PHONE, "message": f"event log {n}"}}}).json()
                    if not body.get("errors"):
                        self.accepted += 1
                        continue
                self.stopping.wait(0.05)  # down or refusing: a moment before the next

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def pending(gw: Gateway) -> int:
    total = 0
    for state in ("QUEUED", "SENDING"):
        result = gw.gql("query($s: String) { whatsAppMessages(state: $s, first: 200) "
                        "{ edges { node { id } } } }", {"s": state})
        assert not result.errors, result
        total += len(result.data["whatsAppMessages"]["edges"])
    return total


def kill_while(gw: Gateway, sender: Sender, busy: Callable[[], bool]) -> None:
    """SIGKILL everything once ``busy`` holds (bounded wait), then start again."""
    wait_for(busy, 30, 0.02, "traffic before the kill")
    gw.kill_everything()
    gw.start()
    gw.wait_state("CONNECTED", timeout=30)


def read_store(gw: Gateway) -> tuple[dict[str, list[str]], list[tuple[Any, ...]]]:
    path = gw.data_dir / "outbox" / "messages.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        told = {row[0]: [e[0] for e in json.loads(row[1]) if e[0] != "SENDING"]
                for row in db.execute("SELECT id, history FROM messages")}
        events = db.execute("SELECT seq, id, type, session, data FROM events "
                            "ORDER BY seq").fetchall()
    return told, events


def check_log_matches_records(told: dict[str, list[str]], events: list[tuple[Any, ...]]
                              ) -> None:
    logged: dict[str, list[str]] = {}
    chains: dict[str, list[dict[str, Any]]] = {}
    for _seq, _id, kind, session, raw in events:
        data = json.loads(raw)
        if kind == "message.status":
            logged.setdefault(data["message_id"], []).append(data["state"])
        elif kind == "session.status":
            chains.setdefault(session, []).append(data)
    assert set(logged) == set(told), "events of messages that do not exist, or the reverse"
    mismatched = {m: (told[m], logged[m]) for m in told if told[m] != logged[m]}
    assert not mismatched, f"history != events: {mismatched}"
    for session, chain in chains.items():
        for before, after in itertools.pairwise(chain):
            assert after["previous_state"] == before["state"] != after["state"], (session, chain)
    assert chains["default"][-1]["state"] == "CONNECTED"


def page_everything(gw: Gateway) -> list[str]:
    ids: list[str] = []
    after = None
    for _ in range(1000):
        result = gw.gql("query($a: String) { whatsAppEvents(after: $a, first: 37) { "
                        "edges { node { id } } pageInfo { hasNextPage endCursor } } }",
                        {"a": after})
        assert not result.errors, result
        page = result.data["whatsAppEvents"]
        ids += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return ids
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("paging did not end")


def test_sigkill_during_sends_and_receipts_keeps_log_and_records_in_step(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(OVERRIDES)
    gw.start()
    gw.link()
    gw.sim("auto-receipt", "delivered")
    sender = Sender(gw)
    try:
        kill_while(gw, sender, lambda: sender.accepted >= 15)
        gw.sim("auto-receipt", "read")
        seen = sender.accepted
        kill_while(gw, sender, lambda: sender.accepted >= seen + 15)
        floor = sender.accepted
        wait_for(lambda: sender.accepted >= floor + 5, 30, 0.05, "sends after the restart")
    finally:
        sender.stop()
    gw.sim("auto-receipt", "off")
    wait_for(lambda: pending(gw) == 0, 60, 0.2, "every message to leave QUEUED and SENDING")
    paged = page_everything(gw)
    size = gw.health()["eventLog"]
    gw.stop()
    told, events = read_store(gw)
    assert len(told) >= 35
    check_log_matches_records(told, events)
    assert paged == [row[1] for row in events]  # every event once, in order
    assert 0 < size["rows"] <= len(events) and size["bytes"] > 0, size
    states = {s for history in told.values() for s in history}
    assert {"QUEUED", "SENT", "DELIVERED", "READ"} <= states


def test_a_store_from_a_newer_wagate_stops_the_start_and_says_what_to_do(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    (gw.data_dir / "outbox").mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(gw.data_dir / "outbox" / "messages.sqlite3")) as db:
        db.execute("PRAGMA user_version = 9")
    code, log = gw.start_refused()
    assert code != 0
    assert "schema version 9" in log and "newer wagate" in log, log


def test_a_retention_shorter_than_the_webhook_retries_is_warned_of(
        make_gateway: Callable[..., Gateway]) -> None:
    """One day of events against 3.15 days of webhook retries: the start logs it and
    /admin/health lists it, and the gateway serves as usual (a warning, not a refusal)."""
    gw = make_gateway({"events": {"retention_days": 1}}).start()
    (warning,) = [w for w in gw.health()["warnings"] if w["code"] == "EVENT_RETENTION_SHORT"]
    assert warning["retentionDays"] == 1 and warning["retrySpanHours"] == 75.6
    assert gw.health()["status"] == "ok"
    log = (gw.root / "serve.log").read_text(errors="replace")
    assert "EVENT_RETENTION_SHORT" in log and "events.retention_days (1)" in log
