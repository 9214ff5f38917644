"""The sent journal against a real PostgreSQL (actors/leases/journal.py, issue 16).

A session process journals what WhatsApp took under its lease epoch; the outbox asks
before it sends an in-flight message of an ended process again. These tests take real
leases (``LeaseStore``) so the fencing is the database's, not a stand-in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from actors.leases.journal import Sent, SentJournal
from actors.leases.store import LeaseStore, LeaseStoreUnavailable, StaleEpoch
from actors.leases.timing import LeaseTiming
from actors.messages import DeliveryResult
from actors.session.journaling import SendJournaling

SLOW = LeaseTiming(lease=30.0, renew=5.0, margin=5.0)


@pytest.fixture
def lease(pg_dsn: str) -> Iterator[LeaseStore]:
    store = LeaseStore(pg_dsn, SLOW, host="host-a", pid=101)
    store.ensure_schema()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def journal(pg_dsn: str) -> Iterator[SentJournal]:
    made = SentJournal(pg_dsn, timeout_seconds=2.0, retention_hours=24.0)
    try:
        yield made
    finally:
        made.close()


def _sent(n: int, prefix: str = "m") -> list[Sent]:
    return [Sent(f"{prefix}{i}", f"3EB0{prefix.upper()}{i}", 1_700_000_000.0 + i)
            for i in range(n)]


def test_a_batch_is_recorded_under_the_current_epoch_and_found(
        lease: LeaseStore, journal: SentJournal) -> None:
    granted = lease.acquire("s1")
    assert granted is not None
    assert journal.record("s1", granted.epoch, _sent(3)) == 3
    found = journal.find(["m0", "m2", "never-sent"])
    assert set(found) == {"m0", "m2"}
    assert found["m2"] == Sent("m2", "3EB0M2", 1_700_000_002.0, granted.epoch)


def test_a_stale_epoch_is_refused_and_writes_nothing(
        pg_dsn: str, lease: LeaseStore, journal: SentJournal) -> None:
    first = lease.acquire("s1")
    assert first is not None and lease.release("s1", first.epoch)
    rival = LeaseStore(pg_dsn, SLOW, host="host-b", pid=202)
    try:
        second = rival.acquire("s1")
        assert second is not None and second.epoch == first.epoch + 1
        with pytest.raises(StaleEpoch):
            journal.record("s1", first.epoch, _sent(2))
        assert journal.find(["m0", "m1"]) == {}
        assert journal.record("s1", second.epoch, _sent(1)) == 1  # the owner's epoch
    finally:
        rival.close()


def test_a_released_lease_refuses_its_own_epoch_too(
        lease: LeaseStore, journal: SentJournal) -> None:
    granted = lease.acquire("s1")
    assert granted is not None and lease.release("s1", granted.epoch)
    with pytest.raises(StaleEpoch):
        journal.record("s1", granted.epoch, _sent(1))


def test_a_batch_is_one_statement_and_a_resend_overwrites_its_row(
        pg_dsn: str, lease: LeaseStore, journal: SentJournal) -> None:
    granted = lease.acquire("s1")
    assert granted is not None
    assert journal.record("s1", granted.epoch, _sent(50, "b")) == 50
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # statement_timestamp() is the statement's: one value for 50 rows means one
        # statement (one per message would give 50 different times).
        stamps = conn.execute("SELECT count(DISTINCT journaled_at), count(*) "
                              "FROM wagate_sent_journal WHERE session = 's1'").fetchone()
    assert stamps == (1, 50)
    resend = [Sent("b7", "3EB0AGAIN", 1_800_000_000.0)]
    assert journal.record("s1", granted.epoch, resend) == 1
    assert journal.find(["b7"])["b7"].wa_message_id == "3EB0AGAIN"
    assert len(journal.find([s.message_id for s in _sent(50, "b")])) == 50


def test_old_rows_are_pruned_by_the_next_record_and_by_prune(
        pg_dsn: str, lease: LeaseStore, journal: SentJournal) -> None:
    granted = lease.acquire("s1")
    other = lease.acquire("s2")
    assert granted is not None and other is not None
    journal.record("s1", granted.epoch, _sent(2, "old"))
    journal.record("s2", other.epoch, _sent(1, "other"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE wagate_sent_journal "
                     "SET journaled_at = journaled_at - interval '25 hours'")
    journal.record("s1", granted.epoch, _sent(1, "new"))  # prunes s1's old rows only
    assert set(journal.find(["old0", "old1", "new0", "other0"])) == {"new0", "other0"}
    assert journal.prune() == 1  # s2's old row
    assert set(journal.find(["new0", "other0"])) == {"new0"}


def test_an_unreachable_database_raises_unavailable() -> None:
    journal = SentJournal("postgresql://nobody@127.0.0.1:1/none", timeout_seconds=1.0,
                          retention_hours=24.0)
    try:
        with pytest.raises(LeaseStoreUnavailable):
            journal.find(["m0"])
        with pytest.raises(LeaseStoreUnavailable):
            journal.record("s1", 1, _sent(1))
    finally:
        journal.close()


def test_a_session_journals_what_whatsapp_took_and_a_stale_epoch_is_only_logged(
        lease: LeaseStore, journal: SentJournal) -> None:
    granted = lease.acquire("s1")
    assert granted is not None
    epoch: list[int | None] = [granted.epoch]
    journaling = SendJournaling("s1", journal, lambda: epoch[0], Sent)
    journaling.record([
        DeliveryResult("a", ok=True, wa_message_id="3EB0A", timestamp=5.0),
        DeliveryResult("b", ok=False, reason="REJECTED"),  # not taken: not journaled
        DeliveryResult("c", ok=True, wa_message_id="3EB0C", uncertain=False)])
    found = journal.find(["a", "b", "c"])
    assert set(found) == {"a", "c"} and found["a"].sent_at == 5.0
    epoch[0] = granted.epoch + 1  # as after a takeover: refused, logged, not raised
    journaling.record([DeliveryResult("d", ok=True, wa_message_id="3EB0D")])
    epoch[0] = None  # no lease held: nothing asked
    journaling.record([DeliveryResult("e", ok=True, wa_message_id="3EB0E")])
    assert journal.find(["d", "e"]) == {}


def test_an_exit_waits_for_running_sends_but_only_up_to_its_bound(
        journal: SentJournal) -> None:
    journaling = SendJournaling("s1", journal, lambda: None, Sent)
    assert journaling.drain(0.0)  # none running
    journaling.started()
    assert not journaling.drain(0.05)  # still running at the bound
    went_on = threading.Event()

    def worker() -> None:
        went_on.wait(5)
        journaling.finished()

    thread = threading.Thread(target=worker)
    thread.start()
    went_on.set()
    assert journaling.drain(5.0)
    thread.join(5)
