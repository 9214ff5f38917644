"""A session's decrypted working copy and its checkpoints (actors/session/working_copy.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors.session.sealed_store import (
    StoreId,
    StoreKey,
    WrongKey,
    generate_key_text,
    is_sealed,
    parse_key,
    seal,
    unseal,
)
from actors.session.working_copy import WorkingCopy, clear_stale, gateway_tag, work_root
from gateway.core.config import EncryptionConfig
from gateway.core.files import write_atomic

CREDS = {"device_id": "0123456789abcdef", "phone": "15557654321", "linked_at": 1.0}
ROOT = Path(__file__).parents[2]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sealed_creds(data: Path, key: StoreKey, session: str = "s1") -> Path:
    path = data / "sessions" / session / "simulator.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, seal(key, json.dumps(CREDS).encode(), StoreId(session, path.name)))
    return path


def working_dirs(enc: EncryptionConfig) -> list[Path]:
    root = Path(enc.work_dir)
    return sorted(root.glob("wagate-*")) if root.is_dir() else []


def test_the_working_copy_is_private_and_gone_after_close(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    data = tmp_path / "data"
    sealed = sealed_creds(data, key)
    copy = WorkingCopy(data, "s1", key, enc)
    assert copy.path.parent == Path(enc.work_dir)
    assert mode_of(copy.path) == 0o700 and mode_of(copy.store_dir) == 0o700
    work = copy.store_dir / "simulator.json"
    assert mode_of(work) == 0o600
    assert json.loads(work.read_text()) == CREDS
    assert copy.checkpoint() == []  # nothing changed since it was decrypted
    copy.close()
    assert not copy.path.exists() and working_dirs(enc) == []
    store = StoreId("s1", "simulator.json")
    assert json.loads(unseal(key, sealed.read_bytes(), "s", store)) == CREDS


def test_checkpoints_seal_changes_skip_unchanged_and_mirror_deletions(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    data = tmp_path / "data"
    copy = WorkingCopy(data, "s1", key, enc)  # never paired: nothing to decrypt
    try:
        assert list(copy.store_dir.iterdir()) == []
        work = copy.store_dir / "simulator.json"
        work.write_text(json.dumps(CREDS))  # the engine pairs
        assert copy.checkpoint() == ["simulator.json"]
        sealed = data / "sessions" / "s1" / "simulator.json"
        blob = sealed.read_bytes()
        assert is_sealed(blob) and b"15557654321" not in blob and b"0123456789" not in blob
        assert mode_of(sealed) == 0o600 and mode_of(sealed.parent) == 0o700
        before = sealed.stat()
        assert copy.checkpoint() == []
        work.write_text(json.dumps(CREDS))  # rewritten with the same content
        assert copy.checkpoint() == []
        after = sealed.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        work.unlink()  # the engine deletes the credentials (logged out from the phone)
        assert copy.checkpoint() == ["-simulator.json"]
        assert not sealed.exists()
    finally:
        copy.close()


def test_forget_deletes_the_sealed_and_the_working_store(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    data = tmp_path / "data"
    sealed = sealed_creds(data, key)
    copy = WorkingCopy(data, "s1", key, enc)
    copy.forget()
    assert not sealed.exists() and not (copy.store_dir / "simulator.json").exists()
    copy.close()
    assert not sealed.exists()


def test_a_wrong_key_fails_the_open_and_leaves_no_working_copy(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    data = tmp_path / "data"
    sealed = sealed_creds(data, key)
    before = sealed.read_bytes()
    other = parse_key(generate_key_text(), "other")
    with pytest.raises(WrongKey, match=f"encrypted with key {key.fingerprint}"):
        WorkingCopy(data, "s1", other, enc)
    assert working_dirs(enc) == []
    assert sealed.read_bytes() == before  # never touched


def test_a_store_left_in_clear_text_is_sealed_on_open(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    data = tmp_path / "data"
    plain = data / "sessions" / "s1" / "simulator.json"
    plain.parent.mkdir(parents=True)
    plain.write_text(json.dumps(CREDS))
    copy = WorkingCopy(data, "s1", key, enc)
    try:
        assert is_sealed(plain.read_bytes())
        assert json.loads((copy.store_dir / "simulator.json").read_text()) == CREDS
    finally:
        copy.close()


def test_a_sqlite_store_in_use_is_checkpointed_consistently(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """The engine holds its database open (WAL) while checkpoints are taken."""
    data = tmp_path / "data"
    copy = WorkingCopy(data, "s1", key, enc)
    engine = sqlite3.connect(copy.store_dir / "neonize.db")
    try:
        engine.execute("PRAGMA journal_mode=WAL")
        engine.execute("CREATE TABLE whatsmeow_device (jid TEXT, noise_key BLOB)")
        noise_key = os.urandom(32)
        engine.execute("INSERT INTO whatsmeow_device VALUES (?, ?)",
                       ("4917012345678:7@s.whatsapp.net", noise_key))
        engine.commit()
        assert copy.checkpoint() == ["neonize.db"]
        assert copy.checkpoint() == []
        engine.execute("INSERT INTO whatsmeow_device VALUES ('x', x'00')")
        engine.commit()
        assert copy.checkpoint() == ["neonize.db"]
    finally:
        engine.close()
        copy.close()
    sealed = (data / "sessions" / "s1" / "neonize.db").read_bytes()
    assert not sealed.startswith(b"SQLite format 3")
    assert noise_key not in sealed and b"4917012345678" not in sealed
    assert sorted(p.name for p in (data / "sessions" / "s1").iterdir()) == ["neonize.db"]
    restored = tmp_path / "restored.db"
    restored.write_bytes(unseal(key, sealed, "db", StoreId("s1", "neonize.db")))
    with sqlite3.connect(restored) as db:
        rows = db.execute("SELECT jid, noise_key FROM whatsmeow_device ORDER BY jid").fetchall()
    assert rows[0] == ("4917012345678:7@s.whatsapp.net", noise_key) and len(rows) == 2


def test_stale_working_copies_of_a_crashed_process_are_cleared(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """A session process killed with SIGKILL cannot remove its clear-text copy; the
    next start of that session does. Live copies and other sessions' stay."""
    data = tmp_path / "data"
    sealed_creds(data, key)
    key_file = tmp_path / "store.key"
    key_file.write_text(base64_text(key))
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from actors.session.sealed_store import parse_key
        from actors.session.working_copy import WorkingCopy
        from gateway.core.config import EncryptionConfig
        key = parse_key(Path({str(key_file)!r}).read_text(), "file")
        enc = EncryptionConfig(work_dir={enc.work_dir!r})
        copy = WorkingCopy(Path({str(data)!r}), "s1", key, enc)
        print(copy.path, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        stale = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
        assert (stale / "store" / "simulator.json").is_file()
        # While its process lives, nobody may take the copy away.
        assert clear_stale(Path(enc.work_dir), gateway_tag(data), "s1") == []
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()  # type: ignore[union-attr]
    assert stale.is_dir()  # a crash leaves it behind
    other_session = WorkingCopy(data, "s1-b", key, enc)  # "s1-b" must not clear "s1"
    assert stale.is_dir()
    other_gateway = WorkingCopy(tmp_path / "data2", "s1", key, enc)
    assert stale.is_dir()
    live = WorkingCopy(data, "s1", key, enc)
    try:
        assert not stale.exists()
        assert live.cleared == [stale]
        second = WorkingCopy(data, "s1", key, enc)  # a live copy of the same session stays
        assert live.path.is_dir()
        second.close()
    finally:
        for copy in (live, other_session, other_gateway):
            copy.close()
    assert working_dirs(enc) == []


def test_working_copies_default_to_memory_backed_storage() -> None:
    root = work_root(EncryptionConfig())
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        assert root == Path("/dev/shm")
    else:
        assert root.is_dir()
    assert work_root(EncryptionConfig(work_dir="~/wk")) == Path("~/wk").expanduser()


def base64_text(key: StoreKey) -> str:
    import base64

    return base64.urlsafe_b64encode(key.secret).decode()


def _crash_between_checkpoints(tmp_path: Path, key: StoreKey, enc: EncryptionConfig,
                               data: Path) -> Path:
    """A session process that checkpoints its engine store (row "old"), goes on
    writing (row "new", committed to the WAL only, as whatsmeow does with keys between
    checkpoints), and is killed with SIGKILL. Returns its orphaned working copy."""
    key_file = tmp_path / "store.key"
    key_file.write_text(base64_text(key))
    script = textwrap.dedent(f"""
        import sqlite3, sys, time
        from pathlib import Path
        from actors.session.sealed_store import parse_key
        from actors.session.working_copy import WorkingCopy
        from gateway.core.config import EncryptionConfig
        key = parse_key(Path({str(key_file)!r}).read_text(), "file")
        enc = EncryptionConfig(work_dir={enc.work_dir!r})
        copy = WorkingCopy(Path({str(data)!r}), "s1", key, enc)
        engine = sqlite3.connect(copy.store_dir / "neonize.db", isolation_level=None)
        engine.execute("PRAGMA journal_mode=WAL")
        engine.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the WAL
        engine.execute("CREATE TABLE IF NOT EXISTS keys (name TEXT)")
        engine.execute("INSERT INTO keys VALUES ('old')")
        assert copy.checkpoint() == ["neonize.db"]
        engine.execute("INSERT INTO keys VALUES ('new')")
        print(copy.path, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        orphan = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()  # type: ignore[union-attr]
    assert (orphan / "store" / "neonize.db-wal").is_file()  # the newer state is there only
    return orphan


def _sealed_rows(data: Path, key: StoreKey, tmp_path: Path) -> list[str]:
    sealed = (data / "sessions" / "s1" / "neonize.db").read_bytes()
    plain = tmp_path / "plain.db"
    plain.write_bytes(unseal(key, sealed, "db", StoreId("s1", "neonize.db")))
    with contextlib.closing(sqlite3.connect(plain)) as db:
        return [row[0] for row in db.execute("SELECT name FROM keys ORDER BY rowid")]


def test_a_crash_between_checkpoints_keeps_the_newer_engine_state(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """The orphaned working copy is sealed before it is removed: the next start of
    the session resumes the engine's newest keys, not the last checkpoint's."""
    data = tmp_path / "data"
    orphan = _crash_between_checkpoints(tmp_path, key, enc, data)
    assert _sealed_rows(data, key, tmp_path) == ["old"]  # the last checkpoint
    copy = WorkingCopy(data, "s1", key, enc)
    try:
        assert copy.recovered == ["s1/neonize.db"]
        assert copy.cleared == [orphan] and not orphan.exists()
        with contextlib.closing(sqlite3.connect(copy.store_dir / "neonize.db")) as db:
            assert [r[0] for r in db.execute("SELECT name FROM keys ORDER BY rowid")] == [
                "old", "new"]
    finally:
        copy.close()
    assert _sealed_rows(data, key, tmp_path) == ["old", "new"]
    assert working_dirs(enc) == []


def test_an_orphan_never_overwrites_a_store_sealed_after_it(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """Another process (or host) sealed the store after the crashed one's last
    checkpoint: that store is newer than the orphan, which is only removed."""
    from actors.session.sealed_store import sealed_generation

    data = tmp_path / "data"
    orphan = _crash_between_checkpoints(tmp_path, key, enc, data)
    path = data / "sessions" / "s1" / "neonize.db"
    later = tmp_path / "later.db"
    with contextlib.closing(sqlite3.connect(later)) as db:
        db.execute("CREATE TABLE keys (name TEXT)")
        db.execute("INSERT INTO keys VALUES ('later')")
        db.commit()
    generation = sealed_generation(path.read_bytes()) + 1
    write_atomic(path, seal(key, later.read_bytes(), StoreId("s1", "neonize.db"), generation))
    from actors.session.working_copy import seal_orphans

    assert seal_orphans(Path(enc.work_dir), gateway_tag(data), data, key, enc) == []
    assert orphan.is_dir()  # sealing never removes: clear_stale does
    assert _sealed_rows(data, key, tmp_path) == ["later"]
    assert clear_stale(Path(enc.work_dir), gateway_tag(data)) == [orphan]


def test_the_gateways_start_seals_orphans_of_every_session(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """``wagate serve`` checks the stores before any session starts
    (``gateway.cli.store_keys.check_stores``): it seals orphans by session name."""
    from actors.session.working_copy import seal_orphans

    data = tmp_path / "data"
    orphan = _crash_between_checkpoints(tmp_path, key, enc, data)
    assert seal_orphans(Path(enc.work_dir), gateway_tag(data), data, key, enc) == [
        "s1/neonize.db"]
    assert _sealed_rows(data, key, tmp_path) == ["old", "new"]
    assert seal_orphans(Path(enc.work_dir), gateway_tag(data), data, key, enc) == []  # once
    assert clear_stale(Path(enc.work_dir), gateway_tag(data)) == [orphan]
