"""The outbox store's PostgreSQL connection when the database goes away (multi-host
mode): every error is ``StoreUnavailable``, a transaction that lost its connection is
never finished on a new one, a COMMIT whose answer was lost says its outcome is
unknown, and the next statement connects again. On a real server: a backend is ended
with ``pg_terminate_backend`` from another connection, as a server restart or a cut
connection ends it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from actors.messages import MessageState
from actors.outbox.db import PgConnection, StoreUnavailable
from actors.outbox.store import MessageStore, NewMessage
from tests.pg import PgCluster


def end_backends(dsn: str) -> None:
    """End every other connection to this database (as a restart of the server would)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM wagate_outbox.messages").fetchone()
        assert row is not None
        return int(row[0])


def new(text: str) -> NewMessage:
    return NewMessage(session="default", phone="14155552671", text=text)


def test_a_transaction_that_lost_its_connection_is_not_finished_on_a_new_one(
        tmp_path: Path, pg_dsn: str) -> None:
    store = MessageStore(tmp_path, database_url=pg_dsn)
    try:
        with pytest.raises(StoreUnavailable), store.batch():
            store.add(new("first half"), 1.0)
            end_backends(pg_dsn)
            store.add(new("second half"), 2.0)  # the connection is gone
        assert not store.db.in_transaction
        assert count(pg_dsn) == 0  # neither half
        kept = store.add(new("after"), 3.0)  # the next statement connects again
        assert store.get(kept["id"])["state"] == MessageState.QUEUED
        assert count(pg_dsn) == 1
    finally:
        store.close()


def test_statements_inside_a_lost_transaction_fail_until_it_is_rolled_back(
        pg_dsn: str) -> None:
    db = PgConnection(pg_dsn)
    try:
        db.execute("CREATE TABLE public.wagate_outbox_t (n integer)")
        db.execute("BEGIN")
        db.execute("INSERT INTO public.wagate_outbox_t VALUES (?)", (1,))
        end_backends(pg_dsn)
        with pytest.raises(StoreUnavailable):
            db.execute("INSERT INTO public.wagate_outbox_t VALUES (?)", (2,))
        assert db.in_transaction
        with pytest.raises(StoreUnavailable):  # not on a new connection, in autocommit
            db.execute("INSERT INTO public.wagate_outbox_t VALUES (?)", (3,))
        db.execute("ROLLBACK")
        assert not db.in_transaction
        assert db.execute("SELECT COUNT(*) FROM public.wagate_outbox_t").fetchone()[0] == 0
    finally:
        db.close()


def test_a_commit_whose_answer_is_lost_says_the_outcome_is_unknown(pg_dsn: str) -> None:
    db = PgConnection(pg_dsn)
    try:
        db.execute("BEGIN")
        db.execute("SELECT 1")
        end_backends(pg_dsn)
        with pytest.raises(StoreUnavailable) as lost:
            db.execute("COMMIT")
        assert lost.value.outcome_unknown
        assert not db.in_transaction
        with pytest.raises(StoreUnavailable) as refused:
            db.execute("SELECT 1/0")  # an error the server gave: the outcome is known
        assert not refused.value.outcome_unknown
    finally:
        db.close()


