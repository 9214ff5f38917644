"""Versioned schema migrations for the SQLite stores (``PRAGMA user_version``).

Why: a store outlives the code that wrote it (an upgrade reopens the old data_dir),
and a store written by a newer version must not be opened by an older one, which
would misread or damage what it does not know. Each store lists its steps; step
``n`` turns version ``n - 1`` into ``n``. ``migrate`` runs the missing steps and sets
the version in ONE transaction: a SIGKILL half-way leaves the old version whole, and
the next start runs the steps again.

A store written before versions existed has ``user_version`` 0.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.core.errors import WagateError

Step = Callable[[sqlite3.Connection], None]


class NewerStoreError(WagateError, RuntimeError):
    """The store was written by a newer wagate: this one refuses to open it (not a
    client's error: it stops the start, so its code is for logs)."""

    code = "STORE_TOO_NEW"

    def __init__(self, name: str, found: int, known: int) -> None:
        super().__init__(
            f"{name} is at schema version {found}, but this wagate knows versions "
            f"up to {known}: it was written by a newer wagate. Run that newer version (or "
            f"restore a backup of the data_dir taken before the upgrade); this version "
            f"will not open it, so nothing in it is changed")
        self.name, self.found, self.known = name, found, known


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def check_not_newer(path: Path, name: str, known: int) -> None:
    """Raise NewerStoreError when the store at ``path`` (if any) is of a version above
    ``known``. Read-only, so the launcher can refuse to start before any process opens
    (and would otherwise write to) the store."""
    if not path.exists():
        return
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                            timeout=10.0)) as db:
        found = schema_version(db)
    if found > known:
        raise NewerStoreError(name, found, known)


def migrate(db: sqlite3.Connection, name: str, steps: Sequence[Step]) -> int:
    """Bring ``db`` to version ``len(steps)``; returns the version it was at.

    ``db`` must be in autocommit (``isolation_level=None``) and not in a transaction.
    Steps must not commit: they run inside the one ``BEGIN IMMEDIATE`` (so use
    ``execute`` per statement, not ``executescript``, which commits first).
    """
    known = len(steps)
    db.execute("BEGIN IMMEDIATE")  # the write lock first: two openers never both migrate
    try:
        found = schema_version(db)
        if found > known:
            raise NewerStoreError(name, found, known)
        for step in steps[found:]:
            step(db)
        if found != known:
            db.execute(f"PRAGMA user_version = {int(known)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def statements(script: str) -> list[str]:
    """A schema script split into statements, so a step can run them one by one in
    the migration's transaction (``executescript`` would commit it)."""
    parts, current = [], ""
    for line in script.splitlines():
        code = line.split("--", 1)[0]
        current += code + "\n"
        if sqlite3.complete_statement(current):
            parts.append(current.strip())
            current = ""
    if current.strip():
        parts.append(current.strip())
    return parts
