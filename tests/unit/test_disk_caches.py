"""Every diskcache store of ours is read without a memory map and with a bounded page
cache, on every connection, in every thread (``gateway.core.disk_caches``).

Issue 16's soak found a session process's memory growing with the simulator's inbox
through diskcache's defaults (a 64 MiB map and a 32 MiB page cache per connection);
the supervisor's registry and the outbox's rate windows were opened the same way.
"""

from __future__ import annotations

import threading
from pathlib import Path

import diskcache
import pytest

from actors.outbox.rate_state import DiskRateState
from actors.transport.simulator import SimulatorServer
from gateway.core.disk_caches import PAGE_CACHE_PAGES, open_disk_cache


def pragmas(cache: diskcache.Cache) -> tuple[int, int]:
    """This thread's connection's page cache (pages) and memory map (bytes)."""
    con = cache._con  # diskcache's connection for the calling thread
    return (con.execute("PRAGMA cache_size").fetchone()[0],
            con.execute("PRAGMA mmap_size").fetchone()[0])


def in_a_new_thread(cache: diskcache.Cache) -> tuple[int, int]:
    """The pragmas of a connection diskcache opens later, in another thread."""
    seen: list[tuple[int, int]] = []

    def look() -> None:
        seen.append(pragmas(cache))
        cache.close()  # the connections of the calling thread only: this one's

    thread = threading.Thread(target=look)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    return seen[0]


OURS = (PAGE_CACHE_PAGES, 0)


def test_the_rate_windows_are_read_without_a_map(tmp_path: Path) -> None:
    state = DiskRateState.open(tmp_path / "limits")
    try:
        state.write([("window", 1, None, 0)])
        assert pragmas(state.cache) == OURS
        assert in_a_new_thread(state.cache) == OURS
    finally:
        state.close()


def test_the_simulators_databases_are_read_without_a_map(tmp_path: Path) -> None:
    server = SimulatorServer(tmp_path)
    try:
        assert pragmas(server._cache) == OURS
        assert pragmas(server._inbox.cache) == OURS
        assert server._cache.eviction_policy == "none"
    finally:
        server.close()


def test_a_store_made_with_diskcaches_defaults_takes_ours(tmp_path: Path) -> None:
    """A data_dir from a version that opened its stores with the defaults: the next
    open rewrites the store's settings, so every later connection, even one opened by
    plain ``diskcache.Cache`` (a tool, a test), uses them."""
    with diskcache.Cache(str(tmp_path)) as old:
        old.set("sessions", {"s1": 1})
        assert pragmas(old) != OURS
    with open_disk_cache(tmp_path) as cache:
        assert cache.get("sessions") == {"s1": 1}
        assert pragmas(cache) == OURS
    with diskcache.Cache(str(tmp_path)) as later:
        assert pragmas(later) == OURS


def test_a_caller_cannot_choose_sqlite_settings(tmp_path: Path) -> None:
    """They are stored in the store and apply to every opener: one caller's choice
    would silently become every process's."""
    with pytest.raises(ValueError, match="sqlite_mmap_size"):
        open_disk_cache(tmp_path, sqlite_mmap_size=1 << 26)
    assert not (tmp_path / "cache.db").exists()
