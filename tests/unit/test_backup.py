"""gateway.core.backup on real files and real SQLite databases."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.core import backup
from gateway.core.backup import BackupError


def make_data_dir(root: Path) -> Path:
    data = root / "data"
    (data / "outbox").mkdir(parents=True)
    (data / "audit").mkdir()
    (data / "run").mkdir()
    (data / "media" / "ab").mkdir(parents=True)  # a store this module has never heard of
    db = sqlite3.connect(data / "outbox" / "messages.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE m (n INTEGER)")
    db.executemany("INSERT INTO m VALUES (?)", [(n,) for n in range(100)])
    db.commit()  # left open: the rows are in the WAL, not yet in the main file
    (data / "audit" / "audit-000001.jsonl").write_bytes(b'{"seq":1}\n{"seq":2}\n{"se')
    (data / "media" / "ab" / "blob.enc").write_bytes(b"\x00\x01sealed")
    (data / "run" / "launcher.lock").write_bytes(b"")
    (data / "outbox" / ".x.abc.tmp").write_bytes(b"half")
    data.joinpath("keep").write_text("x")
    return data


def test_backup_copies_everything_but_runtime_state(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    manifest = backup.take(data, tmp_path / "out", "test")
    backup.write_manifest(tmp_path / "out", manifest)
    kinds = {e.path: e.kind for e in manifest.files}
    assert kinds == {"outbox/messages.sqlite3": "sqlite", "audit/audit-000001.jsonl": "lines",
                     "media/ab/blob.enc": "bytes", "keep": "bytes"}
    copy = sqlite3.connect(tmp_path / "out" / "outbox" / "messages.sqlite3")
    assert copy.execute("SELECT count(*) FROM m").fetchone() == (100,)  # the WAL's rows too
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    copy.close()
    # The line being appended is left for the next backup.
    assert (tmp_path / "out" / "audit" / "audit-000001.jsonl").read_bytes() \
        == b'{"seq":1}\n{"seq":2}\n'
    assert (tmp_path / "out" / "media" / "ab" / "blob.enc").read_bytes() == b"\x00\x01sealed"


def test_backup_refuses_an_occupied_or_nested_target(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(BackupError, match="not an empty directory"):
        backup.take(data, tmp_path / "busy", "test")
    with pytest.raises(BackupError, match="outside data_dir"):
        backup.take(data, data / "backup", "test")


def _backed_up(tmp_path: Path) -> Path:
    data = make_data_dir(tmp_path)
    out = tmp_path / "out"
    backup.write_manifest(out, backup.take(data, out, "test"))
    return out


def test_restore_puts_the_backup_in_place(tmp_path: Path) -> None:
    out = _backed_up(tmp_path)
    target = tmp_path / "new" / "data"
    assert backup.restore(out, target) is None
    db = sqlite3.connect(target / "outbox" / "messages.sqlite3")
    assert db.execute("SELECT count(*) FROM m").fetchone() == (100,)
    db.close()
    assert not [p.name for p in target.parent.iterdir() if p.name != "data"]  # no temp dir left
    with pytest.raises(BackupError, match="not empty"):
        backup.restore(out, target)
    kept = backup.restore(out, target, force=True)
    assert kept is not None and (kept / "keep").exists() and (target / "keep").exists()


@pytest.mark.parametrize("damage", ["edit", "extra", "missing", "manifest", "escape"])
def test_restore_checks_every_byte_before_writing(tmp_path: Path, damage: str) -> None:
    out = _backed_up(tmp_path)
    manifest_path = out / "manifest.json"
    if damage == "edit":
        (out / "media" / "ab" / "blob.enc").write_bytes(b"\x00\x01SEALED")
    elif damage == "extra":
        (out / "planted").write_text("x")
    elif damage == "missing":
        (out / "keep").unlink()
    elif damage == "manifest":
        manifest_path.unlink()
    else:
        raw = json.loads(manifest_path.read_text())
        raw["files"][0]["path"] = "../outside"
        manifest_path.write_text(json.dumps(raw))
    target = tmp_path / "target"
    with pytest.raises(BackupError):
        backup.restore(out, target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
