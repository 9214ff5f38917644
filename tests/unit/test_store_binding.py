"""Sealed stores are bound to their session and store, and (with a generation ledger
outside data_dir) cannot be rolled back: actors/session/sealed_store.py,
actors/session/store_generations.py and their use in actors/session/working_copy.py and
gateway/cli/store_keys.py, on real files."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from actors.session.sealed_store import (
    FINGERPRINT_BYTES,
    MAGIC,
    NONCE_BYTES,
    CorruptStore,
    StoreError,
    StoreId,
    StoreKey,
    generate_key_text,
    is_sealed,
    parse_key,
    seal,
    sealed_generation,
    sealed_version,
    unseal,
)
from actors.session.store_generations import GenerationLedger, RolledBack, open_ledger
from actors.session.working_copy import WorkingCopy
from gateway.cli.store_keys import StoreCheckError, check_stores, verify_stores
from gateway.core.config import EncryptionConfig, load_config
from gateway.core.files import write_atomic

CREDS = {"device_id": "9f8e7d6c5b4a3921", "phone": "15551234567", "linked_at": 1.0}
NAME = "simulator.json"


def new_key() -> StoreKey:
    return parse_key(generate_key_text(), "test")


def legacy_seal(key: StoreKey, plain: bytes) -> bytes:
    """A store as wagate's format 1 wrote it: the header alone authenticated."""
    nonce = os.urandom(NONCE_BYTES)
    header = MAGIC + bytes([1]) + bytes.fromhex(key.fingerprint) + nonce
    assert len(bytes.fromhex(key.fingerprint)) == FINGERPRINT_BYTES
    return header + AESGCM(key.secret).encrypt(nonce, plain, header)


def base64_text(key: StoreKey) -> str:
    """The key as its key file holds it."""
    return base64.urlsafe_b64encode(key.secret).decode()


def store_path(data: Path, session: str) -> Path:
    return data / "sessions" / session / NAME


def put_store(data: Path, session: str, blob: bytes) -> Path:
    path = store_path(data, session)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, blob)
    return path


@pytest.fixture
def enc(tmp_path: Path) -> EncryptionConfig:
    return EncryptionConfig(key_file="unused", work_dir=str(tmp_path / "work"),
                            generations_file=str(tmp_path / "ledger" / "generations.json"))


def open_copy(data: Path, session: str, key: StoreKey, enc: EncryptionConfig) -> WorkingCopy:
    return WorkingCopy(data, session, key, enc)


def change(copy: WorkingCopy, phone: str) -> None:
    (copy.store_dir / NAME).write_text(json.dumps(CREDS | {"phone": phone}))


# ---- binding ---------------------------------------------------------------------


def test_a_store_opens_only_as_the_session_and_store_it_was_sealed_as() -> None:
    key = new_key()
    blob = seal(key, b"secret", StoreId("alpha", NAME), generation=7)
    assert unseal(key, blob, "the store", StoreId("alpha", NAME)) == b"secret"
    assert sealed_generation(blob) == 7 and sealed_version(blob) == 2
    for other in (StoreId("beta", NAME), StoreId("alpha", "neonize.db"),
                  StoreId("alph", "a" + NAME)):
        with pytest.raises(CorruptStore, match="another"):
            unseal(key, blob, "the store", other)
    for generation in (-1, 2**63):
        with pytest.raises(ValueError):
            seal(key, b"x", StoreId("alpha", NAME), generation)


def test_a_changed_generation_fails_authentication() -> None:
    key = new_key()
    blob = bytearray(seal(key, b"secret", StoreId("alpha", NAME), generation=5))
    blob[len(MAGIC) + 1 + FINGERPRINT_BYTES + 7] = 4  # claim an older generation
    with pytest.raises(CorruptStore, match="altered"):
        unseal(key, bytes(blob), "the store", StoreId("alpha", NAME))


