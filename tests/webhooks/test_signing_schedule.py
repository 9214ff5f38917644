"""Signing, the retry schedule and outcome rules: pure functions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from actors.webhooks import schedule, signing
from actors.webhooks.schedule import SCHEDULE_SECONDS, Outcome


def test_signature_is_the_hand_computed_hmac_over_id_timestamp_body() -> None:
    secret = signing.new_secret()
    body = signing.payload("message.status", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                           {"id": "m1", "status": "SENT"})
    now = datetime(2026, 1, 2, 3, 4, 6, 700000, tzinfo=UTC)
    headers = signing.headers("evt_1", body, [secret], now)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"evt_1." + headers["webhook-timestamp"].encode() + b"." + body,
                   hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    assert json.loads(body) == {"type": "message.status", "timestamp": "2026-01-02T03:04:05Z",
                                "data": {"id": "m1", "status": "SENT"}}


def test_during_a_rotation_both_secrets_sign_and_each_verifies_alone() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    body = signing.payload("webhook.test", datetime.now(UTC), {})
    headers = signing.headers("evt_2", body, [new, old], datetime.now(UTC))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


@pytest.mark.parametrize("bad", ["", "abc", "whsec_", "whsec_!!!!", "whsec_" + "QUJD"])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(signing.BadSecret):
        signing.check_secret(bad)


def test_a_new_secret_is_whsec_and_32_bytes() -> None:
    secret = signing.check_secret(signing.new_secret())
    assert len(base64.b64decode(secret[6:])) == 32


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED),
    (301, Outcome.RETRY), (302, Outcome.RETRY), (400, Outcome.RETRY), (429, Outcome.RETRY),
    (500, Outcome.RETRY), (None, Outcome.RETRY), (410, Outcome.GONE), (199, Outcome.RETRY)])
def test_only_2xx_is_success_and_410_disables(status: int | None, outcome: Outcome) -> None:
    assert schedule.classify(status) is outcome


def test_the_schedule_is_standard_webhooks_scaled_and_then_exhausted() -> None:
    waits = [schedule.decide(500, n, scale=0.5, jitter=0.0).delay_seconds
             for n in range(len(SCHEDULE_SECONDS))]
    assert waits == [s * 0.5 for s in (5, 300, 1800, 7200, 18000, 36000, 50400, 72000,
                                       86400)]
    assert schedule.decide(500, 9, scale=0.5, jitter=0.0).outcome is Outcome.EXHAUSTED
    assert schedule.decide(200, 9, scale=0.5, jitter=0.0).outcome is Outcome.DELIVERED


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    rng = random.Random(7)
    waits = {schedule.decide(500, 1, scale=1.0, jitter=0.2, rng=rng).delay_seconds
             for _ in range(200)}
    assert all(240 <= w <= 360 for w in waits) and len(waits) > 100


def test_retry_after_is_honoured_when_longer_and_capped() -> None:
    assert schedule.decide(429, 0, scale=1, jitter=0, retry_after=60).delay_seconds == 60
    assert schedule.decide(429, 2, scale=1, jitter=0, retry_after=60).delay_seconds == 1800
    assert schedule.decide(429, 0, scale=1, jitter=0, retry_after=1e9,
                           max_retry_after=3600).delay_seconds == 3600
    assert schedule.decide(429, 0, scale=1, jitter=0,
                           retry_after=float("nan")).delay_seconds == 5


def test_retry_after_reads_seconds_and_http_dates_and_ignores_nonsense() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert schedule.retry_after_seconds("120", now) == 120
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert schedule.retry_after_seconds(later, now) == 90
    for junk in (None, "", "soon", "-5", "1e9999"):
        assert schedule.retry_after_seconds(junk, now) is None


# ---- the event log must outlast the retry schedule -----------------------------------


def test_the_retry_span_is_the_schedule_added_up_times_the_scale() -> None:
    assert schedule.retry_span_seconds(1.0) == 272105.0  # 75.6 h: 5 s ... 24 h
    assert schedule.retry_span_seconds(0.5) == 272105.0 / 2


@pytest.mark.parametrize(("days", "scale", "warned"), [
    (7.0, 1.0, False),  # the defaults: 7 days kept, 3.15 days of retries
    (3.2, 1.0, False), (3.1, 1.0, True), (1.0, 1.0, True),
    (1.0, 0.25, False),  # a shrunk schedule (0.79 days) fits in one day
    (7.0, 3.0, True),  # a stretched one (9.4 days) does not fit in seven
    (1e-6, 1e-9, False), (3650.0, 1e6, True),
])
def test_a_retention_shorter_than_the_retry_span_is_warned_of(
        days: float, scale: float, warned: bool) -> None:
    found = schedule.retention_warning(days, scale)
    assert (found is not None) == warned, found
    if found is not None:
        assert found["code"] == "EVENT_RETENTION_SHORT"
        assert "events.retention_days" in str(found["message"])
        assert found["retrySpanHours"] == round(272105.0 * scale / 3600, 1)


def test_the_configured_retention_is_checked_for_start_and_health() -> None:
    from gateway.api.health import config_warnings
    from gateway.core.config import load_config

    assert config_warnings(load_config(None)) == []
    short = load_config(None, {"events.retention_days": 2})
    (warning,) = config_warnings(short)
    assert warning["code"] == "EVENT_RETENTION_SHORT" and "at least 4" in warning["message"]
    assert config_warnings(load_config(None, {"events.retention_days": 2,
                                              "webhooks.retry_scale": 0.5})) == []
