"""The durable state behind the limiter and the outbox, on a real diskcache."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.outbox.limits import Limits
from actors.outbox.store import MessageStore, NewMessage, cursor_of, text_hash
from gateway.core.config import LimitsConfig

# MessageStore(directory, ...) on the test's backend (tests/conftest.py: SQLite and
# PostgreSQL): each test that takes it runs on both.
OpenStore = Callable[..., MessageStore]


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


def test_expired_windows_go_at_expire_not_inside_each_check(tmp_path: Path) -> None:
    """diskcache culled expired keys inside every write (a query per write, a third of
    the outbox's CPU under load); now a check writes only, and ``expire`` (the outbox's
    prune tick) removes them."""
    limits = Limits(str(tmp_path), LimitsConfig(per_number_per_minute=5))
    limits.cache.set("an old window", [1], expire=0.01)
    deadline = time.monotonic() + 10
    while limits.cache.get("an old window") is not None:  # it reads as absent once due
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.01)
    for n in range(20):
        assert limits.check(f"141555500{n:02d}", 100.0)[0]
    stored = sqlite3.connect(tmp_path / "cache.db")
    try:
        count = "SELECT COUNT(*) FROM Cache WHERE key = ?"
        assert stored.execute(count, ("an old window",)).fetchone()[0] == 1  # not culled
        assert limits.expire() == 1
        assert stored.execute(count, ("an old window",)).fetchone()[0] == 0
    finally:
        stored.close()
    assert limits.check("14155550000", 100.0)[0]  # the windows still count
    limits.close()


def _new(text: str, session: str = "default", key: str | None = None,
         valid_until: float | None = None, requester: str = "app",
         phone: str = "14155552671") -> NewMessage:
    return NewMessage(session=session, phone=phone, text=text, idempotency_key=key,
                      valid_until=valid_until, requester=requester)


def test_message_store_queue_order_recovery_and_receipt_lookup(
        tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(tmp_path)
    a = store.add(_new("a"), 1.0)
    b = store.add(_new("b"), 2.0)
    c = store.add(_new("c", "other"), 3.0)
    sending = store.transition(b, "SENDING", 4.0)
    assert sending["state"] == "SENDING" and [h[0] for h in sending["history"]] == [
        "QUEUED", "SENDING"]
    store.transition(c, "SENT", 5.0, wa_message_id="3EB0AA")
    store.close()
    reopened = open_store(tmp_path)  # as after a crash
    assert [r["id"] for r in reopened.next_queued("default", 10.0, 10)] == [a["id"]]
    assert [r["id"] for r in reopened.in_state("SENDING")] == [b["id"]]
    assert reopened.by_wa_id("3EB0AA")["id"] == c["id"]
    assert [s for s, _, _ in reopened.get(c["id"])["history"]] == ["QUEUED", "SENT"]
    assert reopened.pending_counts() == {"default": 2}
    reopened.close()


def test_retries_wait_for_their_time(tmp_path: Path, open_store: OpenStore) -> None:
    """Order is due time, then acceptance: the index serves it without sorting a backlog."""
    store = open_store(tmp_path)
    a = store.add(_new("a"), 1.0)
    b = store.add(_new("b"), 2.0)
    store.transition(a, "QUEUED", 3.0, "REJECTED", next_attempt_at=100.0)
    assert [r["id"] for r in store.next_queued("default", 50.0, 10)] == [b["id"]]
    assert [r["id"] for r in store.next_queued("default", 100.0, 10)] == [b["id"], a["id"]]
    store.close()


def test_a_recipient_gets_its_messages_in_the_order_they_were_accepted(
        tmp_path: Path, open_store: OpenStore) -> None:
    """Only the oldest pending message of a recipient may leave: not while an older one
    is being sent, nor while an older one waits for its retry; other recipients'
    messages go on meanwhile."""
    store = open_store(tmp_path)
    a = store.add(_new("a"), 1.0)
    b = store.add(_new("b"), 2.0)
    other = store.add(NewMessage(session="default", phone="4915112345678", text="o"), 3.0)
    elsewhere = store.add(_new("e", session="other"), 4.0)
    assert [r["id"] for r in store.next_in_order("default", 10.0, 10)] == [a["id"], other["id"]]
    a = store.transition(a, "SENDING", 5.0)
    assert [r["id"] for r in store.next_in_order("default", 10.0, 10)] == [other["id"]]
    a = store.transition(a, "QUEUED", 6.0, "SERVER_ERROR", next_attempt_at=100.0)
    assert [r["id"] for r in store.next_in_order("default", 50.0, 10)] == [other["id"]]
    assert [r["id"] for r in store.next_in_order("default", 100.0, 10)] == [
        other["id"], a["id"]]
    store.transition(a, "SENT", 101.0)
    assert [r["id"] for r in store.next_in_order("default", 101.0, 10)] == [
        b["id"], other["id"]]
    assert [r["id"] for r in store.next_in_order("other", 10.0, 10)] == [elsewhere["id"]]
    store.close()


def test_idempotency_keys_are_unique_per_caller_and_session(
        tmp_path: Path, open_store: OpenStore) -> None:
    """Two applications (tokens) sharing a session may pick the same key: each has its
    own message under it; one caller cannot store a key twice on one session."""
    store = open_store(tmp_path)
    first = store.add(_new("a", key="k1"), 1.0)
    other_session = store.add(_new("a", session="other", key="k1"), 1.0)
    other_caller = store.add(_new("b", key="k1", requester="billing"), 1.0)
    assert store.by_idempotency_key("app", "default", "k1")["id"] == first["id"]
    assert store.by_idempotency_key("app", "other", "k1")["id"] == other_session["id"]
    assert store.by_idempotency_key("billing", "default", "k1")["id"] == other_caller["id"]
    assert store.by_idempotency_key("nobody", "default", "k1") is None
    with pytest.raises(sqlite3.IntegrityError):
        store.add(_new("again", key="k1"), 2.0)
    store.close()


def test_a_key_is_for_one_message_of_its_caller() -> None:
    """The same key again: the same request (answer with it), the caller's mistake (a
    different message), or a record from before keys had a caller that is not this
    request (somebody else's: it says nothing)."""
    from actors.outbox.store import key_verdict

    earlier = {"phone": "14155552671", "text_hash": text_hash("code 1"), "requester": "app"}
    assert key_verdict(earlier, "app", "14155552671", "code 1") == "duplicate"
    assert key_verdict(earlier, "app", "14155552671", "code 2") == "reused"
    assert key_verdict(earlier, "app", "14155550000", "code 1") == "reused"
    legacy = {**earlier, "requester": ""}
    assert key_verdict(legacy, "app", "14155552671", "code 1") == "duplicate"
    assert key_verdict(legacy, "app", "14155550000", "code 1") == "unrelated"


def test_a_sqlite_store_from_before_caller_scoped_keys_is_migrated(tmp_path: Path) -> None:
    """The old index made a key unique per session whoever used it: it is replaced at
    open (else a second caller's key would fail the insert), and the records it made
    (no caller) still find their retries."""
    store = MessageStore(tmp_path)
    store.db.executescript("DROP INDEX by_caller_key; CREATE UNIQUE INDEX by_key ON messages "
                           "(session, idempotency_key) WHERE idempotency_key IS NOT NULL;")
    legacy = store.add(_new("old", key="k1", requester=""), 1.0)
    store.close()
    store = MessageStore(tmp_path)
    indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master "
                                              "WHERE type = 'index'")}
    assert "by_key" not in indexes and "by_caller_key" in indexes
    assert store.by_idempotency_key("app", "default", "k1")["id"] == legacy["id"]
    mine = store.add(_new("new", key="k1"), 2.0)  # no longer refused by the old index
    assert store.by_idempotency_key("app", "default", "k1")["id"] == mine["id"]
    store.close()


