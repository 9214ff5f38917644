"""The sealed store format and the storage key (session/sealed_store.py); crash-safe
writes are tested with their one writer (tests/unit/test_files.py)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from actors.session.sealed_store import (
    HEADER_BYTES,
    MAGIC,
    CorruptStore,
    StoreId,
    StoreKey,
    StoreKeyError,
    WrongKey,
    generate_key_text,
    is_sealed,
    load_key,
    parse_key,
    seal,
    sealed_fingerprint,
    snapshot,
    unseal,
)
from gateway.core.config import EncryptionConfig

SECRET = b'{"device_id": "9f8e7d6c5b4a3921", "phone": "15551234567"}'
STORE = StoreId("default", "simulator.json")


def new_key(source: str = "test") -> StoreKey:
    return parse_key(generate_key_text(), source)


def test_a_sealed_store_round_trips_and_shows_no_plaintext() -> None:
    key = new_key()
    blob = seal(key, SECRET, STORE)
    assert blob.startswith(MAGIC) and is_sealed(blob)
    assert SECRET not in blob and b"15551234567" not in blob and b"9f8e7d6c" not in blob
    assert sealed_fingerprint(blob) == key.fingerprint
    assert unseal(key, blob, "the store", STORE) == SECRET
    assert seal(key, SECRET, STORE) != blob  # a fresh nonce every time
    assert unseal(key, seal(key, b"", STORE), "an empty store", STORE) == b""


def test_a_wrong_key_names_both_fingerprints() -> None:
    right, wrong = new_key(), new_key()
    blob = seal(right, SECRET, STORE)
    with pytest.raises(WrongKey) as caught:
        unseal(wrong, blob, "the store of session 'default'", STORE)
    message = str(caught.value)
    assert f"encrypted with key {right.fingerprint}" in message
    assert f"configured key is {wrong.fingerprint}" in message
    assert "session 'default'" in message
    assert caught.value.sealed_with == right.fingerprint


@pytest.mark.parametrize("where", [HEADER_BYTES + 3, -1, HEADER_BYTES - 1])
def test_tampered_ciphertext_or_nonce_fails_authentication(where: int) -> None:
    key = new_key()
    blob = bytearray(seal(key, SECRET, STORE))
    blob[where] ^= 0x01
    with pytest.raises(CorruptStore, match="altered or is damaged"):
        unseal(key, bytes(blob), "the store", STORE)


def test_a_changed_header_is_refused() -> None:
    key = new_key()
    blob = bytearray(seal(key, SECRET, STORE))
    blob[len(MAGIC)] = 9  # format version
    with pytest.raises(CorruptStore, match="format 9"):
        unseal(key, bytes(blob), "the store", STORE)
    blob = bytearray(seal(key, SECRET, STORE))
    blob[len(MAGIC) + 1] ^= 0xFF  # fingerprint: looks like another key
    with pytest.raises(WrongKey):
        unseal(key, bytes(blob), "the store", STORE)


def test_truncated_and_plaintext_stores_are_refused() -> None:
    key = new_key()
    with pytest.raises(CorruptStore, match="truncated"):
        unseal(key, seal(key, SECRET, STORE)[:HEADER_BYTES + 5], "the store", STORE)
    with pytest.raises(CorruptStore, match="not an encrypted"):
        unseal(key, SECRET, "the store", STORE)
    assert sealed_fingerprint(SECRET) is None


# --------------------------------------------------------------------------- keys


def test_key_text_parses_with_surrounding_whitespace() -> None:
    text = generate_key_text()
    assert len(text) == 44
    key = parse_key(f"  {text}\n", "somewhere")
    assert len(key.secret) == 32
    assert len(key.fingerprint) == 16
    assert text not in repr(key) and key.fingerprint in repr(key)


@pytest.mark.parametrize("text", ["", "short", "A" * 44, "!" * 43 + "=",
                                  generate_key_text()[:-2] + "==", generate_key_text() + "A"],
                         ids=["empty", "short", "44-letters", "not-base64", "bad-padding",
                              "one-too-long"])
def test_a_malformed_key_names_its_source_and_never_echoes_it(text: str) -> None:
    with pytest.raises(StoreKeyError) as caught:
        parse_key(text, "environment variable MY_KEY")
    message = str(caught.value)
    assert "environment variable MY_KEY" in message and "wagate keys create" in message
    if len(text) > 5:
        assert text not in message


def test_the_environment_variable_comes_before_the_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key_file = tmp_path / "store.key"
    file_text, env_text = generate_key_text(), generate_key_text()
    key_file.write_text(file_text + "\n")
    enc = EncryptionConfig(key_env="WAGATE_TEST_KEY", key_file=str(key_file))
    from_env = load_key(enc, data, {"WAGATE_TEST_KEY": env_text})
    assert from_env is not None and from_env.source == "environment variable WAGATE_TEST_KEY"
    assert from_env.fingerprint == parse_key(env_text, "x").fingerprint
    for environ in ({}, {"WAGATE_TEST_KEY": "  "}):  # unset, or empty: the file
        from_file = load_key(enc, data, environ)
        assert from_file is not None
        assert from_file.fingerprint == parse_key(file_text, "x").fingerprint
        assert str(key_file) in from_file.source
    assert load_key(EncryptionConfig(key_env="WAGATE_TEST_KEY", key_file=""), data, {}) is None


def test_key_file_problems_say_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    inside = data / "keys" / "store.key"
    inside.write_text(generate_key_text())
    with pytest.raises(StoreKeyError, match="inside data_dir"):
        load_key(EncryptionConfig(key_env="", key_file=str(inside)), data, {})
    missing = tmp_path / "nowhere.key"
    with pytest.raises(StoreKeyError) as caught:
        load_key(EncryptionConfig(key_env="", key_file=str(missing)), data, {})
    assert "does not exist" in str(caught.value)
    assert f"wagate keys create --out {missing}" in str(caught.value)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(StoreKeyError, match=f"encryption.key_file {bad}"):
        load_key(EncryptionConfig(key_env="", key_file=str(bad)), data, {})


def test_a_sqlite_snapshot_includes_the_uncheckpointed_wal(tmp_path: Path) -> None:
    """The engine keeps its database open in WAL mode; a snapshot taken meanwhile
    must hold every committed row (not just the main file) and open as a database."""
    path = tmp_path / "neonize.db"
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("CREATE TABLE whatsmeow_device (jid TEXT, noise_key BLOB)")
        writer.executemany("INSERT INTO whatsmeow_device VALUES (?, ?)",
                           [(f"4917{i:07d}:7@s.whatsapp.net", os.urandom(32)) for i in range(50)])
        writer.commit()
        assert (tmp_path / "neonize.db-wal").stat().st_size > 0
        image = snapshot(path, "sqlite")
        assert image is not None and image.startswith(b"SQLite format 3\x00")
        assert snapshot(path, "sqlite") == image  # unchanged database, same bytes
    finally:
        writer.close()
    copy = tmp_path / "copy.db"
    copy.write_bytes(image)
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT count(*) FROM whatsmeow_device").fetchone() == (50,)
    assert snapshot(tmp_path / "missing.db", "sqlite") is None
    (tmp_path / "empty.db").write_bytes(b"")
    assert snapshot(tmp_path / "empty.db", "sqlite") == b""
    assert snapshot(tmp_path / "missing.json", "file") is None
