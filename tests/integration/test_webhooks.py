"""The webhook actor in a real gateway: started by the supervisor, it delivers the
event log to an endpoint declared in the config file (its secret from a variable),
signed; a 410 disables the endpoint and the audit log records it; the gateway stops
clean with the delivery thread in it.

The events are the gateway's own: a linked session's state changes and a message's
states, written by the outbox to the event log, pulled back through whatsAppEvents to
show that push and pull carry the same ids."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest
from standardwebhooks.webhooks import Webhook

from actors.audit.log import audit_dir, log_files
from actors.outbox.events import decode_event_cursor
from actors.webhooks import signing
from actors.webhooks.schedule import SCHEDULE_SECONDS
from tests.integration.harness import Gateway, wait_for
from tests.webhooks.receiver import Received, Receiver

pytestmark = pytest.mark.integration


def test_a_declared_endpoint_gets_signed_events_and_a_410_is_audited(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    secret = signing.new_secret()
    monkeypatch.setenv("WAGATE_TEST_WEBHOOK_SECRET", secret)
    with Receiver(script=[(200, {}), (410, {})]) as receiver:
        gateway = make_gateway({"webhooks": {"allow_insecure": ["127.0.0.0/8"],
                                             "retry_scale": 0.001}})
        with gateway.config_path.open("a", encoding="utf-8") as config:
            config.write(f'\n[[webhooks.endpoints]]\nurl = "{receiver.url()}"\n'
                         'secret_env = "WAGATE_TEST_WEBHOOK_SECRET"\n')
        gateway.start()
        gateway.link()  # the session's state changes are events
        first, second = receiver.wait_for(2)
        logged = pulled_events(gateway)
        assert first.headers["webhook-id"] == logged[0]["id"]
        assert second.headers["webhook-id"] == logged[1]["id"]
        payload = Webhook(secret).verify(first.body, first.headers)
        assert payload["type"] == logged[0]["type"] == "session.status"
        assert payload["data"] == logged[0]["data"]
        audit = audit_dir(gateway.data_dir)
        wait_for(lambda: any("webhook.disabled" in f.read_text() for _, f in log_files(audit)),
                 20, 0.1, "the disabled endpoint in the audit log")
        gateway.stop()
    assert secret not in gateway.log_tail(10_000)


def pulled_events(gateway: Gateway) -> list[dict[str, object]]:
    """The whole event log, oldest first, as whatsAppEvents gives it."""
    answer = gateway.gql("{ whatsAppEvents(first: 500) { edges { node "
                         "{ id type session data } } } }")
    assert not answer.errors, answer.errors
    return [edge["node"] for edge in answer.data["whatsAppEvents"]["edges"]]


WEBHOOK_FIELDS = "id url enabled cursor lastStatus disabledReason"


def test_the_api_creates_tests_rotates_replays_and_deletes_a_webhook(
        make_gateway: Callable[..., Gateway]) -> None:
    with Receiver() as receiver:
        gateway = make_gateway({"webhooks": {"allow_insecure": ["127.0.0.0/8"]}})
        gateway.start()
        gateway.link()  # events from before the webhook exists
        before = pulled_events(gateway)
        refused = gateway.gql('mutation { createWebhook(url: "http://10.0.0.1/") '
                              "{ secret } }")
        assert refused.error_code == "WEBHOOK_INVALID"
        made = gateway.gql(
            "mutation($u: String!) { createWebhook(url: $u, description: \"t\") "
            f"{{ secret webhook {{ {WEBHOOK_FIELDS} }} }} }}", {"u": receiver.url()})
        created = made.data["createWebhook"]
        hook, secret = created["webhook"]["id"], created["secret"]
        assert created["webhook"]["cursor"] == len(before)  # starts at the log's head
        assert gateway.send("+4915112345001", "hello").data
        logged = wait_for(lambda: (e := pulled_events(gateway))[-1]["data"].get("state") == "SENT"
                          and e, 20, 0.1, "the message's SENT event")
        live = [e["id"] for e in logged[len(before):]]  # QUEUED, SENT
        got = receiver.wait_for(len(live))
        assert [r.headers["webhook-id"] for r in got] == live
        for request in got:
            Webhook(secret).verify(request.body, request.headers)
        listed = gateway.gql(f"{{ webhooks {{ {WEBHOOK_FIELDS} }} }}").data["webhooks"]
        assert [w["id"] for w in listed] == [hook] and secret not in str(listed)
        rotated = gateway.gql(f'mutation {{ rotateWebhookSecret(id: "{hook}") {{ secret }} }}')
        tested = gateway.gql(f'mutation {{ sendTestWebhook(id: "{hook}") '
                             "{ delivered status } }").data["sendTestWebhook"]
        assert tested == {"delivered": True, "status": 200}
        probe = receiver.wait_for(len(live) + 1)[-1]
        for key in (secret, rotated.data["rotateWebhookSecret"]["secret"]):
            assert Webhook(key).verify(probe.body, probe.headers)["type"] == "webhook.test"
        gateway.gql(f'mutation {{ replayWebhooks(id: "{hook}", after: 0) {{ cursor }} }}')
        everything = [e["id"] for e in logged]
        replayed = receiver.wait_for(len(live) + 1 + len(everything))[len(live) + 1:]
        assert [r.headers["webhook-id"] for r in replayed] == everything
        scraped = gateway.http.get(f"{gateway.url}/metrics", timeout=30).text
        assert f'wagate_webhook_deliveries_total{{endpoint="{hook}",outcome="delivered"}}' \
            in scraped
        assert gateway.gql(f'mutation {{ deleteWebhook(id: "{hook}") }}').data
        missing = gateway.gql(f'mutation {{ deleteWebhook(id: "{hook}") }}')
        assert missing.error_code == "WEBHOOK_NOT_FOUND"
        gateway.stop()
    entries = "".join(f.read_text() for _, f in log_files(audit_dir(gateway.data_dir)))
    assert entries.count('"webhook.changed"') >= 5 and secret not in entries


RETRY_SCALE = 0.001  # the schedule's 5 s, 5 min, 30 min, 2 h become 5 ms, 0.3 s, 1.8 s, 7.2 s
JITTER = 0.1
CLOCKS = 0.01  # the receiver's monotonic clock against the gateway's wall clock
RETRIES = 4  # attempts of the stuck event watched before the power cut


def test_a_receiver_down_while_the_gateway_is_sigkilled_loses_nothing(
        make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14's end-to-end guarantee: events pile up while the receiver fails, the
    whole gateway is SIGKILLed, the receiver recovers and the gateway restarts on the
    same data dir: every event of the log arrives (at least once, first arrivals in the
    log's order, a duplicate only with its webhook-id and body), signed; the retries
    kept the schedule's minimum spacing; a replay and a pull after a cursor give
    exactly the events after it; a disabled endpoint gets nothing until enabled."""
    secret = signing.new_secret()
    monkeypatch.setenv("WAGATE_TEST_WEBHOOK_SECRET", secret)
    with Receiver() as receiver:
        gateway = make_gateway({"webhooks": {"allow_insecure": ["127.0.0.0/8"],
                                             "retry_scale": RETRY_SCALE,
                                             "jitter_fraction": JITTER}})
        with gateway.config_path.open("a", encoding="utf-8") as config:
            config.write(f'\n[[webhooks.endpoints]]\nurl = "{receiver.url()}"\n'
                         'secret_env = "WAGATE_TEST_WEBHOOK_SECRET"\n')
        gateway.start()
        gateway.sim("auto-receipt", "read")
        gateway.link()
        # The link's events delivered, then the receiver fails: the sends' events pile
        # up behind the first of them, retried on the schedule. (Failing from the link
        # on would put the power cut late in the schedule, whose next wait the
        # restarted gateway keeps: seconds of idling.)
        wait_for(lambda: gateway.gql("{ webhooks { cursor } }").data["webhooks"][0]["cursor"]
                 == len(pulled_events(gateway)), 20, 0.05, "the link's events delivered")
        receiver.default = (500, {})
        failing = len(receiver.requests)
        answered = {r.headers["webhook-id"] for r in receiver.requests[:failing]}
        texts = [f"piled up {n}" for n in range(3)]
        for text in texts:
            assert not gateway.send("+4915112345001", text).errors
        wait_for(lambda: [e["data"].get("state") for e in pulled_events(gateway)
                          if e["type"] == "message.status"].count("READ") == len(texts),
                 20, 0.1, "every message READ in the event log")
        stuck = receiver.wait_for(failing + RETRIES)[failing:]
        waiting = [e["id"] for e in pulled_events(gateway) if e["id"] not in answered]
        assert {r.headers["webhook-id"] for r in stuck} == {waiting[0]}
        assert_schedule_spacing([r.at for r in stuck])

        gateway.kill_everything()  # power cut with every event of the sends undelivered
        receiver.default = (200, {})  # the receiver is back
        restarted = time.monotonic()  # what arrives from now on comes from the new run
        gateway.start()
        gateway.wait_state("CONNECTED")
        wait_for(lambda: delivered_all(gateway, [r for i, r in enumerate(list(receiver.requests))
                                                 if i < failing or r.at > restarted]),
                 60, 0.2, "every event of the log answered 200")
        assert_delivered_as_logged(secret, list(receiver.requests), pulled_events(gateway))

        # Pull and replay after a cursor in the middle: exactly the events after it.
        answer = gateway.gql("{ whatsAppEvents(first: 500) { edges { cursor node { id } } } }")
        edges = answer.data["whatsAppEvents"]["edges"]
        assert len(edges) > 3 * len(texts)  # the sends' events and the sessions' states
        middle = len(edges) // 2
        cursor = edges[middle - 1]["cursor"]
        tail = [edge["node"]["id"] for edge in edges[middle:]]
        after = gateway.gql("query($a: String) { whatsAppEvents(after: $a, first: 500) "
                            "{ edges { node { id } } } }", {"a": cursor})
        assert [e["node"]["id"] for e in after.data["whatsAppEvents"]["edges"]] == tail
        hook = wait_for(lambda: (h := gateway.gql("{ webhooks { id cursor } }")
                                 .data["webhooks"][0])["cursor"]
                        == decode_event_cursor(edges[-1]["cursor"]) and h,
                        10, 0.1, "the endpoint's cursor at the log's end")
        before = len(receiver.requests)
        replay = gateway.gql("mutation($i: ID!, $a: Int) { replayWebhooks(id: $i, after: $a) "
                             "{ cursor } }", {"i": hook["id"], "a": decode_event_cursor(cursor)})
        assert not replay.errors, replay
        replayed = receiver.wait_for(before + len(tail))[before:]
        assert [r.headers["webhook-id"] for r in replayed] == tail

        # Disabled by an operator, the endpoint gets nothing; enabled again, it resumes
        # from its cursor with exactly the events written meanwhile (README: Webhooks).
        toggle = ("mutation($i: ID!, $e: Boolean) { updateWebhook(id: $i, enabled: $e) "
                  "{ enabled } }")
        off = gateway.gql(toggle, {"i": hook["id"], "e": False})
        assert off.data["updateWebhook"] == {"enabled": False}, off
        quiet, head = len(receiver.requests), len(pulled_events(gateway))
        assert not gateway.send("+4915112345001", "while disabled").errors
        missed = wait_for(lambda: (e := pulled_events(gateway)[head:])
                          and e[-1]["data"].get("state") == "READ" and e,
                          20, 0.1, "the message sent while disabled READ")
        assert len(receiver.requests) == quiet
        assert gateway.gql(toggle, {"i": hook["id"], "e": True}).data["updateWebhook"]["enabled"]
        resumed = receiver.wait_for(quiet + len(missed))[quiet:]
        assert [r.headers["webhook-id"] for r in resumed] == [e["id"] for e in missed]
        assert_delivered_as_logged(secret, list(receiver.requests), pulled_events(gateway))
        gateway.stop()


