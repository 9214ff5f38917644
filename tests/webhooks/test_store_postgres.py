"""The endpoint store in PostgreSQL (multi-host mode), what only a shared database
shows: two leaders see each other's endpoints and cursors, so a new leader continues
each endpoint where the old one stopped; the table comes with the outbox schema's
version 2; a database that does not answer is ``StoreUnavailable`` within the
connection's bound, at open and later, and the delivery loop waits it out. On a real
server (``pg_cluster``, a fresh database per test from ``pg_dsn``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from actors.outbox import pg_schema
from actors.outbox.db import StoreUnavailable
from actors.webhooks import signing
from actors.webhooks.client import make_client
from actors.webhooks.delivery import ConcurrentDeliverer, Deliverer
from actors.webhooks.source import SqliteEventSource
from actors.webhooks.store import APPLICATION_NAME, EndpointStore
from gateway.core.migrations import NewerStoreError
from tests.pg import PgCluster, free_port
from tests.webhooks.conftest import CONFIG, KEY, EventLog, drive
from tests.webhooks.receiver import Receiver


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "wagate-outbox-db"}


def test_a_new_leader_continues_each_endpoint_where_the_old_one_stopped(
        tmp_path: Path, pg_dsn: str, log: EventLog) -> None:
    """Leader A makes an endpoint through the API and delivers two events; B (another
    host: its own data_dir) opens the same database and delivers the third, once. Before,
    each leader had its own file: B knew no endpoint made on A."""
    ids = [log.add(n=n) for n in range(2)]
    first = EndpointStore(tmp_path / "a", KEY, database_url=pg_dsn)
    second = EndpointStore(tmp_path / "b", KEY, database_url=pg_dsn, durable=False)
    client = make_client(2.0, 2.0)
    try:
        with Receiver() as receiver:
            secret = signing.new_secret()
            hook = first.create(receiver.url(), (), (), "api", secret, time.time()).id
            on_a = Deliverer(first, SqliteEventSource(log.path), client, CONFIG, time.time)
            drive(on_a, lambda: first.get(hook).cursor == 2)
            first.close()  # A is gone
            assert second.get(hook).cursor == 2 and second.secrets(hook, time.time()) == [
                secret]  # the same storage key opens it on B
            ids.append(log.add(n=2))
            on_b = Deliverer(second, SqliteEventSource(log.path), client, CONFIG, time.time)
            drive(on_b, lambda: second.get(hook).cursor == 3)
        assert [r.headers["webhook-id"] for r in receiver.requests] == ids
    finally:
        client.close()
        first.close()
        second.close()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # no files


def test_two_stores_on_one_database_see_each_others_changes(
        tmp_path: Path, pg_dsn: str) -> None:
    """A replay made through B's API wins over an answer A's loop got for an event
    read before it (the cursor goes back, the event is sent again)."""
    a = EndpointStore(tmp_path, KEY, database_url=pg_dsn)
    b = EndpointStore(tmp_path, KEY, database_url=pg_dsn)
    try:
        hook = a.create("https://a.example/", ("x",), (), "", signing.new_secret(), 1.0).id
        read_by_a = a.get(hook)
        assert [e.id for e in b.all()] == [hook]
        b.set_cursor(hook, 0, 2.0)
        a.delivered(hook, 3, 204, 3.0, read_by_a.replays)
        assert b.get(hook).cursor == 0 and b.get(hook).last_status == 204
        b.update(hook, events=("y",))
        b.set_enabled(hook, False, "paused on B", 4.0)
        assert (a.get(hook).events, a.get(hook).enabled) == (("y",), False)
        b.delete(hook)
        assert a.all() == []
    finally:
        a.close()
        b.close()


def test_its_connections_are_named_apart_from_the_outbox(tmp_path: Path,
                                                         pg_dsn: str) -> None:
    """The outbox's connection is told by its application_name (an operator, and the
    step-down test, look for it): the webhook worker's carry their own."""
    store = EndpointStore(tmp_path, KEY, database_url=pg_dsn)
    try:
        store.all()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            names = [r[0] for r in admin.execute(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        assert names == [APPLICATION_NAME]
    finally:
        store.close()


def test_a_version_1_database_gets_the_table_and_a_newer_one_is_refused(
        tmp_path: Path, pg_dsn: str) -> None:
    """A database an older wagate made (the outbox's tables, version 1) is upgraded at
    open; one a newer wagate made is refused, unchanged."""
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA wagate_outbox")
        admin.execute("SET search_path = wagate_outbox")
        admin.execute(pg_schema.VERSION_1)
        admin.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        admin.execute("INSERT INTO schema_version VALUES (1)")
    store = EndpointStore(tmp_path, KEY, database_url=pg_dsn)
    try:
        assert store.create("https://a.example/", (), (), "", signing.new_secret(), 1.0)
    finally:
        store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        found = admin.execute("SELECT version FROM wagate_outbox.schema_version").fetchall()
        assert found == [(len(pg_schema.STEPS),)] == [(2,)]
        admin.execute("UPDATE wagate_outbox.schema_version SET version = 99")
    with pytest.raises(NewerStoreError):
        EndpointStore(tmp_path, KEY, database_url=pg_dsn)


def test_an_unreachable_database_is_store_unavailable_at_open(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        EndpointStore(tmp_path / "w", KEY,
                      database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    assert not (tmp_path / "w").exists()


def test_a_frozen_server_is_store_unavailable_at_open_and_after(
        tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str) -> None:
    """A server that hangs (SIGSTOP: no timeout of the server or of TCP ends a call)
    holds neither an open nor a read longer than the connection's bound; once it
    answers, the store goes on, and no thread of an abandoned call is left."""
    others = _worker_threads()
    store = EndpointStore(tmp_path, KEY, database_url=pg_dsn)
    hook = store.create("https://a.example/", (), (), "", signing.new_secret(), 1.0).id
    pg_cluster.freeze()
    try:
        with pytest.raises(StoreUnavailable):  # its connect_timeout, or the bound
            EndpointStore(tmp_path, KEY, database_url=pg_dsn)
        with pytest.raises(StoreUnavailable, match="did not answer within"):
            store.get(hook)
        with pytest.raises(StoreUnavailable, match="not asked again"):
            store.delivered(hook, 1, 204, 2.0, 0)
    finally:
        pg_cluster.freeze(False)

    def works() -> bool:
        try:
            return store.get(hook).cursor == 0
        except StoreUnavailable:
            return False

    _until(works, 30, "the store to answer again")
    store.close()
    _until(lambda: _worker_threads() <= others, 30, "the abandoned workers to end")


def test_the_delivery_loop_waits_out_a_frozen_database(
        tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str, log: EventLog) -> None:
    """The loop's own reads (what is due, when next) and a turn's writes meet a frozen
    server: none of them raises out of the loop (the webhook thread would die), and the
    events flow again once the database answers, each at least once, in order."""
    def worker() -> Deliverer:
        return Deliverer(EndpointStore(tmp_path, KEY, database_url=pg_dsn, durable=False),
                         SqliteEventSource(log.path), make_client(2.0, 2.0), CONFIG,
                         time.time)

    overview = worker()
    store = overview.store
    ids = [log.add(n=0)]
    with Receiver() as receiver:
        hook = store.create(receiver.url(), (), (), "", signing.new_secret(), time.time()).id
        pool = ConcurrentDeliverer(overview, worker, workers=2, poll_seconds=0.05)
        try:
            drive(pool, lambda: store.get(hook).cursor == 1)  # type: ignore[arg-type]
            ids.append(log.add(n=1))
            pg_cluster.freeze()
            try:
                assert pool.run_due() == 0 and pool.store_down
                assert pool.next_due() is not None  # a time to look again, no exception
            finally:
                pg_cluster.freeze(False)

            def delivered() -> bool:
                pool.run_due()
                try:
                    return store.get(hook).cursor == 2
                except StoreUnavailable:
                    return False

            _until(delivered, 60, "the second event to be delivered")
            assert not pool.store_down
        finally:
            pool.close()
            overview.client.close()
            store.close()
    sent = [r.headers["webhook-id"] for r in receiver.requests]
    assert sent[0] == ids[0] and sent[-1] == ids[1] and set(sent) == set(ids)


def test_the_webhook_thread_waits_at_start_until_the_database_answers(
        tmp_path: Path, pg_cluster: PgCluster, pg_dsn: str) -> None:
    """A leader that starts while the database hangs: the store is opened once it
    answers, instead of the thread ending with the first StoreUnavailable; stopping
    ends the wait."""
    from actors.webhooks.delivery import when_reachable

    attempts: list[float] = []

    def open_store() -> EndpointStore:
        attempts.append(time.monotonic())
        return EndpointStore(tmp_path, KEY, database_url=pg_dsn)

    found: list[EndpointStore | None] = []
    stopping = threading.Event()
    waiter = threading.Thread(target=lambda: found.append(when_reachable(open_store,
                                                                         stopping)))
    pg_cluster.freeze()
    try:
        waiter.start()
        _until(lambda: len(attempts) >= 2, 30, "a second try after a refused one")
        pg_cluster.freeze(False)
        waiter.join(30)
        assert not waiter.is_alive() and found[0] is not None
        assert found[0].all() == []
    finally:
        pg_cluster.freeze(False)
        stopping.set()  # a failed test leaves no thread trying
        waiter.join(30)
        for store in found:
            if store is not None:
                store.close()
    tried = len(attempts)
    assert when_reachable(open_store, stopping) is None
    assert len(attempts) == tried  # stopping: not even one try
