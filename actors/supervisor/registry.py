"""The sessions the supervisor remembers: what a restart, or a new leader, needs.

One entry per session (``actors.session.links``: wanted or not, paired, last state,
phone, link epoch) and one link-epoch high-water mark. Always kept on this host's
disk (diskcache in ``data_dir/state``): a single host's registry, and a leader's last
copy of the shared one.

With leases (``shared``, ``actors.leases.registry``) the leaders share it in
PostgreSQL, as they share the outbox's store: a standby that takes over must start
the sessions the old leader ran and give its outbox the same link epochs, or that
outbox fails their queues as forgotten or logged out.

- Reads are from memory (the supervisor reads on every status change).
- A write goes to disk at once and to the database within a bound; one the database
  did not take stays pending and goes with the next write, tick or ``sync``.
- Only what the caller marks ``share`` goes to the database: a standby's view of a
  session's state is stale, so it shares only an operator's requests and new
  sessions (the supervisor decides, ``SupervisorActor._remember``).
- ``sync`` (at start, and when a standby takes the leadership lock): pending writes
  first, then the database's entries replace the memory's. The first time, this
  host's own entries go in under what is there (a host that ran before leases).
- ``next_epoch`` asks the database for a number above every leader's; unanswered,
  this host's own mark + 1, which is written to the database's mark later.

No Thespian and no psycopg here: the supervisor is the shell, the database side is
passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import diskcache
import structlog

log = structlog.get_logger("wagate.supervisor")

Entries = dict[str, dict[str, Any]]
SESSIONS_KEY = "sessions"
EPOCH_KEY = "epoch"
SHARED_KEY = "shared_registry"  # this host's own entries went to the shared registry


class SharedRegistry(Protocol):
    """The database side, every call bounded: a string says why there is no answer."""

    def load(self) -> tuple[Entries, int] | str: ...

    def write(self, changes: Mapping[str, Mapping[str, Any]],
              added: Mapping[str, Mapping[str, Any]], dropped: Iterable[str],
              epoch_floor: int = 0) -> str | None: ...

    def next_epoch(self, floor: int) -> int | str: ...

    def close(self) -> None: ...


@dataclass
class Synced:
    """What a sync changed: sessions the database had and memory had not, and the
    reverse (forgotten by another leader)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class SessionRegistry:
    def __init__(self, cache: diskcache.Cache, shared: SharedRegistry | None = None) -> None:
        self._cache = cache
        self.shared = shared
        self._entries: Entries = dict(cache.get(SESSIONS_KEY, {}))
        self._epoch = int(cache.get(EPOCH_KEY, 0))
        # Not yet in the database: changed fields, new entries, deleted sessions, and
        # an epoch this host handed out without it.
        self._changes: Entries = {}
        self._added: Entries = {}
        self._dropped: set[str] = set()
        self._epoch_floor = 0

    @property
    def pending(self) -> bool:
        return bool(self._changes or self._added or self._dropped or self._epoch_floor)

    def sessions(self) -> Entries:
        return {session: dict(entry) for session, entry in self._entries.items()}

    def put(self, session: str, entry: Mapping[str, Any], share: bool = True) -> None:
        old = self._entries.get(session)
        self._entries[session] = dict(entry)
        self._save()
        if self.shared is None or not share:
            return
        if session in self._dropped:  # deleted, then made again before the database heard
            self._dropped.discard(session)
            self._changes[session] = dict(entry)
        elif old is None or session in self._added:
            self._added[session] = dict(entry)
        else:
            changed = {key: value for key, value in entry.items() if old.get(key) != value}
            if changed:
                self._changes.setdefault(session, {}).update(changed)
        self.flush()

    def drop(self, sessions: Iterable[str], share: bool = True) -> None:
        gone = [session for session in sessions if session in self._entries]
        for session in gone:
            del self._entries[session]
        self._save()
        if self.shared is None or not share or not gone:
            return
        for session in gone:
            self._added.pop(session, None)
            self._changes.pop(session, None)
            self._dropped.add(session)
        self.flush()

    def next_epoch(self) -> int:
        """A link epoch above every one handed out (on disk before any entry uses it)."""
        floor = max(self._epoch, self._epoch_floor)
        answer = self.shared.next_epoch(floor) if self.shared is not None else floor + 1
        if isinstance(answer, str):
            log.warning("the shared session registry gave no link epoch: this leader uses "
                        "its own next one and records it there later", reason=answer)
            answer = self._epoch_floor = floor + 1
        self._epoch = answer
        self._cache.set(EPOCH_KEY, answer)
        return answer

    def flush(self) -> bool:
        """Send the pending writes; False when the database did not take them."""
        if self.shared is None or not self.pending:
            return True
        # Copies: a write that outlives its bound still runs on its thread.
        why = self.shared.write({s: dict(c) for s, c in self._changes.items()},
                                {s: dict(e) for s, e in self._added.items()},
                                sorted(self._dropped), self._epoch_floor)
        if why is not None:
            log.warning("the shared session registry did not take a write; it is sent "
                        "again with the next one", reason=why,
                        sessions=sorted({*self._changes, *self._added, *self._dropped}))
            return False
        self._changes, self._added, self._dropped, self._epoch_floor = {}, {}, set(), 0
        return True

    def sync(self) -> Synced | None:
        """Pending writes, then the database's entries in place of the memory's; None
        (nothing changed) without a shared registry or an answer."""
        if self.shared is None:
            return None
        first = not self._cache.get(SHARED_KEY, False)
        if first:
            for session, entry in self._entries.items():
                if session not in self._changes:
                    self._added.setdefault(session, dict(entry))
            self._epoch_floor = max(self._epoch_floor, self._epoch)
        if not self.flush():
            return None
        if first:
            self._cache.set(SHARED_KEY, True)
        answer = self.shared.load()
        if isinstance(answer, str):
            log.warning("the shared session registry could not be read; this leader goes "
                        "on with its own copy", reason=answer)
            return None
        entries, epoch = answer
        before = set(self._entries)
        self._entries = entries
        self._epoch = max(self._epoch, epoch)
        self._save()
        self._cache.set(EPOCH_KEY, self._epoch)
        return Synced(added=sorted(set(entries) - before),
                      removed=sorted(before - set(entries)))

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
        self._cache.close()

    def _save(self) -> None:
        self._cache.set(SESSIONS_KEY, self._entries)
