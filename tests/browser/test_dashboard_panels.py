"""The dashboard's webhooks panel, incoming messages by conversation and the message
chart, in a real browser against a real gateway with a simulated phone and real
webhook receivers on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import shot
from tests.browser.test_dashboard import sign_in
from tests.integration.harness import Gateway, wait_for
from tests.webhooks.receiver import Receiver

RECIPIENT = "4915112345001"
WEBHOOK = ("mutation($u: String!) { createWebhook(url: $u) { webhook { id } } }")
WEBHOOKS = "{ webhooks { id enabled disabledReason } }"


def create_webhook(gw: Gateway, url: str) -> str:
    result = gw.gql(WEBHOOK, {"u": url})
    assert not result.errors, result
    return str(result.data["createWebhook"]["webhook"]["id"])


def webhook(gw: Gateway, hook_id: str) -> dict[str, Any]:
    result = gw.gql(WEBHOOKS)
    assert not result.errors, result
    return next(h for h in result.data["webhooks"] if h["id"] == hook_id)


def send_and_read(gw: Gateway, text: str) -> tuple[str, str]:
    """Send ``text``, let the simulated phone confirm delivery and reading; the
    message's id and its WhatsApp id."""
    result = gw.gql("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
                    "{ id } }", {"i": {"phoneNumber": f"+{RECIPIENT}", "message": text}})
    assert not result.errors, result
    message = result.data["sendWhatsAppMessage"]["id"]

    def state() -> str:
        found = gw.gql("query($id: ID!) { whatsAppMessage(id: $id) { state } }", {"id": message})
        return str(found.data["whatsAppMessage"]["state"])

    wait_for(lambda: state() == "SENT", 15.0, message="the message to be SENT")
    (wa_id,) = wait_for(lambda: [m["id"] for m in gw.inbox() if m["text"] == text], 15.0,
                        message="the message in the simulated inbox")
    gw.sim("receipt", wa_id, "delivered")
    wait_for(lambda: state() == "DELIVERED", 15.0, message="the message to be DELIVERED")
    gw.sim("receipt", wa_id, "read")
    wait_for(lambda: state() == "READ", 15.0, message="the message to be READ")
    return message, wa_id


