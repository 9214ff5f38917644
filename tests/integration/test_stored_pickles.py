"""What a data_dir stores as pickles names no class of ours.

diskcache pickles what it stores (the supervisor's registry, the rate windows, the
pacing state, the simulator's server side). If one of those values were an instance of
a wagate class, moving or renaming its module would make a data_dir written by the
previous version unreadable after an upgrade. Today they are plain values (dicts,
lists, numbers, strings), which is why the gateway/core move needs no re-exporting shim
at the old module paths (docs/architecture.md). This test keeps it so.
"""

from __future__ import annotations

import io
import pickle
import sqlite3
from pathlib import Path

from diskcache.core import MODE_PICKLE

from tests.integration.harness import Gateway

OUR_PACKAGES = ("gateway", "actors", "tests")


class _Recorder(pickle.Unpickler):
    """Unpickles while noting every global a pickle refers to."""

    def __init__(self, data: bytes, seen: set[tuple[str, str]]) -> None:
        super().__init__(io.BytesIO(data))
        self.seen = seen

    def find_class(self, module: str, name: str) -> object:
        self.seen.add((module, name))
        return super().find_class(module, name)


def _pickles_in(cache_db: Path) -> list[bytes]:
    """Every pickled key and value of one diskcache database, large values included
    (those live in files next to it)."""
    found: list[bytes] = []
    with sqlite3.connect(f"file:{cache_db}?mode=ro", uri=True) as db:
        for key, raw, mode, filename, value in db.execute(
                "SELECT key, raw, mode, filename, value FROM Cache"):
            if not raw and isinstance(key, bytes):
                found.append(key)
            if mode == MODE_PICKLE:
                found.append((cache_db.parent / filename).read_bytes() if filename else value)
    return found


def stored_globals(data_dir: Path) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    databases = sorted(data_dir.rglob("cache.db"))
    assert databases, f"no diskcache under {data_dir}: did the layout change?"
    for database in databases:
        for data in _pickles_in(database):
            _Recorder(data, seen).load()
    return seen


def test_a_used_data_dir_pickles_no_class_of_ours(gateway: Gateway) -> None:
    gateway.link()
    assert gateway.send("+14155552671", "Your code is 123456").data == {
        "sendWhatsAppNotification": True}
    gateway.stop()

    ours = sorted(f"{module}.{name}" for module, name in stored_globals(gateway.data_dir)
                  if module.split(".")[0] in OUR_PACKAGES)
    assert not ours, (
        f"the data_dir stores pickles of {ours}: moving those modules breaks upgrades; "
        "store plain values, or keep a re-exporting module at the old path and test it")


def test_the_scan_sees_a_class_of_ours(tmp_path: Path) -> None:
    """The check above can fail: a value of ours stored by diskcache is found."""
    import diskcache

    from gateway.core.config import LimitsConfig

    with diskcache.Cache(str(tmp_path / "registry")) as cache:
        cache.set("limits", LimitsConfig())
    assert ("gateway.core.config", "LimitsConfig") in stored_globals(tmp_path)
