"""The generation ledger of the sealed stores: what stops a rollback of ``data_dir``.

Every sealed store carries a generation number in its authenticated header, one
higher at each checkpoint. The key proves a store was written by wagate, but not
that it is the latest one: whoever can write ``data_dir`` could put back an older
copy (a backup from before a logout still holds a device's keys). So each gateway
host also records the newest generation it wrote of each store in a small file
outside ``data_dir`` (``encryption.generations_file``), and refuses a store older
than that. An attacker who can write only ``data_dir`` cannot roll the two back
together.

What it does not cover (README: Encryption at rest): a store written by another host
of a cluster after this host last saw it is accepted at any generation this host has
not seen; a crash between writing a store and recording it lets that one previous
copy pass; without ``generations_file`` nothing is recorded and nothing is refused.

Plain code (no actor, no Flask), shared by the session processes (each updates its
own entries, under a lock), the start-up check and ``wagate keys``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from actors.session.sealed_store import MAX_GENERATION, StoreError, is_inside
from gateway.core.files import write_atomic


class RolledBack(StoreError):
    """A sealed store older than the newest one this host wrote of it."""

    def __init__(self, what: str, generation: int, floor: int, ledger: Path) -> None:
        super().__init__(
            f"{what} is generation {generation}, older than generation {floor} that this "
            f"host wrote last: it was rolled back or restored from an old copy. If you "
            f"restored data_dir from a backup on purpose, delete {ledger} (the generation "
            "ledger, encryption.generations_file) to accept the stores as they are now; "
            "otherwise restore the newest copy of the store")
        self.generation = generation
        self.floor = floor


def open_ledger(generations_file: str, data_dir: Path) -> GenerationLedger | None:
    """The ledger named by ``encryption.generations_file`` (None when it is ""). It
    must live outside ``data_dir``: a ledger that can be rolled back with the stores
    protects nothing."""
    if not generations_file:
        return None
    path = Path(generations_file).expanduser()
    if is_inside(path, data_dir):
        raise StoreError(
            f"encryption.generations_file {path} is inside data_dir ({data_dir}): whoever "
            "can put back an old copy of data_dir could put back the ledger with it; "
            "keep it outside data_dir (next to the key file, for instance)")
    return GenerationLedger(path)


def ledger_key(session: str, name: str) -> str:
    """Session names never hold '/', so the key is unambiguous."""
    return f"{session}/{name}"


class GenerationLedger:
    """``{"<session>/<store>": newest generation}`` in one JSON file, replaced
    atomically under an exclusive ``flock`` of a companion ``.lock`` file, so the
    session processes of one host can update it at the same time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def verify(self) -> None:
        """At start: the ledger can be read and written (its directory is created if
        missing), so a session never fails later over it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of encryption.generations_file "
                             f"{self.path} ({exc.strerror})") from None
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise StoreError(f"encryption.generations_file {self.path} cannot be written by "
                             "this user; choose a directory it owns (outside data_dir)")
        self._read()

    def floor(self, session: str, name: str) -> int:
        """The oldest generation of the store that may still be opened (0: any)."""
        return int(self._read().get(ledger_key(session, name), 0))

    def check(self, session: str, name: str, generation: int, what: str) -> None:
        """Raise ``RolledBack`` for a store older than the last one recorded."""
        floor = self.floor(session, name)
        if generation < floor:
            raise RolledBack(what, generation, floor, self.path)

    def record(self, session: str, name: str, generation: int) -> None:
        """The store was written at ``generation`` (never lowers the record)."""
        with self._locked():
            entries = self._read()
            key = ledger_key(session, name)
            if int(entries.get(key, 0)) < generation:
                entries[key] = generation
                self._write(entries)

    def bury(self, session: str, name: str, generation: int) -> None:
        """The store was deleted (a logout, a forgotten session) at ``generation``: no
        copy of it up to that generation may come back."""
        self.record(session, name, generation + 1)

    # ------------------------------------------------------------------ helpers

    def _read(self) -> dict[str, int]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read encryption.generations_file {self.path} "
                             f"({exc.strerror}); check its permissions") from None
        try:
            entries = json.loads(text)
        except ValueError:
            entries = None
        if not isinstance(entries, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_GENERATION
                for v in entries.values()):
            raise StoreError(f"encryption.generations_file {self.path} is damaged; restore "
                             "it, or delete it to start recording anew from the stores as "
                             "they are now")
        return entries

    def _write(self, entries: dict[str, int]) -> None:
        write_atomic(self.path, json.dumps(entries, sort_keys=True, indent=0).encode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
