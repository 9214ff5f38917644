"""Received messages and receipts that found the disk full wait in order, bounded, and
show in health (actors/outbox/held.py; the real full disk: tests/integration/
test_disk_full.py)."""

from __future__ import annotations

from dataclasses import replace

from actors.messages import DeliveryReceipt, HealthReport
from actors.metrics import OutboxMetrics
from actors.outbox.held import HeldWrites
from gateway.api.health import health_document


def test_held_writes_come_back_oldest_first_and_the_overflow_is_counted_lost() -> None:
    held = HeldWrites(limit=2)
    first, second, third = (DeliveryReceipt(f"wa{n}", "delivered", "s") for n in range(3))
    assert held.hold(first) and held.hold(second)
    assert not held.hold(third)  # memory is bounded: the newest is refused
    assert len(held) == 2 and held.lost == 1
    assert held.oldest() is first
    held.written()
    assert held.oldest() is second and len(held) == 1
    held.written()
    assert held.oldest() is None and not held and held.lost == 1


def test_health_is_degraded_with_writes_held_until_they_are_written() -> None:
    report = HealthReport(outbox_metrics=OutboxMetrics(held_writes=3))
    document = health_document(report, 0.0)
    assert document["status"] == "degraded"
    [warning] = [w for w in document["warnings"] if w["code"] == "WRITES_HELD"]
    assert warning["count"] == 3 and "disk" in warning["message"]
    assert "restart" in warning["message"]  # memory only: say what loses them
    assert health_document(replace(report, outbox_metrics=OutboxMetrics()), 0.0)[
        "status"] == "ok"