def test_an_unreachable_database_is_store_unavailable_at_open(tmp_path: Path) -> None:
    from tests.pg import free_port

    with pytest.raises(StoreUnavailable):
        MessageStore(tmp_path, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x")


def test_a_standby_opening_the_same_database_continues_the_queue_and_the_log(
        tmp_path: Path, pg_dsn: str) -> None:
    """What a standby leader does at take-over: open the store by the same URL; every
    accepted message is there in its state, and the event cursor goes on growing."""
    from actors.outbox import events

    first = MessageStore(tmp_path / "a", database_url=pg_dsn)
    queued = first.add(new("waits"), 1.0)
    sending = first.transition(first.add(new("in flight"), 2.0), MessageState.SENDING, 3.0)
    seq = events.last_seq(first.db)
    first.close()
    second = MessageStore(tmp_path / "b", database_url=pg_dsn)  # another host's data_dir
    try:
        assert [r["id"] for r in second.next_queued("default", 10.0, 10)] == [queued["id"]]
        assert [r["id"] for r in second.in_state(MessageState.SENDING)] == [sending["id"]]
        later = second.add(new("after the take-over"), 4.0)
        assert events.last_seq(second.db) > seq
        assert second.get(later["id"]) is not None
    finally:
        second.close()


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wagate-outbox-db"]


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_frozen_server_gets_one_bounded_wait_then_quick_refusals(
        tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str) -> None:
    """A server that hangs (SIGSTOP: its kernel still takes the packets, so no timeout
    of the server or of TCP ends a call) must not hold the outbox: the call is given
    up after its bound, the transaction with it, and the next calls are refused at once
    for a while instead of waiting again. Once the server answers, the store goes on,
    and the abandoned connection and its thread are gone."""
    others = set(_worker_threads())  # of stores other tests left open
    store = MessageStore(tmp_path, database_url=pg_dsn)
    kept = store.add(new("before"), 1.0)
    pg_cluster.freeze()
    try:
        with pytest.raises(StoreUnavailable, match="did not answer within"):
            store.add(new("while frozen"), 2.0)
        assert not store.db.in_transaction
        with pytest.raises(StoreUnavailable, match="not asked again"):
            store.get(kept["id"])
    finally:
        pg_cluster.freeze(False)

    def works() -> bool:
        try:
            return store.get(kept["id"]) is not None
        except StoreUnavailable:
            return False

    _until(works, 30, "the store to answer again")
    assert count(pg_dsn) == 1  # the frozen call's message was never committed
    store.close()
    _until(lambda: set(_worker_threads()) <= others, 30, "the abandoned worker to end")


def test_event_numbers_are_committed_in_order_even_with_two_writers(
        tmp_path: Path, pg_dsn: str) -> None:
    """A reader pages by ``seq``: a number drawn before another but committed after it
    would be skipped by a reader that read in between. One writer at a time is the
    rule (the leader holding the lock), but a leader that has not yet noticed its
    loss may still write: its event waits for the other's commit."""
    from actors.outbox import events
    from actors.outbox.db import StoreUnavailable, transaction

    first = MessageStore(tmp_path / "a", database_url=pg_dsn)
    second = MessageStore(tmp_path / "b", database_url=pg_dsn)
    try:
        with transaction(first.db):
            early = events.append_event(first.db, events.SESSION_STATUS, "s", {}, 1.0)
            with pytest.raises(StoreUnavailable, match=r"QueryCanceled|LockNotAvailable"):
                events.append_event(second.db, events.SESSION_STATUS, "s", {}, 2.0)
        late = events.append_event(second.db, events.SESSION_STATUS, "s", {}, 3.0)
        assert late.seq > early.seq
        assert [e.seq for e in events.events_after(first.db, 0, limit=9)] == [
            early.seq, late.seq]
    finally:
        first.close()
        second.close()


def test_one_exclusive_writer_at_a_time(tmp_path: Path, pg_dsn: str) -> None:
    """The outbox opens its store exclusive: a second outbox (a new leader's, while the
    old one has not yet noticed it lost the lock) waits until the first's connection
    is gone, and a reader that is not exclusive is never kept out."""
    first = MessageStore(tmp_path / "a", database_url=pg_dsn, exclusive=True)
    kept = first.add(new("by the first"), 1.0)
    with pytest.raises(StoreUnavailable, match="another outbox"):
        MessageStore(tmp_path / "b", database_url=pg_dsn, exclusive=True)
    reader = MessageStore(tmp_path / "c", database_url=pg_dsn)
    assert reader.get(kept["id"]) is not None
    reader.close()
    end_backends(pg_dsn)  # the first's connection ends (its lock with it)
    second = MessageStore(tmp_path / "b", database_url=pg_dsn, exclusive=True)
    try:
        assert second.get(kept["id"]) is not None
        with pytest.raises(StoreUnavailable):
            first.get(kept["id"])  # its connection was ended
        with pytest.raises(StoreUnavailable, match="another outbox"):
            first.get(kept["id"])  # reconnecting, it finds the lock taken
    finally:
        second.close()
        first.close()
