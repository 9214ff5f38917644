"""The leaders' shared session registry (``actors.supervisor.registry`` over
``actors.leases.registry``) on a real PostgreSQL: each leader's ``SessionRegistry``
with its own diskcache, as the supervisors of two hosts have."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import psycopg
import pytest

from actors.leases.registry import BoundedRegistry, PgRegistry
from actors.supervisor.registry import EPOCH_KEY, SESSIONS_KEY, SessionRegistry
from tests.pg import PgCluster, free_port

TIMEOUT = 1.0
Opener = Callable[..., SessionRegistry]


def entry(epoch: int, want: str = "connected", **more: Any) -> dict[str, Any]:
    return {"want": want, "state": "CONNECTED", "paired": True, "phone": None,
            "epoch": epoch, **more}


def flush_within(registry: SessionRegistry, seconds: float) -> None:
    """The pending writes in the database, tried until a deadline (a question that
    outlived its bound may still hold the connection for a moment)."""
    deadline = time.monotonic() + seconds
    while not registry.flush():
        assert time.monotonic() < deadline, "the pending writes never reached the database"
        time.sleep(0.1)


@pytest.fixture
def open_registry(tmp_path: Path, pg_dsn: str) -> Iterator[Opener]:
    """A leader's registry: its own disk (by name) and the test's database."""
    made: list[SessionRegistry] = []

    def make(host: str, dsn: str = pg_dsn) -> SessionRegistry:
        cache = diskcache.Cache(str(tmp_path / host))
        registry = SessionRegistry(cache, BoundedRegistry(PgRegistry(dsn, TIMEOUT), TIMEOUT))
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def test_a_standby_sees_every_session_the_active_leader_made(open_registry: Opener) -> None:
    active, standby = open_registry("a"), open_registry("b")
    assert active.sync() is not None and standby.sync() is not None
    active.put("s1", entry(active.next_epoch()))
    active.put("s2", entry(active.next_epoch(), want="disconnected"))
    synced = standby.sync()
    assert synced is not None and synced.added == ["s1", "s2"] and not synced.removed
    assert standby.sessions() == active.sessions()
    active.drop(["s2"])
    synced = standby.sync()
    assert synced is not None and synced.removed == ["s2"]
    assert set(standby.sessions()) == {"s1"}


def test_two_leaders_never_hand_out_the_same_link_epoch(open_registry: Opener) -> None:
    a, b = open_registry("a"), open_registry("b")
    epochs = [registry.next_epoch() for _ in range(5) for registry in (a, b)]
    assert epochs == sorted(set(epochs)), epochs  # strictly increasing across both


def test_each_leader_keeps_the_fields_it_changed(open_registry: Opener) -> None:
    """A write carries only the fields that changed: the active leader's state and a
    standby's request about another field both stay."""
    active, standby = open_registry("a"), open_registry("b")
    active.put("s1", entry(active.next_epoch()))
    standby.sync()
    active.put("s1", {**active.sessions()["s1"], "state": "RECONNECTING"})
    standby.put("s1", {**standby.sessions()["s1"], "want": "disconnected"})
    reader = open_registry("c")
    reader.sync()
    assert reader.sessions()["s1"]["state"] == "RECONNECTING"
    assert reader.sessions()["s1"]["want"] == "disconnected"


def test_what_is_not_shared_stays_on_this_host(open_registry: Opener) -> None:
    """A standby's view of a session's state is stale: the supervisor keeps it local
    (``share=False``), and taking the lock replaces it with the database's."""
    active, standby = open_registry("a"), open_registry("b")
    active.put("s1", entry(active.next_epoch()))
    standby.sync()
    standby.put("s1", {**standby.sessions()["s1"], "state": "CONNECTING",
                       "paired": False}, share=False)
    assert not standby.pending
    standby.sync()
    assert standby.sessions()["s1"]["paired"] is True
    assert standby.sessions()["s1"]["state"] == "CONNECTED"


def test_a_new_entry_never_replaces_one_another_leader_made(open_registry: Opener) -> None:
    """The old way a standby learnt a session (whatsAppConnect on it) gives it its own
    new entry: the active leader's entry and epoch win."""
    active, standby = open_registry("a"), open_registry("b")
    standby.sync()
    active.put("s1", entry(7, phone="14155552671"))
    standby.put("s1", entry(standby.next_epoch(), paired=False))
    standby.sync()
    assert standby.sessions()["s1"]["epoch"] == 7
    assert standby.sessions()["s1"]["phone"] == "14155552671"


def test_a_hosts_own_registry_goes_in_once(tmp_path: Path, open_registry: Opener) -> None:
    """A leader that ran before leases brings its sessions and its epoch mark once;
    what another leader wrote wins, and a session forgotten later is not brought back
    at the next start."""
    with diskcache.Cache(str(tmp_path / "a")) as cache:
        cache.set(SESSIONS_KEY, {"old": entry(3), "both": entry(1, want="disconnected")})
        cache.set(EPOCH_KEY, 9)
    other = open_registry("b")
    other.put("both", entry(other.next_epoch()))
    first = open_registry("a")
    synced = first.sync()
    assert synced is not None
    assert set(first.sessions()) == {"old", "both"}
    assert first.sessions()["both"]["want"] == "connected"  # the database's entry won
    assert other.next_epoch() == 10  # above the mark the old host brought
    other.sync()
    other.drop(["old"])
    first.close()
    again = open_registry("a")
    again.sync()
    assert set(again.sessions()) == {"both"}