def test_webhooks_incoming_and_chart_panels(make_gateway: Callable[..., Gateway],
                                            open_page: Callable[..., Page]) -> None:
    with Receiver() as good, Receiver(default=(410, {})) as gone:
        gw = make_gateway({"webhooks": {"allow_insecure": ["127.0.0.0/8"]}}).start()
        gw.link()
        good_id = create_webhook(gw, good.url())
        gone_id = create_webhook(gw, gone.url("/gone"))
        message, wa_id = send_and_read(gw, "chart me")
        # 410 Gone: the endpoint is disabled by the gateway, with its reason.
        wait_for(lambda: not webhook(gw, gone_id)["enabled"], 20.0,
                 message="the 410 endpoint to be disabled")
        secret = "reply 5c1e shown on the dashboard"
        gw.sim("reply", "--to-session", "default", "--from", RECIPIENT, "--text", secret,
               "--quote", wa_id, "--name", "Ann")

        page = open_page(gw)
        sign_in(page, gw.token)

        # The chart: one bar per state in the current hour, drawn from the events.
        chart = page.locator("#chart svg")
        expect(chart).to_have_attribute("data-hours", "24")
        last_hour = chart.locator("g").last
        for state in ("SENT", "DELIVERED", "READ"):
            expect(last_hour.locator(f'rect[data-state="{state}"]')).to_have_attribute(
                "data-count", "1")
            expect(page.locator(f"#chart-total-{state}")).to_have_text("1")
        expect(last_hour.locator('rect[data-state="FAILED"]')).to_have_count(0)
        expect(page.locator("#chart-total-FAILED")).to_have_text("0")

        # Incoming: the reply under its conversation, with the message it quotes.
        conversation = page.locator(f'article[data-conversation="+{RECIPIENT}"]')
        expect(conversation).to_contain_text(secret)
        expect(conversation).to_contain_text(f"replies to message {wa_id}")
        expect(conversation).to_contain_text("session default")
        conversation.get_by_role("button", name=f"Open the conversation with +{RECIPIENT} "
                                 "on default").click()
        timeline = page.locator("#conversation-timeline")
        expect(timeline.locator(f'li.out[data-message-id="{message}"]')).to_contain_text("READ")
        expect(timeline.locator("li.in")).to_contain_text(
            f"replies to our message {message} (READ)")
        # A later reply shows up by itself (the panel asks only for what came since).
        gw.sim("reply", "--to-session", "default", "--from", RECIPIENT, "--text", "second one")
        expect(conversation).to_contain_text("2 messages")
        expect(timeline.locator("li.in")).to_have_count(2)
        shot(page, "panels-01-chart-and-incoming")

        # Webhooks: the live endpoint, then its test event reaches the receiver.
        card = page.locator(f'article[data-webhook-id="{good_id}"]')
        expect(card).to_contain_text(good.url())
        expect(card).to_have_attribute("data-enabled", "true")
        expect(card.get_by_test_id("webhook-state")).to_have_text("Enabled")
        expect(card.get_by_test_id("webhook-last")).to_contain_text("HTTP 200")
        before = len(good.requests)
        card.get_by_role("button", name=f"Send a test event to {good.url()}").click()
        expect(card.get_by_test_id("webhook-result")).to_contain_text(
            "Test event delivered: the endpoint answered HTTP 200")
        tests = [json.loads(r.body) for r in good.requests[before:]]
        assert [t["type"] for t in tests] == ["webhook.test"], tests

        # The disabled one is red, with the reason the gateway gave.
        disabled = page.locator(f'article[data-webhook-id="{gone_id}"]')
        expect(disabled).to_have_attribute("data-enabled", "false")
        expect(disabled).to_have_class("webhook tone-bad")
        reason = webhook(gw, gone_id)["disabledReason"]
        assert reason
        expect(disabled.get_by_test_id("webhook-state")).to_have_text(f"Disabled: {reason}")
        expect(disabled.get_by_test_id("webhook-state")).to_have_css(
            "color", "rgb(164, 22, 26)")
        shot(page, "panels-02-webhooks")

        # Enable it again from the page (the receiver now answers 200).
        gone.default = (200, {})
        disabled.get_by_role("button", name=f"Enable {gone.url('/gone')}").click()
        expect(disabled).to_have_attribute("data-enabled", "true")

        # Replay asks first; confirmed, the first event arrives again (same webhook-id).
        first_id = good.requests[0].headers["webhook-id"]
        card.get_by_text("Replay past events").click()
        card.get_by_label("Replay after event number").fill("0")
        card.get_by_role("button", name=f"Replay events to {good.url()}").click()
        expect(page.locator("#confirm")).to_be_visible()
        assert [r.headers["webhook-id"] for r in good.requests].count(first_id) == 1
        page.locator("#confirm-ok").click()
        expect(card.get_by_test_id("webhook-result")).to_contain_text(
            "Replay started after event 0")
        wait_for(lambda: [r.headers["webhook-id"] for r in good.requests].count(first_id) == 2,
                 20.0, message="the first event to be delivered again")

        # What the panel shows is also in /metrics (README: Metrics), for alerting.
        scraped = gw.http.get(f"{gw.url}/metrics", timeout=30).text
        assert f'wagate_webhook_deliveries_total{{endpoint="{gone_id}",outcome="gone"}} 1.0' \
            in scraped, scraped
        assert f'wagate_webhook_deliveries_total{{endpoint="{good_id}",outcome="test"}} 1.0' \
            in scraped, scraped
        # Regressions: the test event and the replies were missing from these counters.
        assert 'wagate_events_written_total{type="message.received"} 2.0' in scraped, scraped
        for name in ("wagate_webhook_delivery_seconds_bucket", "wagate_event_log_rows",
                     "wagate_event_log_bytes", 'wagate_events_written_total{type="message.status"}',
                     "wagate_webhook_endpoints_disabled 0.0"):
            assert name in scraped, name


def test_a_role_without_admin_sees_no_webhooks_panel(make_gateway: Callable[..., Gateway],
                                                     open_page: Callable[..., Page]) -> None:
    gw = make_gateway().start()
    page = open_page(gw)
    sign_in(page, gw.make_token("operator"))
    expect(page.locator("#chart svg")).to_have_attribute("data-hours", "24")
    expect(page.locator("#incoming-section")).to_be_visible()
    expect(page.locator("#webhooks-section")).to_be_hidden()
    expect(page.locator("#role-note")).to_contain_text("see or manage webhooks")
