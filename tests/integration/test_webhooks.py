"""The webhook actor in a real gateway: started by the supervisor, it delivers the
event log to an endpoint declared in the config file (its secret from a variable),
signed; a 410 disables the endpoint and the audit log records it; the gateway stops
clean with the delivery thread in it.

Until the event log is wired in, the test writes the log's table itself at the path
the actor reads (``actors.webhooks.actor.EVENTS_FILE``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from standardwebhooks.webhooks import Webhook

from actors.audit.log import audit_dir, log_files
from actors.webhooks import signing
from actors.webhooks.actor import EVENTS_FILE
from tests.integration.harness import Gateway, wait_for
from tests.webhooks.conftest import EventLog
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
        (gateway.data_dir / EVENTS_FILE).parent.mkdir(parents=True)
        log = EventLog(gateway.data_dir / EVENTS_FILE)
        gateway.start()
        first = log.add(status="SENT")
        (got,) = receiver.wait_for(1)
        assert got.headers["webhook-id"] == first
        assert Webhook(secret).verify(got.body, got.headers)["data"] == {"status": "SENT"}
        log.add(status="DELIVERED")
        receiver.wait_for(2)
        audit = audit_dir(gateway.data_dir)
        wait_for(lambda: any("webhook.disabled" in f.read_text() for _, f in log_files(audit)),
                 20, 0.1, "the disabled endpoint in the audit log")
        gateway.stop()
    assert secret not in gateway.log_tail(10_000)


WEBHOOK_FIELDS = "id url enabled cursor lastStatus disabledReason"


def test_the_api_creates_tests_rotates_replays_and_deletes_a_webhook(
        make_gateway: Callable[..., Gateway]) -> None:
    with Receiver() as receiver:
        gateway = make_gateway({"webhooks": {"allow_insecure": ["127.0.0.0/8"]}})
        (gateway.data_dir / EVENTS_FILE).parent.mkdir(parents=True)
        log = EventLog(gateway.data_dir / EVENTS_FILE)
        log.add(status="before")
        gateway.start()
        refused = gateway.gql('mutation { createWebhook(url: "http://10.0.0.1/") '
                              "{ secret } }")
        assert refused.error_code == "WEBHOOK_INVALID"
        made = gateway.gql(
            "mutation($u: String!) { createWebhook(url: $u, description: \"t\") "
            f"{{ secret webhook {{ {WEBHOOK_FIELDS} }} }} }}", {"u": receiver.url()})
        created = made.data["createWebhook"]
        hook, secret = created["webhook"]["id"], created["secret"]
        assert created["webhook"]["cursor"] == 1  # starts at the log's head
        after = log.add(status="after")
        (got,) = receiver.wait_for(1)
        assert got.headers["webhook-id"] == after
        Webhook(secret).verify(got.body, got.headers)
        listed = gateway.gql(f"{{ webhooks {{ {WEBHOOK_FIELDS} }} }}").data["webhooks"]
        assert [w["id"] for w in listed] == [hook] and secret not in str(listed)
        rotated = gateway.gql(f'mutation {{ rotateWebhookSecret(id: "{hook}") {{ secret }} }}')
        tested = gateway.gql(f'mutation {{ sendTestWebhook(id: "{hook}") '
                             "{ delivered status } }").data["sendTestWebhook"]
        assert tested == {"delivered": True, "status": 200}
        probe = receiver.wait_for(2)[1]
        for key in (secret, rotated.data["rotateWebhookSecret"]["secret"]):
            Webhook(key).verify(probe.body, probe.headers)
        gateway.gql(f'mutation {{ replayWebhooks(id: "{hook}", after: 0) {{ cursor }} }}')
        replayed = [r.headers["webhook-id"] for r in receiver.wait_for(4)[2:]]
        assert replayed[0] != after and replayed[1] == after
        scraped = gateway.http.get(f"{gateway.url}/metrics", timeout=30).text
        assert f'wagate_webhook_deliveries_total{{endpoint="{hook}",outcome="delivered"}}' \
            in scraped
        assert gateway.gql(f'mutation {{ deleteWebhook(id: "{hook}") }}').data
        missing = gateway.gql(f'mutation {{ deleteWebhook(id: "{hook}") }}')
        assert missing.error_code == "WEBHOOK_NOT_FOUND"
        gateway.stop()
    entries = "".join(f.read_text() for _, f in log_files(audit_dir(gateway.data_dir)))
    assert entries.count('"webhook.changed"') >= 5 and secret not in entries