def assert_schedule_spacing(times: list[float]) -> None:
    """Each retry came no sooner than the schedule's wait (times ``retry_scale``, less
    the jitter) after the attempt before it: the request is recorded before it is
    answered, and the wait starts at the answer. Only a lower bound: a loaded machine
    may make an attempt later, never earlier."""
    for failures, (earlier, later) in enumerate(itertools.pairwise(times)):
        least = SCHEDULE_SECONDS[failures] * RETRY_SCALE * (1 - JITTER) - CLOCKS
        assert later - earlier >= least, (failures, later - earlier, least)


def delivered_all(gateway: Gateway, requests: list[Received]) -> bool:
    """Every event of the log is among ``requests`` (the receiver answers them 200)."""
    logged = pulled_events(gateway)
    got = {r.headers["webhook-id"] for r in requests}
    return all(e["id"] in got for e in logged)


def assert_delivered_as_logged(secret: str, requests: list[Received],
                               logged: list[dict[str, object]]) -> None:
    """Every request carries an event of the log, signed, with the logged type and data;
    every request of one webhook-id has the same body; first arrivals follow the log.
    ``requests`` are taken before ``logged`` is pulled: none can carry an event the
    pull missed."""
    by_id = {str(e["id"]): e for e in logged}
    bodies: dict[str, bytes] = {}
    for request in requests:
        event_id = request.headers["webhook-id"]
        payload = Webhook(secret).verify(request.body, request.headers)
        assert (payload["type"], payload["data"]) == (by_id[event_id]["type"],
                                                      by_id[event_id]["data"])
        assert bodies.setdefault(event_id, request.body) == request.body, event_id
    firsts = list(dict.fromkeys(r.headers["webhook-id"] for r in requests))
    assert firsts == list(by_id)[:len(firsts)]
