"""How the message store answers its frequent counts (actors/outbox/store.py), on a
real SQLite file: the query plan, not a timing."""

from __future__ import annotations

from pathlib import Path

from actors.outbox.store import UNCONFIRMED_SQL, MessageStore


def _plan(store: MessageStore, sql: str, *args: object) -> list[str]:
    return [str(row["detail"]) for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", args)]


def test_the_unconfirmed_count_reads_only_its_own_index(tmp_path: Path) -> None:
    """Every health report and /metrics scrape counts the messages still SENT after
    delivery.unconfirmed_after_seconds: it must read a covering index of SENT rows
    only, not every SENT row of the table (a large outbox keeps many)."""
    store = MessageStore(tmp_path / "outbox")
    try:
        store.db.execute("INSERT INTO messages (id, session, phone, text_hash, state, "
                         "accepted_at, updated_at, history) VALUES "
                         "('m1', 's1', '4917012345678', 'h', 'SENT', 1, 1, '[]')")
        assert store.unconfirmed(2.0) == {"s1": 1}
        plan = _plan(store, UNCONFIRMED_SQL, 2.0)
        assert any("COVERING INDEX unconfirmed" in step for step in plan), plan
    finally:
        store.db.close()
