"""The message store and the audit log on a real file system that fills up (ENOSPC).

A tmpfs of 1 MiB (root needed; skipped with the reason otherwise) is filled by a
ballast file; the write that finds no space must fail whole (nothing of it kept,
nothing kept before it lost), be recognised as a full disk, and the same open store
must write again once space is back.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.audit.log import AuditError, AuditLog, verify
from actors.outbox.store import MessageStore, NewMessage
from gateway.core.disk import is_disk_full

BIG = "x" * 4000  # a long text fills the disk in a few hundred messages


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fs"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def ballast(path: Path) -> Path:
    """Fill what is left of the file system (the last write fails with ENOSPC)."""
    target = path / "ballast"
    with target.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert is_disk_full(exc)
    return target


def test_a_send_that_finds_the_disk_full_is_rolled_back_and_the_store_recovers(
        tiny_fs: Path) -> None:
    store = MessageStore(tiny_fs / "outbox")
    try:
        kept = [store.add(NewMessage("default", "14155552671", f"kept {n}"), 1.0)["id"]
                for n in range(5)]
        space = ballast(tiny_fs)
        with pytest.raises((sqlite3.Error, OSError)) as failed:
            for n in range(1000):
                with store.batch():
                    store.add(NewMessage("default", "14155552671", f"{BIG} {n}"), 2.0)
        assert is_disk_full(failed.value), repr(failed.value)
        assert not store.db.in_transaction
        assert all(store.get(m) is not None for m in kept)
        space.unlink()
        after = store.add(NewMessage("default", "14155552671", "after"), 3.0)
        assert store.get(after["id"]) is not None
    finally:
        store.close()
    reopened = MessageStore(tiny_fs / "outbox")
    try:
        assert all(reopened.get(m) is not None for m in [*kept, after["id"]])
        assert tuple(reopened.db.execute("PRAGMA integrity_check").fetchone()) == ("ok",)
    finally:
        reopened.close()


def test_an_audit_entry_that_finds_the_disk_full_leaves_the_chain_whole(tiny_fs: Path) -> None:
    directory = tiny_fs / "audit"
    log = AuditLog.open(directory, max_bytes=10 * 1024 * 1024)
    try:
        for n in range(5):
            log.append("test", {"n": n})
        space = ballast(tiny_fs)
        with pytest.raises(AuditError, match="free disk space"):
            for n in range(1000):
                log.append("test", {"n": n, "pad": "y" * 200})
        space.unlink()
        log.append("test", {"n": "after"})
    finally:
        log.close()
    result = verify(directory)
    assert result.ok, result.problem
    assert os.path.getsize(next(directory.glob("audit-*.jsonl"))) > 0