def test_a_write_the_database_missed_goes_with_the_next(
        pg_dsn: str, open_registry: Opener) -> None:
    active = open_registry("a")
    active.put("s1", entry(active.next_epoch()))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("BEGIN")  # the table locked by someone else for a while
        admin.execute("LOCK TABLE wagate_sessions IN ACCESS EXCLUSIVE MODE")
        active.put("s2", entry(active.next_epoch()))  # each call returns after its bound
        active.drop(["s1"])
        assert active.pending
        admin.execute("ROLLBACK")
    assert set(active.sessions()) == {"s2"}  # this host's view did not wait

    flush_within(active, 15)
    reader = open_registry("c")
    reader.sync()
    assert set(reader.sessions()) == {"s2"}


def test_no_database_leaves_the_hosts_own_copy(tmp_path: Path, open_registry: Opener) -> None:
    """A leader that cannot reach the database goes on with its disk copy: entries are
    kept, epochs come from its own mark (never one it handed out before), and a sync
    changes nothing."""
    absent = f"host=127.0.0.1 port={free_port()} user=nobody dbname=none connect_timeout=1"
    with diskcache.Cache(str(tmp_path / "a")) as cache:
        cache.set(SESSIONS_KEY, {"s1": entry(4)})
        cache.set(EPOCH_KEY, 4)
    registry = open_registry("a", absent)
    assert registry.sync() is None
    assert set(registry.sessions()) == {"s1"}
    assert registry.next_epoch() == 5 and registry.next_epoch() == 6
    registry.put("s2", entry(6))
    assert registry.pending and set(registry.sessions()) == {"s1", "s2"}


def test_a_frozen_database_is_waited_for_within_the_bound(
        pg_cluster: PgCluster, pg_dsn: str, open_registry: Opener) -> None:
    active = open_registry("a")
    active.put("s1", entry(active.next_epoch()))
    pg_cluster.freeze()
    try:
        active.put("s2", entry(active.next_epoch()))  # returns after the bound
        assert active.pending
    finally:
        pg_cluster.freeze(False)
    flush_within(active, 15)
    reader = open_registry("c")
    reader.sync()
    assert set(reader.sessions()) == {"s1", "s2"}
    assert reader.sessions()["s2"]["epoch"] > reader.sessions()["s1"]["epoch"]


def test_writes_the_database_missed_survive_a_restart(
        tmp_path: Path, open_registry: Opener) -> None:
    """A leader acknowledged a change while the database was away, then restarted:
    the change is still sent (pending on its disk), not replaced by the table's."""
    active = open_registry("a")
    active.sync()
    active.put("s1", entry(active.next_epoch()))
    active.close()
    absent = f"host=127.0.0.1 port={free_port()} user=nobody dbname=none connect_timeout=1"
    away = open_registry("a", absent)
    away.put("s1", {**away.sessions()["s1"], "want": "disconnected"})
    away.put("s2", entry(away.next_epoch()))
    assert away.pending
    away.close()
    back = open_registry("a")
    assert back.sync() is not None
    reader = open_registry("c")
    reader.sync()
    assert reader.sessions()["s1"]["want"] == "disconnected"
    assert set(reader.sessions()) == {"s1", "s2"}
    assert reader.sessions()["s2"]["epoch"] > reader.sessions()["s1"]["epoch"]


def test_a_session_another_leader_deleted_is_not_brought_back_by_a_change(
        open_registry: Opener) -> None:
    """A change merges into an existing row only: a session another leader forgot is
    never made again as a partial entry (which a start could not read)."""
    a, b = open_registry("a"), open_registry("b")
    a.put("s1", entry(a.next_epoch()))
    b.sync()
    b.drop(["s1"])
    a.put("s1", {**a.sessions()["s1"], "state": "RECONNECTING"})
    assert not a.pending
    reader = open_registry("c")
    reader.sync()
    assert "s1" not in reader.sessions()


def test_a_session_made_again_gets_its_new_epoch_in_the_database(
        pg_dsn: str, open_registry: Opener) -> None:
    """Forgotten and made again while the database was busy: when the writes go, the
    new entry (its new link epoch) replaces the old row, which the delete missed."""
    a = open_registry("a")
    a.put("s1", entry(a.next_epoch()))
    old_epoch = a.sessions()["s1"]["epoch"]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("BEGIN")
        admin.execute("LOCK TABLE wagate_sessions IN ACCESS EXCLUSIVE MODE")
        a.drop(["s1"])
        a.put("s1", entry(old_epoch + 10, want="disconnected"))
        admin.execute("ROLLBACK")
    flush_within(a, 15)
    reader = open_registry("c")
    reader.sync()
    assert reader.sessions()["s1"]["epoch"] == old_epoch + 10
    assert reader.sessions()["s1"]["want"] == "disconnected"


def test_a_new_database_gets_the_hosts_entries_again(
        pg_dsn: str, open_registry: Opener) -> None:
    """The registry's id is made with its table: a leader pointed at a database made
    anew (or emptied) brings its own sessions there, as at its first start."""
    a = open_registry("a")
    a.sync()
    a.put("s1", entry(a.next_epoch()))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE wagate_sessions, wagate_session_epoch")
    a.close()
    again = open_registry("a")
    assert again.sync() is not None
    assert set(again.sessions()) == {"s1"}
    reader = open_registry("c")
    reader.sync()
    assert set(reader.sessions()) == {"s1"}
    assert reader.next_epoch() > again.sessions()["s1"]["epoch"]
