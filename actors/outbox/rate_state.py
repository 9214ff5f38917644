"""Where the rate windows and the warm-up ledger are kept: a small key-value store.

``Limits`` (actors/outbox/limits.py) and ``Warmup`` (actors/outbox/warmup.py) keep
their windows in memory and write every change through to a ``RateState`` before a
send passes, so a restart (single host) or a failover to a standby leader (multi-host
mode) continues with the same windows. Two implementations:

- ``DiskRateState``: a diskcache in ``data_dir/limits`` (single host, as always);
- ``actors.leases.rate_state.PgRateState``: one PostgreSQL table, shared by every
  leader of a multi-host cluster (``open_rate_state`` picks it when leases are in use).

Values are plain JSON data (what ``SlidingWindow.to_state`` returns, a float). The
times inside them are unix times of the outbox's ``SteadyClock`` plus ``clock_offset``:
zero on disk, and in PostgreSQL the database's clock minus the leader's, measured once
per process, so two leaders on hosts whose clocks disagree still read one time frame.

A store that cannot answer raises ``RateStateUnavailable``: the outbox refuses the send
(``UNAVAILABLE``, nothing written, retry later), as it refuses one when the disk is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import diskcache

from gateway.core.config import Config, lease_mode
from gateway.core.disk_caches import open_disk_cache
from gateway.core.errors import WagateError

# (key, value, seconds until it expires or None for never, the version the value
# replaces: what ``get`` returned with the value it changes, or None to write blindly)
Write = tuple[str, Any, float | None, int | None]


class RateStateUnavailable(WagateError):
    """The rate state could not be read or written (the database is unreachable, or
    did not answer in time): the outcome of a write is unknown."""


class RateStateConflict(WagateError):
    """A value changed since it was read (another leader's outbox wrote it): nothing
    of the write was kept; read again and decide again."""


class RateState(Protocol):
    """The operations the windows need; every one may raise ``RateStateUnavailable``.

    ``shared``: several outboxes may write (every leader of a cluster runs one, the
    standbys too), so a value kept in memory may be stale: a write names the version
    it replaces and is refused with ``RateStateConflict`` when that is not the
    current one. Not shared (one host): versions are always 0 and never checked."""

    shared: bool

    def get(self, key: str) -> tuple[Any | None, int]:
        """The value of ``key`` and its version; (None, 0) when absent or expired."""

    def write(self, sets: Sequence[Write], deletes: Sequence[str] = ()) -> dict[str, int]:
        """Set ``sets`` and delete ``deletes``, all or nothing, in one round trip; the
        new version of each key set."""

    def clock_offset(self, local_now: float) -> float:
        """What to add to the outbox's clock to get the times this store's values use."""

    def expire(self) -> int:
        """Remove the expired keys (the outbox's prune tick); how many."""

    def close(self) -> None: ...


class DiskRateState:
    """The diskcache of one host (``cache`` stays reachable for its tests)."""

    shared = False  # one outbox per data_dir

    def __init__(self, cache: diskcache.Cache) -> None:
        self.cache = cache

    @classmethod
    def open(cls, directory: str | Path) -> DiskRateState:
        # No eviction inside every write: diskcache culls in each ``set`` (a query for
        # expired keys per write, three writes per send: a third of the outbox's CPU
        # under load). Expired windows go at the outbox's prune tick (``expire``); an
        # expired key reads as absent meanwhile.
        return cls(open_disk_cache(directory, cull_limit=0))

    def get(self, key: str) -> tuple[Any | None, int]:
        return self.cache.get(key), 0

    def write(self, sets: Sequence[Write], deletes: Sequence[str] = ()) -> dict[str, int]:
        with self.cache.transact():
            for key, value, expire, _ in sets:
                self.cache.set(key, value, expire=expire)
            for key in deletes:
                self.cache.delete(key)
        return {key: 0 for key, _, _, _ in sets}

    def clock_offset(self, local_now: float) -> float:
        return 0.0  # one host, one clock

    def expire(self) -> int:
        return int(self.cache.expire())

    def close(self) -> None:
        self.cache.close()


def as_rate_state(state: RateState | diskcache.Cache | str | Path) -> RateState:
    """A ``RateState`` from itself, an open diskcache, or a directory for one."""
    if isinstance(state, diskcache.Cache):
        return DiskRateState(state)
    if isinstance(state, str | Path):
        return DiskRateState.open(state)
    return state


def open_rate_state(config: Config) -> RateState:
    """PostgreSQL in multi-host mode with a database (every leader shares the windows,
    so a standby that takes over continues them); the data_dir's diskcache otherwise."""
    if lease_mode(config):
        from actors.leases.rate_state import PgRateState  # psycopg only when used

        return PgRateState(config.cluster.database_url)
    directory = config.data_path / "limits"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DiskRateState.open(directory)
