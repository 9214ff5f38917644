"""Session leases against a real PostgreSQL (actors/leases/store.py, issue 22).

Every waiting loop here waits on a condition read from the database, with a deadline.
Short leases (well under a second) keep each test fast; the rule they follow
(lease > renew + margin) is the configured one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from actors.leases.store import Lease, LeaseStore, LeaseStoreUnavailable, StaleEpoch
from actors.leases.timing import LeaseTiming
from tests.pg import PgCluster

FAST = LeaseTiming(lease=0.6, renew=0.2, margin=0.3)
SLOW = LeaseTiming(lease=30.0, renew=5.0, margin=5.0)
DEADLINE_SECONDS = 4.0


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[dict[str, LeaseStore]]:
    """Two contenders on two "hosts", each store a process of its own."""
    made: list[LeaseStore] = []

    def store(host: str, pid: int, timing: LeaseTiming = FAST) -> LeaseStore:
        made.append(LeaseStore(pg_dsn, timing, host=host, pid=pid))
        return made[-1]

    a, b = store("host-a", 101), store("host-b", 202)
    a.ensure_schema()
    try:
        yield {"a": a, "b": b, "a_slow": store("host-a", 101, SLOW),
               "b_slow": store("host-b", 202, SLOW)}
    finally:
        for each in made:
            each.close()


def wait_for(what: str, check: object, deadline_seconds: float = DEADLINE_SECONDS) -> object:
    """Call ``check`` until it returns something truthy, at most ``deadline_seconds``."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        result = check()  # type: ignore[operator]
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"not within {deadline_seconds} s: {what}")


def test_of_two_contenders_only_one_holds_the_lease(stores: dict[str, LeaseStore]) -> None:
    a, b = stores["a"], stores["b"]
    granted = a.acquire("s1")
    assert granted is not None and granted.epoch == 1 and granted.held
    assert (granted.owner_host, granted.owner_pid) == ("host-a", 101)
    assert granted.expires_at - granted.db_now == timedelta(seconds=FAST.lease)
    assert b.acquire("s1") is None
    current = b.current("s1")
    assert current is not None and current.owner_host == "host-a" and current.held
    assert b.acquire("s2") is not None  # another session is another lease


def test_racing_contenders_get_exactly_one_grant(pg_dsn: str,
                                                 stores: dict[str, LeaseStore]) -> None:
    contenders = [LeaseStore(pg_dsn, SLOW, host=f"h{i}", pid=i) for i in range(8)]
    start = threading.Barrier(len(contenders))
    results: list[Lease | None] = [None] * len(contenders)

    def race(i: int) -> None:
        start.wait()
        results[i] = contenders[i].acquire("raced")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(contenders))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE_SECONDS)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1 and winners[0].epoch == 1
    finally:
        for store in contenders:
            store.close()


def test_an_expired_lease_is_free_only_after_the_margin_by_the_database_clock(
        stores: dict[str, LeaseStore]) -> None:
    a, b = stores["a"], stores["b"]
    first = a.acquire("s1")
    assert first is not None
    # Still refused after the expiry itself, until the margin has passed too.
    wait_for("the lease expired by the database's clock",
             lambda: (c := b.current("s1")) is not None and not c.held)
    taken = wait_for("b takes the lease", lambda: b.acquire("s1"))
    assert isinstance(taken, Lease)
    assert taken.epoch == first.epoch + 1 and taken.owner_host == "host-b"
    assert taken.db_now >= first.expires_at + timedelta(seconds=FAST.margin)


def test_the_margin_holds_a_rival_off_after_expiry(stores: dict[str, LeaseStore]) -> None:
    """Between expiry and expiry + margin every acquire is refused."""
    a, b = stores["a"], stores["b"]
    first = a.acquire("s1")
    assert first is not None
    expired = wait_for("the lease expired", lambda: (c := b.current("s1")) is not None
                       and not c.held and c)
    assert isinstance(expired, Lease)
    refusals = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (attempt := b.acquire("s1")) is None and time.monotonic() < deadline:
        refusals += 1  # asked again at once: the database's clock decides, not a sleep
    assert attempt is not None and refusals > 0
    assert attempt.db_now - first.expires_at >= timedelta(seconds=FAST.margin)


