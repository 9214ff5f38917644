"""What the outbox's stores count for /metrics, on real disk."""

from __future__ import annotations

from pathlib import Path

from actors.outbox.limits import Limits
from actors.outbox.store import MessageStore, NewMessage
from gateway.core.config import LimitsConfig


def test_each_message_counts_once_per_state_it_reaches(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    a = store.add(NewMessage(session="s", phone="14155552671", text="a"), 1.0)
    b = store.add(NewMessage(session="s", phone="14155552671", text="b"), 1.0)
    a = store.transition(a, "SENDING", 2.0)
    a = store.transition(a, "QUEUED", 3.0, "SERVER_ERROR")  # a retry: queued again
    a = store.transition(a, "SENDING", 4.0)
    a = store.transition(a, "SENT", 5.0)
    store.transition(a, "READ", 6.0)  # a receipt may skip DELIVERED
    b = store.transition(b, "SENDING", 2.0)
    store.transition(b, "FAILED", 3.0, "REJECTED")
    assert dict(store.reached) == {"QUEUED": 2, "SENDING": 2, "SENT": 1, "READ": 1,
                                   "FAILED": 1}
    store.close()


def test_usage_ratios_report_the_busiest_window_of_each_limit(tmp_path: Path) -> None:
    limits = Limits(str(tmp_path), LimitsConfig(per_number_per_minute=2, per_number_per_hour=10,
                                                global_per_day=20))
    assert limits.check("14155550001", 100.0)[0]
    assert limits.check("14155550001", 100.0)[0]
    assert limits.check("14155550002", 100.0)[0]
    busy = {"recipient_minute": 1.0, "recipient_hour": 0.2, "global_day": 0.15}
    assert limits.usage_ratios(100.0) == busy
    assert not limits.check("14155550001", 100.5)[0]
    assert limits.usage_ratios(100.5) == busy  # a refusal uses no quota
    # Two minutes later the minute windows are empty; the hour and the day still count.
    assert limits.usage_ratios(220.0) == {"recipient_minute": 0.0, "recipient_hour": 0.2,
                                          "global_day": 0.15}
    assert limits.check("14155550002", 220.0)[0]
    assert limits.usage_ratios(220.0) == {"recipient_minute": 0.5, "recipient_hour": 0.2,
                                          "global_day": 0.2}
    # Recipients idle for longer than the longest window are not looked at any more.
    assert limits.usage_ratios(7400.0) == {"recipient_minute": 0.0, "recipient_hour": 0.0,
                                           "global_day": 0.2}
    limits.close()
