"""Webhook metrics on /metrics: the delivery loop's real counters (Stats) through the
real Flask app; the actor system is the FakeBridge, answering the "metrics" command
with what the webhook actor answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.messages import Ok, WebhookCommand
from actors.webhooks.delivery import Stats
from tests.unit.web_helpers import FakeBridge, Web, add_token, web, web_config


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Web]:
    stats = Stats()
    for seconds in (0.01, 0.2, 3.0):
        stats.observe("wh_a", "delivered", seconds)
    stats.observe("wh_b", "gone", 0.02)
    stats.count_disabled()
    bridge = FakeBridge()
    bridge.handlers[WebhookCommand] = lambda m: Ok({**stats.snapshot(), "disabled_now": 1})
    yield from web(web_config(tmp_path), bridge)


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_deliveries_latency_and_disabled_endpoints_are_scraped(app: Web) -> None:
    token = add_token(app.config, "ops", "viewer")
    response = app.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    found = samples(response.get_data(as_text=True))
    assert found["wagate_webhook_deliveries_total"] == {
        (("endpoint", "wh_a"), ("outcome", "delivered")): 3.0,
        (("endpoint", "wh_b"), ("outcome", "gone")): 1.0}
    buckets = found["wagate_webhook_delivery_seconds_bucket"]
    assert buckets[(("le", "0.05"),)] == 2.0 and buckets[(("le", "+Inf"),)] == 4.0
    assert found["wagate_webhook_delivery_seconds_count"] == {(): 4.0}
    assert found["wagate_webhook_endpoints_disabled"] == {(): 1.0}
    assert found["wagate_webhook_disabled_total"] == {(): 1.0}


def test_a_token_limited_to_sessions_sees_no_webhook_series(app: Web) -> None:
    token = add_token(app.config, "shop", "viewer", sessions=("default",))
    response = app.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert "wagate_webhook" not in response.get_data(as_text=True)
    assert not app.bridge.asked_of(WebhookCommand)
