"""The durable state behind the limiter and the outbox, on a real diskcache."""

from __future__ import annotations

from pathlib import Path

from actors.limiter import Limits
from actors.messages import SendText
from actors.outbox import MessageStore
from gateway.config import LimitsConfig


def test_limits_survive_a_new_instance(tmp_path: Path) -> None:
    config = LimitsConfig(per_number_per_minute=2, per_number_per_hour=100, global_per_day=1000)
    first = Limits(str(tmp_path), config)
    assert first.check("14155552671", 100.0)[0]
    assert first.check("14155552671", 100.5)[0]
    first.close()
    second = Limits(str(tmp_path), config)  # as after a restart of the limiter
    allowed, retry_after, scope = second.check("14155552671", 101.0)
    assert not allowed and scope == "recipient_minute" and 0 < retry_after <= 61
    assert second.check("14155550000", 101.0)[0]  # another recipient is unaffected
    assert second.usage(101.0)["global_day_used"] == 3.0
    second.close()


def test_a_rejected_send_uses_no_quota(tmp_path: Path) -> None:
    limits = Limits(str(tmp_path), LimitsConfig(1, 100, 2))
    assert limits.check("14155552671", 0.0)[0]
    for _ in range(5):
        assert not limits.check("14155552671", 1.0)[0]
    assert limits.usage(1.0)["global_day_used"] == 1.0
    assert limits.check("14155550000", 1.0)[0]
    allowed, _, scope = limits.check("14155551111", 1.0)
    assert not allowed and scope == "global_day"
    limits.close()


def _send(text: str, session: str = "default") -> SendText:
    return SendText(session=session, phone="14155552671", text=text, request_id="r")


def test_message_store_recovers_pending_records_in_order(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path), retention_seconds=3600)
    a = store.add(_send("a"), 1.0)
    b = store.add(_send("b"), 2.0)
    c = store.add(_send("c", "other"), 3.0)
    store.update(b, 4.0, state="SENDING", attempts=1)
    store.update(c, 5.0, state="SENT", wa_message_id="3EB0AA")
    store.close()
    reopened = MessageStore(str(tmp_path), retention_seconds=3600)
    assert [r["id"] for r in reopened.pending()] == [a["id"], b["id"]]
    assert reopened.by_wa_id("3EB0AA")["id"] == c["id"]
    assert reopened.get(c["id"])["state"] == "SENT"
    reopened.close()