def test_expiry_and_pruning(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(tmp_path)
    old = store.add(_new("old", valid_until=10.0), 1.0)
    fresh = store.add(_new("fresh", valid_until=1000.0), 1.0)
    assert [r["id"] for r in store.expire_due(20.0)] == [old["id"]]
    assert store.get(old["id"])["state"] == "EXPIRED"
    assert store.get(fresh["id"])["state"] == "QUEUED"
    assert store.prune(older_than=30.0) == 1  # the finished one only
    assert store.get(old["id"]) is None and store.get(fresh["id"]) is not None
    store.close()


def test_paging_newest_first_with_filters(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(tmp_path)
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


def test_a_batch_commits_together_or_not_at_all(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(tmp_path)
    a = store.add(_new("a"), 1.0)
    with pytest.raises(RuntimeError), store.batch():
        store.transition(a, "SENDING", 2.0)
        raise RuntimeError("crash in the middle")
    assert store.get(a["id"])["state"] == "QUEUED"
    with store.batch():
        store.transition(a, "SENDING", 3.0)
    assert open_store(tmp_path).get(a["id"])["state"] == "SENDING"  # another connection
    store.close()


def test_what_transition_returns_is_what_was_stored(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(tmp_path)
    a = store.add(_new("a"), 1.0)
    assert store.get(a["id"]) == a
    b = store.transition(a, "QUEUED", 2.0, "UNCERTAIN", uncertain=True, attempts=2)
    assert store.get(a["id"]) == b and b["uncertain"] is True and b["reason"] == "UNCERTAIN"
    store.close()


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "outbox")
    store.add(_new("a"), 1.0)
    assert (tmp_path / "outbox").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "outbox" / "messages.sqlite3").stat().st_mode & 0o777 == 0o600
    store.close()


def test_no_final_state_keeps_the_text_when_keep_text_is_off(
        tmp_path: Path, open_store: OpenStore, store_backend: str) -> None:
    """Every way into a final state erases the text (EXPIRED by the expiry sweep too),
    in the database file as well, not only in what a query returns."""
    store = open_store(tmp_path, keep_text=False)
    expired = store.add(_new("expiring secret 4711", valid_until=10.0), 1.0)
    sent = store.add(_new("sent secret 4712"), 1.0)
    failed = store.add(_new("failed secret 4713"), 1.0)
    queued = store.add(_new("queued secret 4714"), 1.0)
    assert [r["id"] for r in store.expire_due(20.0)] == [expired["id"]]
    store.transition(store.transition(sent, "SENDING", 2.0), "SENT", 3.0)
    store.transition(failed, "FAILED", 2.0, "REJECTED")
    for finished in (expired, sent, failed):
        record = store.get(finished["id"])
        assert record["text"] is None and record["text_hash"] == finished["text_hash"]
    assert store.get(queued["id"])["text"] == "queued secret 4714"  # still to be sent
    store.close()
    if store_backend:
        return  # PostgreSQL: no file of ours to read (its pages are the server's)
    raw = (tmp_path / "messages.sqlite3").read_bytes()
    assert b"queued secret 4714" in raw
    for text in (b"expiring secret 4711", b"sent secret 4712", b"failed secret 4713"):
        assert text not in raw


def test_turning_keep_text_off_erases_the_text_of_finished_records(
        tmp_path: Path, open_store: OpenStore, store_backend: str) -> None:
    store = open_store(tmp_path)  # keep_text on: finished records keep their text
    done = store.transition(store.add(_new("kept secret 4715"), 1.0), "EXPIRED", 2.0)
    waiting = store.add(_new("waiting secret 4716"), 1.0)
    store.close()
    store = open_store(tmp_path, keep_text=False)
    assert store.get(done["id"])["text"] is None
    assert store.get(waiting["id"])["text"] == "waiting secret 4716"
    store.close()
    if store_backend:
        return  # PostgreSQL: no file of ours to read (its pages are the server's)
    raw = (tmp_path / "messages.sqlite3").read_bytes()
    assert b"kept secret 4715" not in raw and b"waiting secret 4716" in raw


def test_reason_and_error_describe_the_present_state(tmp_path: Path, open_store: OpenStore) -> None:
    """A message SENT after a failed attempt does not keep that attempt's reason;
    the history keeps every state's."""
    store = open_store(tmp_path)
    a = store.add(_new("a"), 1.0)
    a = store.transition(a, "SENDING", 2.0)
    a = store.transition(a, "QUEUED", 3.0, "SERVER_ERROR", error="temporary", attempts=1)
    assert (a["reason"], a["error"]) == ("SERVER_ERROR", "temporary")
    a = store.transition(a, "SENDING", 4.0)
    a = store.transition(a, "SENT", 5.0, attempts=2)
    assert store.get(a["id"]) == a
    assert (a["reason"], a["error"]) == ("", "")
    assert [(s, r) for s, _, r in a["history"]] == [
        ("QUEUED", ""), ("SENDING", ""), ("QUEUED", "SERVER_ERROR"), ("SENDING", ""),
        ("SENT", "")]
    store.close()