def test_a_store_swapped_between_sessions_is_refused_by_the_session_and_at_start(
        tmp_path: Path, enc: EncryptionConfig) -> None:
    data, key = tmp_path / "data", new_key()
    for session, phone in (("alpha", "15550000001"), ("beta", "15550000002")):
        put_store(data, session, seal(key, json.dumps(CREDS | {"phone": phone}).encode(),
                                      StoreId(session, NAME)))
    alpha = store_path(data, "alpha").read_bytes()
    put_store(data, "beta", alpha)  # beta would now send as alpha's account
    with pytest.raises(CorruptStore, match="session 'beta'"):
        open_copy(data, "beta", key, enc)
    key_file = tmp_path / "store.key"
    key_file.write_text(base64_text(key))
    config = load_config(None, {"storage.data_dir": str(data),
                                "encryption.key_file": str(key_file),
                                "encryption.work_dir": enc.work_dir})
    with pytest.raises(StoreCheckError, match="session 'beta'"):
        check_stores(config)
    _, results = verify_stores(config)
    assert [(s.session, outcome == "ok") for s, outcome in results] == [
        ("alpha", True), ("beta", False)]


def test_a_format_1_store_still_opens_and_is_sealed_bound_on_the_way(
        tmp_path: Path, enc: EncryptionConfig) -> None:
    data, key = tmp_path / "data", new_key()
    path = put_store(data, "alpha", legacy_seal(key, json.dumps(CREDS).encode()))
    copy = open_copy(data, "alpha", key, enc)
    try:
        assert json.loads((copy.store_dir / NAME).read_text()) == CREDS
    finally:
        copy.close()
    blob = path.read_bytes()
    assert sealed_version(blob) == 2 and sealed_generation(blob) == 1
    assert json.loads(unseal(key, blob, "s", StoreId("alpha", NAME))) == CREDS
    with pytest.raises(CorruptStore):
        unseal(key, blob, "s", StoreId("beta", NAME))


# ---- generations and the ledger -----------------------------------------------------


def test_every_checkpoint_is_a_newer_generation_and_an_older_copy_is_refused(
        tmp_path: Path, enc: EncryptionConfig) -> None:
    data, key = tmp_path / "data", new_key()
    path = put_store(data, "alpha", seal(key, json.dumps(CREDS).encode(),
                                         StoreId("alpha", NAME), generation=1))
    copy = open_copy(data, "alpha", key, enc)
    try:
        old = path.read_bytes()
        change(copy, "15550000009")
        assert copy.checkpoint() == [NAME]
        assert sealed_generation(path.read_bytes()) == 2
    finally:
        copy.close()
    ledger = GenerationLedger(Path(enc.generations_file))
    assert ledger.floor("alpha", NAME) == 2
    write_atomic(path, old)  # someone who can write data_dir puts the old copy back
    with pytest.raises(RolledBack, match="generation 1, older than generation 2") as caught:
        open_copy(data, "alpha", key, enc)
    assert enc.generations_file in str(caught.value)
    assert list(Path(enc.work_dir).glob("wagate-*")) == []  # no working copy left


def test_a_logged_out_store_cannot_be_brought_back(
        tmp_path: Path, enc: EncryptionConfig) -> None:
    """A logout whose unlink never reached WhatsApp leaves the device linked there: a
    copy of its deleted store put back must not resume it."""
    data, key = tmp_path / "data", new_key()
    path = put_store(data, "alpha", seal(key, json.dumps(CREDS).encode(),
                                         StoreId("alpha", NAME), generation=3))
    saved = path.read_bytes()
    copy = open_copy(data, "alpha", key, enc)
    copy.forget()
    copy.close()
    assert not path.exists()
    write_atomic(path, saved)
    with pytest.raises(RolledBack):
        open_copy(data, "alpha", key, enc)
    for downgrade in (legacy_seal(key, json.dumps(CREDS).encode()),
                      json.dumps(CREDS).encode()):  # a format 1 or a clear-text copy
        write_atomic(path, downgrade)
        with pytest.raises(RolledBack):
            open_copy(data, "alpha", key, enc)
    path.unlink()
    copy = open_copy(data, "alpha", key, enc)  # pairing anew: a newer generation
    try:
        change(copy, "15550000010")
        assert copy.checkpoint() == [NAME]
    finally:
        copy.close()
    assert sealed_generation(path.read_bytes()) == 5  # buried at 3 (floor 4), then 5


