"""The one way the gateway opens a diskcache store.

diskcache's SQLite defaults suit a short-lived cache, not a process that runs for
months with one connection per thread:

- a page cache of 8192 pages (32 MiB) per connection, kept for the connection's life:
  a process's memory then grows with the store until every connection holds 32 MiB;
- a memory map of 64 MiB per connection: every page a connection reads stays mapped,
  so a process's RSS (file pages) grows with the store's file. In issue 16's soak the
  simulator's inbox did exactly that (+0.25 to +0.45 MiB an hour per session process).

Every store of ours (the supervisor's registry, the outbox's rate windows, the
simulator's databases) is therefore opened here, with a bounded page cache and no map.
A read without a map is a ``pread`` that the kernel's page cache answers, and those
pages are the kernel's to drop, not the process's.

diskcache keeps its settings in the store's own ``Settings`` table and applies them to
every connection it opens later, in any thread or process. An opener that passes other
values rewrites them for everyone, so nothing outside this module passes SQLite
settings; a store made by an older version takes these on its next open.

Pure: imports nothing of ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diskcache

# SQLite pages (4 KiB each): 4 MiB per connection at most. The stores' hot pages are
# their B-tree's upper levels; the leaves a lookup needs come from the kernel's cache.
PAGE_CACHE_PAGES = 1024
SETTINGS: dict[str, Any] = {"sqlite_cache_size": PAGE_CACHE_PAGES, "sqlite_mmap_size": 0}


def open_disk_cache(directory: str | Path, **settings: Any) -> diskcache.Cache:
    """The diskcache in ``directory`` with the gateway's SQLite settings.

    ``settings``: diskcache's own, not SQLite's (``eviction_policy``, ``cull_limit``):
    the SQLite ones are this module's to choose, for the reason above."""
    sqlite = sorted(key for key in settings if key.startswith("sqlite_"))
    if sqlite:
        raise ValueError(f"SQLite settings are chosen by open_disk_cache, not by a caller: "
                         f"{', '.join(sqlite)}")
    return diskcache.Cache(str(directory), **{**settings, **SETTINGS})
