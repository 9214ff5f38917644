"""The real engine's device store (whatsmeow's SQLite file) is encrypted at rest.

A real gateway on the real engine, offline: every dial goes to a refused port on
127.0.0.1 (see ``test_gateway_neonize``). whatsmeow creates its store on the first
dial; what ``data_dir`` then holds must be no SQLite file at all, and a store that
holds a linked device (fabricated with random keys: a real pairing cannot happen
offline) must come back, decrypted, to the next session process and be sealed again
with the same device, its keys never in clear text on disk.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
from pathlib import Path
from typing import Any

import diskcache
import pytest

from actors.session.sealed_store import (
    SQLITE_HEADER,
    StoreId,
    is_sealed,
    parse_key,
    seal,
    snapshot,
    unseal,
)
from gateway.core.files import write_atomic
from tests.neonize.fault_proxy import refused_port

DEVICE_STORE = StoreId("default", "neonize.db")

pytestmark = pytest.mark.integration

if importlib.util.find_spec("neonize") is None:
    pytest.skip("neonize is not installed (pip install -e '.[test]' installs it)",
                allow_module_level=True)

from tests.neonize.scenarios import fabricate_device  # noqa: E402
from tests.neonize.test_gateway_neonize import (  # noqa: E402
    STOP_BOUND,
    _neonize_gateways,
    connect_and_trace,
)

DEVICE = "4917012345678"


def device_rows(image: bytes, scratch: Path) -> list[tuple[Any, ...]]:
    scratch.write_bytes(image)
    try:
        with contextlib.closing(sqlite3.connect(scratch)) as db:
            return db.execute("SELECT jid, noise_key, identity_key FROM whatsmeow_device"
                              ).fetchall()
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(scratch) + suffix).unlink(missing_ok=True)


def remembered_paired(data_dir: Path) -> bool:
    """What the supervisor recorded from the session's own report (data_dir/state)."""
    with diskcache.Cache(str(data_dir / "state")) as registry:
        return bool(registry.get("sessions", {})["default"]["paired"])


def test_the_device_store_is_sealed_and_a_restart_decrypts_it(tmp_path: Path) -> None:
    with _neonize_gateways(tmp_path) as make:
        gw = make(f"http://127.0.0.1:{refused_port()}", {"attempts": 1})
        gw.start()
        connect_and_trace(gw, "FAILED", timeout=30.0)  # whatsmeow has created its store
        gw.stop(STOP_BOUND)

        session_dir = gw.data_dir / "sessions" / "default"
        store = session_dir / "neonize.db"
        assert sorted(p.name for p in session_dir.iterdir()) == ["neonize.db"]  # no -wal
        blob = store.read_bytes()
        assert is_sealed(blob) and not blob.startswith(SQLITE_HEADER)
        assert b"whatsmeow" not in blob and b"CREATE TABLE" not in blob
        key = parse_key(gw.key_file.read_text(), "the test's key file")
        image = unseal(key, blob, "the device store", DEVICE_STORE)
        assert image.startswith(SQLITE_HEADER)
        assert device_rows(image, tmp_path / "check.db") == []
        assert remembered_paired(gw.data_dir) is False

        # Link a device the only way possible offline: into the decrypted store.
        clear = tmp_path / "clear.db"
        clear.write_bytes(image)
        fabricate_device(clear, DEVICE)
        linked = snapshot(clear, "sqlite")  # the row may still be in the WAL file
        assert linked is not None
        [(jid, noise_key, identity_key)] = device_rows(linked, tmp_path / "c.db")
        write_atomic(store, seal(key, linked, DEVICE_STORE))
        blob = store.read_bytes()
        for secret in (noise_key, identity_key, DEVICE.encode(), jid.encode()):
            assert secret not in blob

        gw.start()
        trace = connect_and_trace(gw, "FAILED", timeout=30.0)
        # The session opened the store (a wrong key would be STORE_UNAVAILABLE) and
        # found the device in it: it reported itself paired.
        assert trace.final["lastError"]["code"] == "RECONNECT_FAILED", trace.final
        gw.stop(STOP_BOUND)
        assert remembered_paired(gw.data_dir) is True

        assert sorted(p.name for p in session_dir.iterdir()) == ["neonize.db"]
        blob = store.read_bytes()
        assert is_sealed(blob) and not blob.startswith(SQLITE_HEADER)
        for secret in (noise_key, identity_key, DEVICE.encode()):
            assert secret not in blob
        image = unseal(key, blob, "the device store", DEVICE_STORE)
        rows = device_rows(image, tmp_path / "after.db")
        assert rows == [(jid, noise_key, identity_key)]  # the same device, sealed again
