"""Durable delivery: message records, idempotency, expiry, retries, paging, queue limits
and crash safety, over real HTTP against real processes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from tests.integration.harness import Gateway, wait_for

FAST_DELIVERY = {"delivery": {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0,
                              "tick_seconds": 0.2}}
MESSAGE_FIELDS = ("id state session phoneNumber acceptedAt updatedAt attempts whatsAppMessageId"
                  " reason uncertain validUntil idempotencyKey duplicate"
                  " history { state at reason }")
SEND_MESSAGE = ("mutation($input: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $input) "
                f"{{ {MESSAGE_FIELDS} }} }}")
GET_MESSAGE = f"query($id: ID!) {{ whatsAppMessage(id: $id) {{ {MESSAGE_FIELDS} }} }}"
NOTIFY_WITH_KEY = ("mutation($p: String!, $m: String!, $k: String) { "
                   "sendWhatsAppNotification(phoneNumber: $p, message: $m, idempotencyKey: $k) }")
PHONE = "+14155552671"


def send_message(gw: Gateway, message: str, **extra: Any) -> dict[str, Any]:
    result = gw.gql(SEND_MESSAGE, {"input": {"phoneNumber": PHONE, "message": message, **extra}})
    assert not result.errors, result
    return result.data["sendWhatsAppMessage"]


def get_message(gw: Gateway, message_id: str) -> dict[str, Any] | None:
    result = gw.gql(GET_MESSAGE, {"id": message_id})
    assert not result.errors, result
    return result.data["whatsAppMessage"]


def wait_message_state(gw: Gateway, message_id: str, state: str, timeout: float = 15.0
                       ) -> dict[str, Any]:
    return wait_for(lambda: (m := get_message(gw, message_id)) and m["state"] == state and m,
                    timeout, message=f"message {message_id} to be {state}")


def texts(gw: Gateway) -> list[str]:
    return [m["text"] for m in gw.inbox()]


def test_a_message_record_tells_its_whole_story(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    sent = send_message(gw, "record me")
    assert sent["state"] == "SENT" and sent["acceptedAt"].endswith("Z")
    assert sent["duplicate"] is False and sent["whatsAppMessageId"].startswith("3EB0")
    record = get_message(gw, sent["id"])
    assert record is not None
    assert [h["state"] for h in record["history"]] == ["QUEUED", "SENDING", "SENT"]
    assert record["phoneNumber"] == "+14155552671" and record["attempts"] == 1
    assert get_message(gw, "0000000000000000000000") is None
    gw.stop()


def test_the_same_idempotency_key_sends_once_and_charges_once(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    first = send_message(gw, "only once", idempotencyKey="order-1")
    again = send_message(gw, "only once", idempotencyKey="order-1")
    assert again["id"] == first["id"] and again["duplicate"] is True
    for _ in range(2):
        result = gw.gql(NOTIFY_WITH_KEY, {"p": PHONE, "m": "notify once", "k": "order-2"})
        assert result.data == {"sendWhatsAppNotification": True}, result
    assert sorted(texts(gw)) == ["notify once", "only once"]
    assert gw.health()["limiter"]["global_day_used"] == 2.0
    gw.stop()


def test_concurrent_requests_with_one_key_make_one_message(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def send() -> None:
        message = send_message(gw, "racing", idempotencyKey="same")
        with lock:
            results.append(message)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    assert len({r["id"] for r in results}) == 1
    assert sum(1 for r in results if not r["duplicate"]) == 1
    assert texts(gw) == ["racing"]
    gw.stop()


def test_transient_failures_are_retried_and_permanent_ones_fail(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    gw.sim("fail-next", "2", "--transient")
    done = send_message(gw, "retry me")  # answered by the retry that WhatsApp acked
    assert (done["state"], done["attempts"]) == ("SENT", 3)
    assert texts(gw) == ["retry me"]

    gw.sim("fail-next", "1")
    failed = gw.send(PHONE, "rejected")
    assert failed.error_code == "SEND_FAILED"
    assert failed.errors[0]["extensions"]["reason"] == "REJECTED"
    record = get_message(gw, failed.errors[0]["extensions"]["messageId"])
    assert record is not None and record["state"] == "FAILED" and record["reason"] == "REJECTED"
    gw.stop()


def test_a_message_that_outlives_its_validity_expires_unsent(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    gw.sim("drop", "--down-for", "60")
    gw.wait_state("RECONNECTING")
    short = send_message(gw, "expire me", validForSeconds=1)
    long = send_message(gw, "keep me", validForSeconds=3600)
    assert short["state"] == long["state"] == "QUEUED"
    expired = wait_message_state(gw, short["id"], "EXPIRED")
    assert expired["reason"] == "VALIDITY_PASSED"
    gw.sim("restore")
    gw.connect()
    wait_message_state(gw, long["id"], "SENT", timeout=20)
    assert texts(gw) == ["keep me"]
    gw.stop()


def test_paging_through_messages(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(FAST_DELIVERY).start()
    gw.link()
    ids = [send_message(gw, f"page {i}")["id"] for i in range(5)]
    other = gw.send("+14155550000", "elsewhere")
    assert not other.errors
    query = ("query($after: String, $p: String) { whatsAppMessages(first: 2, after: $after, "
             "phoneNumber: $p, state: \"SENT\") { edges { cursor node { id } } "
             "pageInfo { hasNextPage endCursor } } }")
    seen, after = [], None
    while True:
        page = gw.gql(query, {"after": after, "p": PHONE}).data["whatsAppMessages"]
        seen.extend(e["node"]["id"] for e in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == ids[::-1]
    bad = gw.gql(query, {"after": "bogus", "p": PHONE})
    assert bad.error_code == "GRAPHQL_VALIDATION_FAILED"
    gw.stop()


def test_a_full_queue_refuses_new_messages(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({**FAST_DELIVERY, "delivery": {**FAST_DELIVERY["delivery"],
                                                     "max_queue_per_session": 2}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "60")
    gw.wait_state("RECONNECTING")
    assert send_message(gw, "q1")["state"] == "QUEUED"
    assert send_message(gw, "q2")["state"] == "QUEUED"
    full = gw.send(PHONE, "q3")
    assert full.error_code == "RATE_LIMITED"
    assert full.errors[0]["extensions"]["reason"] == "QUEUE_FULL"
    assert gw.health()["queue"]["depth"] == 2
    gw.sim("restore")
    gw.connect()
    wait_for(lambda: sorted(texts(gw)) == ["q1", "q2"], 20, message="queue to drain")
    gw.stop()


def test_queued_messages_survive_a_killed_outbox_and_a_killed_gateway(
        make_gateway: Callable[..., Gateway]) -> None:
    # The session must keep trying (not give up) for the whole outage.
    gw = make_gateway({**FAST_DELIVERY,
                       "reconnect": {"attempts": 1000, "delay_seconds": 0.5}}).start()
    gw.link()
    gw.sim("drop", "--down-for", "120")
    gw.wait_state("RECONNECTING")
    first = [send_message(gw, f"before outbox kill {i}")["id"] for i in range(3)]

    outbox_pid = gw.health()["processes"]["outbox"]
    gw.signal_process(outbox_pid, signal.SIGKILL)
    wait_for(lambda: gw.health().get("processes", {}).get("outbox") not in (None, outbox_pid),
             20, message="a new outbox process")
    second = [send_message(gw, f"after outbox kill {i}")["id"] for i in range(2)]

    # The whole gateway dies at once (power cut of the processes), then starts again.
    gw.kill_everything()
    gw.start()
    gw.sim("restore")
    gw.wait_state("CONNECTED", timeout=30)
    wanted = sorted([f"before outbox kill {i}" for i in range(3)]
                    + [f"after outbox kill {i}" for i in range(2)])
    wait_for(lambda: sorted(texts(gw)) == wanted, 30, message="every queued message")
    for message_id in first + second:
        assert get_message(gw, message_id)["state"] == "SENT"
    gw.stop()
