"""The webhook actor in a real gateway: started by the supervisor, it delivers the
event log to an endpoint declared in the config file (its secret from a variable),
signed; a 410 disables the endpoint and the audit log records it; the gateway stops
clean with the delivery thread in it.

The events are the gateway's own: a linked session's state changes and a message's
states, written by the outbox to the event log, pulled back through whatsAppEvents to
show that push and pull carry the same ids."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from standardwebhooks.webhooks import Webhook

from actors.audit.log import audit_dir, log_files
from actors.webhooks import signing
from tests.integration.harness import Gateway, wait_for
from tests.webhooks.receiver import Receiver

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
