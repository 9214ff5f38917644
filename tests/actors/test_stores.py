"""The durable state behind the limiter and the outbox, on a real diskcache."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actors.limiter import Limits
from actors.message_store import MessageStore, NewMessage, cursor_of
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


def _new(text: str, session: str = "default", key: str | None = None,
         valid_until: float | None = None, requester: str = "ci") -> NewMessage:
    return NewMessage(session=session, phone="14155552671", text=text, idempotency_key=key,
                      valid_until=valid_until, requester=requester)


def test_message_store_queue_order_recovery_and_receipt_lookup(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    a = store.add(_new("a"), 1.0)
    b = store.add(_new("b"), 2.0)
    c = store.add(_new("c", "other"), 3.0)
    sending = store.transition(b, "SENDING", 4.0)
    assert sending["state"] == "SENDING" and [h[0] for h in sending["history"]] == [
        "QUEUED", "SENDING"]
    store.transition(c, "SENT", 5.0, wa_message_id="3EB0AA")
    store.close()
    reopened = MessageStore(tmp_path)  # as after a crash
    assert [r["id"] for r in reopened.next_queued("default", 10.0, 10)] == [a["id"]]
    assert [r["id"] for r in reopened.in_state("SENDING")] == [b["id"]]
    assert reopened.by_wa_id("3EB0AA")["id"] == c["id"]
    assert [s for s, _, _ in reopened.get(c["id"])["history"]] == ["QUEUED", "SENT"]
    assert reopened.pending_counts() == {"default": 2}
    reopened.close()


def test_retries_wait_for_their_time(tmp_path: Path) -> None:
    """Order is due time, then acceptance: the index serves it without sorting a backlog."""
    store = MessageStore(tmp_path)
    a = store.add(_new("a"), 1.0)
    b = store.add(_new("b"), 2.0)
    store.transition(a, "QUEUED", 3.0, "REJECTED", next_attempt_at=100.0)
    assert [r["id"] for r in store.next_queued("default", 50.0, 10)] == [b["id"]]
    assert [r["id"] for r in store.next_queued("default", 100.0, 10)] == [b["id"], a["id"]]
    store.close()


def test_idempotency_keys_are_unique_per_session(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    first = store.add(_new("a", key="k1"), 1.0)
    store.add(_new("a", session="other", key="k1"), 1.0)
    assert store.by_idempotency_key("default", "ci", "k1")["id"] == first["id"]
    with pytest.raises(sqlite3.IntegrityError):
        store.add(_new("again", key="k1"), 2.0)
    store.close()


def test_an_idempotency_key_belongs_to_the_client_that_chose_it(tmp_path: Path) -> None:
    """Two tokens of one session picking the same key each keep their own message."""
    store = MessageStore(tmp_path)
    mine = store.add(_new("mine", key="otp-1", requester="alice"), 1.0)
    assert store.by_idempotency_key("default", "bob", "otp-1") is None
    theirs = store.add(_new("theirs", key="otp-1", requester="bob"), 2.0)
    assert store.by_idempotency_key("default", "alice", "otp-1")["id"] == mine["id"]
    assert store.by_idempotency_key("default", "bob", "otp-1")["id"] == theirs["id"]
    store.close()


def test_keys_written_before_requesters_were_recorded_still_answer_retries(
        tmp_path: Path) -> None:
    """An upgrade keeps a retry that spans it from sending twice: a store made with the
    old (session, key) index, whose rows have no requester, opens and still matches."""
    legacy = sqlite3.connect(str(tmp_path / "messages.sqlite3"))
    legacy.executescript(_LEGACY_SCHEMA)
    legacy.close()
    store = MessageStore(tmp_path)
    old = store.add(_new("before", key="k", requester=""), 1.0)
    assert store.by_idempotency_key("default", "alice", "k")["id"] == old["id"]
    own = store.add(_new("after", key="k", requester="bob"), 2.0)  # the old index is gone
    assert store.by_idempotency_key("default", "bob", "k")["id"] == own["id"]
    store.close()


_LEGACY_SCHEMA = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, phone TEXT NOT NULL, text TEXT,
    text_hash TEXT NOT NULL, state TEXT NOT NULL, accepted_at REAL NOT NULL,
    updated_at REAL NOT NULL, next_attempt_at REAL NOT NULL DEFAULT 0, valid_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0, wa_message_id TEXT,
    reason TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '', requester TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT, is_test INTEGER NOT NULL DEFAULT 0,
    uncertain INTEGER NOT NULL DEFAULT 0, history TEXT NOT NULL);
CREATE UNIQUE INDEX by_key ON messages (session, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""


def test_expiry_and_pruning(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    old = store.add(_new("old", valid_until=10.0), 1.0)
    fresh = store.add(_new("fresh", valid_until=1000.0), 1.0)
    assert [r["id"] for r in store.expire_due(20.0)] == [old["id"]]
    assert store.get(old["id"])["state"] == "EXPIRED"
    assert store.get(fresh["id"])["state"] == "QUEUED"
    assert store.prune(older_than=30.0) == 1  # the finished one only
    assert store.get(old["id"]) is None and store.get(fresh["id"]) is not None
    store.close()


def test_paging_newest_first_with_filters(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    ids = [store.add(_new(f"m{i}", session="s" if i % 2 else "default"), float(i))["id"]
           for i in range(7)]
    page, more = store.page(first=3)
    assert [r["id"] for r in page] == ids[::-1][:3] and more
    page2, more2 = store.page(first=3, after=cursor_of(page[-1]))
    assert [r["id"] for r in page2] == ids[::-1][3:6] and more2
    only_s, _ = store.page(session="s", first=10)
    assert [r["id"] for r in only_s] == [ids[5], ids[3], ids[1]]
    with pytest.raises(ValueError):
        store.page(after="not-a-cursor")
    store.close()


def test_a_batch_commits_together_or_not_at_all(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    a = store.add(_new("a"), 1.0)
    with pytest.raises(RuntimeError), store.batch():
        store.transition(a, "SENDING", 2.0)
        raise RuntimeError("crash in the middle")
    assert store.get(a["id"])["state"] == "QUEUED"
    with store.batch():
        store.transition(a, "SENDING", 3.0)
    assert MessageStore(tmp_path).get(a["id"])["state"] == "SENDING"  # another connection
    store.close()


def test_what_transition_returns_is_what_was_stored(tmp_path: Path) -> None:
    store = MessageStore(tmp_path)
    a = store.add(_new("a"), 1.0)
    assert store.get(a["id"]) == a
    b = store.transition(a, "QUEUED", 2.0, "UNCERTAIN", uncertain=True, attempts=2)
    assert store.get(a["id"]) == b and b["uncertain"] is True and b["reason"] == "UNCERTAIN"
    store.close()


def test_files_are_private(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "outbox")
    store.add(_new("a"), 1.0)
    assert (tmp_path / "outbox").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "outbox" / "messages.sqlite3").stat().st_mode & 0o777 == 0o600
    store.close()