def _gateway_with_ledger(tmp_path: Path, enc: EncryptionConfig) -> tuple[Path, StoreKey, Any]:
    """A data_dir, its storage key and a config that keeps a generations file."""
    data, key = tmp_path / "data", new_key()
    key_file = tmp_path / "store.key"
    key_file.write_text(base64_text(key))
    return data, key, load_config(None, {
        "storage.data_dir": str(data), "encryption.key_file": str(key_file),
        "encryption.work_dir": enc.work_dir,
        "encryption.generations_file": enc.generations_file})


def test_the_start_up_check_refuses_a_rolled_back_store(
        tmp_path: Path, enc: EncryptionConfig) -> None:
    data, key, config = _gateway_with_ledger(tmp_path, enc)
    path = put_store(data, "alpha", seal(key, b"{}", StoreId("alpha", NAME), generation=4))
    check_stores(config)
    GenerationLedger(Path(enc.generations_file)).record("alpha", NAME, 6)
    with pytest.raises(StoreCheckError, match="rolled back"):
        check_stores(config)
    _, results = verify_stores(config)
    assert "rolled back" in results[0][1]
    Path(enc.generations_file).unlink()  # the operator accepts a restored backup
    check_stores(config)
    assert is_sealed(path.read_bytes())


def test_the_start_up_check_binds_format_1_stores(tmp_path: Path,
                                                  enc: EncryptionConfig) -> None:
    data, key, config = _gateway_with_ledger(tmp_path, enc)
    path = put_store(data, "alpha", legacy_seal(key, b"{}"))
    check_stores(config)
    assert sealed_version(path.read_bytes()) == 2
    assert unseal(key, path.read_bytes(), "s", StoreId("alpha", NAME)) == b"{}"
    assert GenerationLedger(Path(enc.generations_file)).floor("alpha", NAME) == 1


def test_the_ledger_lives_outside_data_dir_and_a_damaged_one_says_what_to_do(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert open_ledger("", data) is None
    with pytest.raises(StoreError, match="inside data_dir"):
        open_ledger(str(data / "generations.json"), data)
    ledger = open_ledger(str(tmp_path / "ledger.json"), data)
    assert ledger is not None
    ledger.verify()
    assert ledger.floor("s", NAME) == 0
    ledger.record("s", NAME, 3)
    ledger.record("s", NAME, 2)  # never lowered
    assert ledger.floor("s", NAME) == 3
    for damaged in ("not json", '{"s/simulator.json": -1}', '["x"]',
                    '{"s/simulator.json": true}', '{"s/simulator.json": 1e400}',
                    f'{{"s/simulator.json": {2**64}}}'):
        ledger.path.write_text(damaged)
        with pytest.raises(StoreError, match="delete it"):
            ledger.floor("s", NAME)


def test_without_a_ledger_generations_still_grow_but_nothing_is_refused(
        tmp_path: Path) -> None:
    """What is and is not protected without encryption.generations_file (README)."""
    data, key = tmp_path / "data", new_key()
    enc = EncryptionConfig(key_file="unused", work_dir=str(tmp_path / "work"))
    path = put_store(data, "alpha", seal(key, json.dumps(CREDS).encode(),
                                         StoreId("alpha", NAME), generation=1))
    old = path.read_bytes()
    copy = open_copy(data, "alpha", key, enc)
    change(copy, "15550000011")
    copy.close()
    assert sealed_generation(path.read_bytes()) == 2
    write_atomic(path, old)
    open_copy(data, "alpha", key, enc).close()  # accepted: nothing was recorded
