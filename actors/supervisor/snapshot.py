"""Session status snapshots shared through a file: the supervisor writes, web workers read.

``whatsAppStatus`` is polled (dashboards, pairing screens) and changes rarely; asking
the actors costs a round trip between processes (~3 ms of CPU, three times a whole
no-op GraphQL request). The supervisor rewrites this small JSON file atomically on
every change and at least every ``HEARTBEAT_SECONDS``; a reader trusts it only while
it is fresh, so a supervisor that stopped answering is never hidden behind an old file
(the web tier then asks the actors and gets UNAVAILABLE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from actors.messages import ErrorInfo, SessionState, SessionStatus
from gateway.core.files import stale_temp_files, write_atomic

HEARTBEAT_SECONDS = 1.0
MAX_AGE_SECONDS = 3.0  # three missed heartbeats: do not trust the file any more
FILE_NAME = "run/status.json"


def write_snapshot(data_dir: Path, statuses: dict[str, SessionStatus], now: float) -> None:
    path = data_dir / FILE_NAME
    document = {"written_at": now,
                "sessions": {name: dataclasses.asdict(s) for name, s in statuses.items()}}
    # Rewritten every second and worthless after a restart: atomic, but not fsynced.
    write_atomic(path, json.dumps(document), durable=False)


def remove_snapshot(data_dir: Path) -> None:
    """At stop: the file, and any temp file a killed supervisor left half-way."""
    path = data_dir / FILE_NAME
    for doomed in [path, *stale_temp_files(path.parent, path.name)]:
        with contextlib.suppress(FileNotFoundError):
            doomed.unlink()


class SnapshotReader:
    """Per web process; re-reads the file only when it changed."""

    def __init__(self, data_dir: Path, max_age: float = MAX_AGE_SECONDS) -> None:
        self.path = data_dir / FILE_NAME
        self.max_age = max_age
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._written_at = 0.0
        self._sessions: dict[str, SessionStatus] = {}

    def status(self, session: str) -> SessionStatus | None:
        """The session's status, or None when the snapshot is missing or stale (ask the
        actors instead). A fresh snapshot without the session means a NEW session."""
        sessions = self._fresh()
        if sessions is None:
            return None
        return sessions.get(session) or SessionStatus(session=session)

    def sessions(self) -> dict[str, SessionStatus] | None:
        """Every session the supervisor knows, by name, or None when the snapshot is
        missing or stale (ask the actors instead)."""
        sessions = self._fresh()
        return None if sessions is None else dict(sessions)

    def _fresh(self) -> dict[str, SessionStatus] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        with self._lock:
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                try:
                    document = json.loads(self.path.read_text(encoding="utf-8"))
                    self._sessions = {name: _status(raw)
                                      for name, raw in document["sessions"].items()}
                    self._written_at = float(document["written_at"])
                except (OSError, ValueError, KeyError, TypeError):
                    return None  # being replaced right now, or damaged: ask the actors
                self._stamp = stamp
            if time.time() - self._written_at > self.max_age:
                return None
            return self._sessions  # replaced on reload, never changed


def _status(raw: dict[str, Any]) -> SessionStatus:
    error = raw.get("last_error")
    return SessionStatus(**{**raw, "state": SessionState(raw["state"]),
                            "last_error": ErrorInfo(**error) if error else None})