def test_a_write_under_a_stale_epoch_is_refused(pg_dsn: str,
                                                stores: dict[str, LeaseStore]) -> None:
    a, b = stores["a"], stores["b"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE creds (session text PRIMARY KEY, blob text, epoch bigint)")
        conn.execute("INSERT INTO creds VALUES ('s1', 'v0', 0)")
    old = a.acquire("s1")
    assert old is not None
    write = "UPDATE creds SET blob = %s, epoch = %s WHERE session = 's1'"
    assert a.fenced_write("s1", old.epoch, write, ("from-a", old.epoch)) == 1
    new = wait_for("b takes over", lambda: b.acquire("s1"))
    assert isinstance(new, Lease)
    with pytest.raises(StaleEpoch, match="epoch 1"):
        a.fenced_write("s1", old.epoch, write, ("stale-from-a", old.epoch))
    assert b.fenced_write("s1", new.epoch, write, ("from-b", new.epoch)) == 1
    with pytest.raises(StaleEpoch):  # an epoch never granted yet
        b.fenced_write("s1", new.epoch + 1, write, ("future", 0))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT blob, epoch FROM creds").fetchone() == ("from-b", 2)


def test_a_write_after_expiry_is_refused_even_before_anyone_took_over(
        stores: dict[str, LeaseStore]) -> None:
    a = stores["a"]
    held = a.acquire("s1")
    assert held is not None
    wait_for("the lease expired", lambda: (c := a.current("s1")) is not None and not c.held)
    with pytest.raises(StaleEpoch):
        a.fenced_write("s1", held.epoch, "SELECT 1")


def test_renew_extends_by_the_database_clock_and_only_for_the_holder(
        stores: dict[str, LeaseStore]) -> None:
    a, b = stores["a_slow"], stores["b_slow"]
    held = a.acquire("s1")
    assert held is not None
    renewed = a.renew("s1", held.epoch)
    assert renewed is not None and renewed.epoch == held.epoch
    assert renewed.expires_at - renewed.db_now == timedelta(seconds=SLOW.lease)
    assert renewed.expires_at > held.expires_at
    assert b.renew("s1", held.epoch) is None        # not the owner
    assert a.renew("s1", held.epoch + 1) is None    # not the epoch


def test_renew_after_expiry_is_refused(stores: dict[str, LeaseStore]) -> None:
    a = stores["a"]
    held = a.acquire("s1")
    assert held is not None
    wait_for("the lease expired", lambda: (c := a.current("s1")) is not None and not c.held)
    assert a.renew("s1", held.epoch) is None
    current = a.current("s1")
    assert current is not None and current.expires_at == held.expires_at


def test_release_frees_the_lease_at_once_and_epochs_keep_growing(
        stores: dict[str, LeaseStore]) -> None:
    a, b = stores["a_slow"], stores["b_slow"]
    first = a.acquire("s1")
    assert first is not None
    assert b.release("s1", first.epoch) is False  # not b's to release
    assert a.release("s1", first.epoch) is True
    assert a.release("s1", first.epoch) is False  # once
    second = b.acquire("s1")
    assert second is not None and second.epoch == 2
    assert a.renew("s1", first.epoch) is None


def test_the_same_process_may_take_its_lease_again_under_a_new_epoch(
        stores: dict[str, LeaseStore]) -> None:
    """A retry after a lost answer: the grant may have happened; the process gets a
    new epoch, so anything written under the one it never learnt is fenced off."""
    a = stores["a_slow"]
    first = a.acquire("s1")
    again = a.acquire("s1")
    assert first is not None and again is not None and again.epoch == first.epoch + 1
    with pytest.raises(StaleEpoch):
        a.fenced_write("s1", first.epoch, "SELECT 1")


def test_a_jump_of_the_host_clock_changes_nothing(stores: dict[str, LeaseStore],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every time is the database's: with the host's wall clock a day ahead a fresh
    lease is still refused to a rival, and a day behind it still expires on time."""
    a, b = stores["a_slow"], stores["b_slow"]
    real_time, real_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + 86400 * 10**9)
    held = a.acquire("s1")
    assert held is not None
    assert held.expires_at - held.db_now == timedelta(seconds=SLOW.lease)
    assert b.acquire("s1") is None
    monkeypatch.setattr(time, "time", lambda: real_time() - 86400)
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() - 86400 * 10**9)
    renewed = a.renew("s1", held.epoch)
    assert renewed is not None
    assert renewed.expires_at - renewed.db_now == timedelta(seconds=SLOW.lease)
    assert b.acquire("s1") is None


def test_a_database_restart_keeps_the_leases(pg_cluster: PgCluster,
                                             stores: dict[str, LeaseStore]) -> None:
    """The lease rows are durable: after a restart the holder's first call finds its
    connection broken (outcome unknown: ``LeaseStoreUnavailable``), the next one
    connects again and renews, and the rival is still refused."""
    a, b = stores["a_slow"], stores["b_slow"]
    held = a.acquire("s1")
    assert held is not None
    pg_cluster.restart()
    with pytest.raises(LeaseStoreUnavailable):
        a.renew("s1", held.epoch)
    renewed = a.renew("s1", held.epoch)
    assert renewed is not None and renewed.epoch == held.epoch
    assert b.acquire("s1") is None


def test_an_unreachable_database_is_unavailable_not_refused() -> None:
    """No answer is not a "no": the caller must tell them apart (its own deadline
    decides what an unknown outcome means)."""
    store = LeaseStore(f"host=127.0.0.1 port={_closed_port()} user=x dbname=x",
                       FAST, host="h", pid=1)
    with pytest.raises(LeaseStoreUnavailable):
        store.acquire("s1")
    store.close()


def _closed_port() -> int:
    from tests.pg import free_port

    return free_port()
