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
  did not take stays pending (on disk too, so a restart still sends it) and goes with
  the next write, tick or ``sync``.
- Only what the caller marks ``share`` goes to the database: a standby's view of a
  session's state is stale, so it shares only an operator's requests and new
  sessions (the supervisor decides, ``SupervisorActor._remember``).
- ``sync`` (at start, and when a standby takes the leadership lock): pending writes
  first, then the database's entries replace the memory's. The first time this host
  meets a registry (its id, made with the table), its own entries go in under what is
  there: a host that ran before leases, or a database made anew.
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
SHARED_KEY = "shared_registry"  # the id of the shared registry this host's entries went to
PENDING_KEY = "shared_pending"  # writes the database has not taken yet
Loaded = tuple[Entries, int, str]  # the entries, the epoch mark, the registry's id


class SharedRegistry(Protocol):
    """The database side, every call bounded: a string says why there is no answer."""

    def load(self) -> Loaded | str: ...

    def write(self, changes: Mapping[str, Mapping[str, Any]],
              added: Mapping[str, Mapping[str, Any]],
              replaced: Mapping[str, Mapping[str, Any]], dropped: Iterable[str],
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
        # Not yet in the database: changed fields, new entries, entries made again,
        # deleted sessions, and an epoch this host handed out without it.
        saved: tuple[Any, ...] = cache.get(PENDING_KEY) or ({}, {}, {}, [], 0)
        self._changes: Entries = dict(saved[0])
        self._added: Entries = dict(saved[1])
        self._replaced: Entries = dict(saved[2])
        self._dropped: set[str] = set(saved[3])
        self._epoch_floor = int(saved[4])

    @property
    def pending(self) -> bool:
        return bool(self._changes or self._added or self._replaced or self._dropped
                    or self._epoch_floor)

    def sessions(self) -> Entries:
        return {session: dict(entry) for session, entry in self._entries.items()}

    def put(self, session: str, entry: Mapping[str, Any], share: bool = True) -> None:
        old = self._entries.get(session)
        self._entries[session] = dict(entry)
        self._save()
        if self.shared is None or not share:
            return
        if session in self._dropped or session in self._replaced:
            # Deleted, then made again: its new link epoch must win over the old row.
            self._dropped.discard(session)
            self._changes.pop(session, None)
            self._replaced[session] = dict(entry)
        elif old is None or session in self._added:
            self._added[session] = dict(entry)
        else:
            changed = {key: value for key, value in entry.items() if old.get(key) != value}
            if changed:
                self._changes.setdefault(session, {}).update(changed)
        self._save_pending()
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
            self._replaced.pop(session, None)
            self._dropped.add(session)
        self._save_pending()
        self.flush()

    def next_epoch(self) -> int:
        """A link epoch above every one handed out (on disk before any entry uses it)."""
        floor = max(self._epoch, self._epoch_floor)
        answer = self.shared.next_epoch(floor) if self.shared is not None else floor + 1
        if isinstance(answer, str):
            log.warning("the shared session registry gave no link epoch: this leader uses "
                        "its own next one and records it there later", reason=answer)
            answer = self._epoch_floor = floor + 1
            self._save_pending()
        self._epoch = answer
        self._cache.set(EPOCH_KEY, answer)
        return answer

    def flush(self) -> bool:
        """Send the pending writes; False when the database did not take them."""
        if self.shared is None or not self.pending:
            return True
        # Copies: a write that outlives its bound still runs on its thread.
        why = self.shared.write(_copy(self._changes), _copy(self._added),
                                _copy(self._replaced), sorted(self._dropped),
                                self._epoch_floor)
        if why is not None:
            log.warning("the shared session registry did not take a write; it is sent "
                        "again with the next one", reason=why,
                        sessions=sorted({*self._changes, *self._added, *self._replaced,
                                         *self._dropped}))
            return False
        self._changes, self._added, self._replaced = {}, {}, {}
        self._dropped, self._epoch_floor = set(), 0
        self._save_pending()
        return True

    def sync(self) -> Synced | None:
        """Pending writes, then the database's entries in place of the memory's; None
        (nothing changed) without a shared registry or an answer."""
        if self.shared is None or not self.flush():
            return None
        answer = self.shared.load()
        if not isinstance(answer, str) and answer[2] != self._cache.get(SHARED_KEY):
            answer = self._bring_own_entries(answer)
        if isinstance(answer, str):
            log.warning("the shared session registry could not be read; this leader goes "
                        "on with its own copy", reason=answer)
            return None
        entries, epoch, _ = answer
        before = set(self._entries)
        self._entries = entries
        self._epoch = max(self._epoch, epoch)
        self._save()
        self._cache.set(EPOCH_KEY, self._epoch)
        return Synced(added=sorted(set(entries) - before),
                      removed=sorted(before - set(entries)))

    def _bring_own_entries(self, loaded: Loaded) -> Loaded | str:
        """A registry this host has not met: its own entries go in under what is
        there (the table's win), with its epoch mark; the result, or why not."""
        assert self.shared is not None
        entries, epoch, registry = loaded
        own = {s: dict(e) for s, e in self._entries.items() if s not in entries}
        why = self.shared.write({}, own, {}, [], self._epoch)
        if why is not None:
            return why
        self._cache.set(SHARED_KEY, registry)
        if own:
            log.info("this leader's own sessions went into the shared registry",
                     sessions=sorted(own))
        return {**own, **entries}, max(epoch, self._epoch), registry

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
        self._cache.close()

    def _save(self) -> None:
        self._cache.set(SESSIONS_KEY, self._entries)

    def _save_pending(self) -> None:
        if self.shared is not None:
            self._cache.set(PENDING_KEY, (self._changes, self._added, self._replaced,
                                          sorted(self._dropped), self._epoch_floor))


def _copy(entries: Entries) -> Entries:
    """Copies for a write that may outlive its bound on its own thread."""
    return {session: dict(entry) for session, entry in entries.items()}
