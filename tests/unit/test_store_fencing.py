"""Writes of the shared credential stores fenced by the lease epoch (issue 22, H1):
the pure rule (actors/leases/fencing.py), the epoch in the sealed format
(actors/session/sealed_store.py) and the working copy's fenced writes
(actors/session/working_copy.py). The whole scenario, with a stopped process and a
real successor, is tests/integration/test_store_fencing.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from actors.leases.fencing import refusal
from actors.session.sealed_store import (
    EPOCH_HEADER_BYTES,
    EPOCH_VERSION,
    FORMAT_VERSION,
    NONCE_BYTES,
    CorruptStore,
    StoreId,
    StoreKey,
    seal,
    sealed_epoch,
    sealed_generation,
    sealed_version,
    unseal,
)
from actors.session.working_copy import FencedWrite, WorkingCopy
from gateway.core.config import EncryptionConfig
from gateway.core.files import write_atomic
from tests.unit.test_working_copy import CREDS

STORE = StoreId("s1", "simulator.json")


class Lease:
    """What the session actor's fence answers: the epoch held now, or None."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch

    def __call__(self) -> int | None:
        return self.epoch


# ------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("writer", "on_disk", "refused"), [
    (None, 0, True),   # holds no lease (lost, past its deadline, not yet granted)
    (None, 7, True),
    (3, 5, True),      # a later lease wrote the store
    (5, 5, False),     # its own earlier write
    (5, 3, False),     # an older lease's store
    (1, 0, False),     # a store without an epoch (single-host, an older wagate)
])
def test_a_write_needs_a_held_lease_and_no_newer_store(
        writer: int | None, on_disk: int, refused: bool) -> None:
    why = refusal(writer, on_disk)
    assert (why is not None) is refused
    if why is not None:
        assert (why.writer_epoch, why.store_epoch) == (writer, on_disk)
        assert ("no longer holds" in why.reason) is (writer is None)


# ------------------------------------------------------------- the format


def test_a_store_sealed_with_an_epoch_records_it_authenticated(key: StoreKey) -> None:
    blob = seal(key, b"secret", STORE, generation=4, epoch=9)
    assert sealed_version(blob) == EPOCH_VERSION
    assert (sealed_generation(blob), sealed_epoch(blob)) == (4, 9)
    assert unseal(key, blob, "s", STORE) == b"secret"
    # The epoch is in the authenticated header: changed, the store no longer opens.
    forged = bytearray(blob)
    forged[EPOCH_HEADER_BYTES - NONCE_BYTES - 1] ^= 1  # the epoch's last byte
    assert sealed_epoch(bytes(forged)) == 8
    with pytest.raises(CorruptStore):
        unseal(key, bytes(forged), "s", STORE)


def test_a_store_without_an_epoch_stays_format_2_and_counts_as_epoch_0(key: StoreKey) -> None:
    blob = seal(key, b"secret", STORE, generation=4)
    assert sealed_version(blob) == FORMAT_VERSION and sealed_epoch(blob) == 0
    assert sealed_generation(blob) == 4
    with pytest.raises(ValueError, match="epoch"):
        seal(key, b"x", STORE, epoch=-1)


# ---------------------------------------------------------- the working copy


def _paired(data: Path, key: StoreKey, epoch: int | None, generation: int = 1) -> Path:
    path = data / "sessions" / "s1" / "simulator.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, seal(key, json.dumps(CREDS).encode(), STORE, generation, epoch))
    return path


def _engine_writes(copy: WorkingCopy, marker: str) -> None:
    (copy.store_dir / "simulator.json").write_text(json.dumps({**CREDS, "m": marker}))


def _content(path: Path, key: StoreKey) -> dict[str, object]:
    return json.loads(unseal(key, path.read_bytes(), "s", STORE))  # type: ignore[no-any-return]


def test_the_lease_holder_writes_under_its_epoch(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    data = tmp_path / "data"
    sealed = _paired(data, key, epoch=None)  # written before leases: epoch 0
    copy = WorkingCopy(data, "s1", key, enc, fence=Lease(4))
    try:
        _engine_writes(copy, "mine")
        assert copy.checkpoint() == ["simulator.json"]
        assert (sealed_generation(sealed.read_bytes()), sealed_epoch(sealed.read_bytes())) == (2, 4)
        assert _content(sealed, key)["m"] == "mine"
    finally:
        copy.close()


@pytest.mark.parametrize(("held", "on_disk"), [(None, 4), (4, 5)])
def test_a_stale_process_never_replaces_the_store(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig, held: int | None,
        on_disk: int) -> None:
    """Its lease is gone (None), or the successor's epoch is on disk: the checkpoint
    raises FencedWrite, and the store on disk is byte for byte the successor's."""
    data = tmp_path / "data"
    sealed = _paired(data, key, epoch=4)
    lease = Lease(4)
    copy = WorkingCopy(data, "s1", key, enc, fence=lease)
    try:
        _engine_writes(copy, "stale")
        lease.epoch = held
        successor = seal(key, json.dumps({**CREDS, "m": "successor"}).encode(), STORE, 7,
                         on_disk)
        write_atomic(sealed, successor)
        with pytest.raises(FencedWrite) as refused:
            copy.checkpoint()
        assert (refused.value.refusal.writer_epoch, refused.value.refusal.store_epoch) == (
            held, on_disk)
        assert sealed.read_bytes() == successor
        with pytest.raises(FencedWrite):
            copy.close()  # the exit's checkpoint is refused too
        assert sealed.read_bytes() == successor
    finally:
        copy.discard()


def test_a_stale_process_deletes_no_store(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """Neither the engine's own delete (a logout) nor ``forget`` removes a store the
    process no longer owns; its working copy goes all the same."""
    data = tmp_path / "data"
    sealed = _paired(data, key, epoch=4)
    lease = Lease(4)
    copy = WorkingCopy(data, "s1", key, enc, fence=lease)
    try:
        lease.epoch = None
        (copy.store_dir / "simulator.json").unlink()
        with pytest.raises(FencedWrite):
            copy.checkpoint()
        assert sealed.exists()
        with pytest.raises(FencedWrite):
            copy.forget()
        assert sealed.exists() and _content(sealed, key) == CREDS
    finally:
        copy.discard()


def test_without_leases_nothing_is_fenced(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig) -> None:
    """Single-host: no fence, format 2 as before, whatever epoch a store carries."""
    data = tmp_path / "data"
    sealed = _paired(data, key, epoch=9)
    copy = WorkingCopy(data, "s1", key, enc)
    try:
        _engine_writes(copy, "single")
        assert copy.checkpoint() == ["simulator.json"]
        assert sealed_version(sealed.read_bytes()) == FORMAT_VERSION
    finally:
        copy.close()


def _orphan(data: Path, key: StoreKey, enc: EncryptionConfig) -> Path:
    """A working copy whose process checkpointed under epoch 4, changed its store
    again and died (its lock released, as the kernel does)."""
    copy = WorkingCopy(data, "s1", key, enc, fence=Lease(4))
    _engine_writes(copy, "checkpointed")
    assert copy.checkpoint() == ["simulator.json"]
    _engine_writes(copy, "after the checkpoint")
    assert copy._lock_fd is not None
    os.close(copy._lock_fd)
    copy._lock_fd = None
    return copy.path


@pytest.mark.parametrize("later_epoch", [False, True])
def test_an_orphan_is_sealed_under_its_own_epoch_never_over_a_later_one(
        tmp_path: Path, key: StoreKey, enc: EncryptionConfig, later_epoch: bool) -> None:
    """The next process seals what a crashed one left (before it holds a lease
    itself), under the epoch the crashed one wrote with, and only over that one's
    store: one written under a later epoch stays."""
    data = tmp_path / "data"
    sealed = _paired(data, key, epoch=4)
    _orphan(data, key, enc)
    if later_epoch:  # the successor's store, at the generation the orphan knew
        blob = sealed.read_bytes()
        write_atomic(sealed, seal(key, json.dumps({**CREDS, "m": "successor"}).encode(), STORE,
                                  sealed_generation(blob), 5))
    copy = WorkingCopy(data, "s1", key, enc, fence=Lease(None))
    try:
        assert copy.recovered == ([] if later_epoch else ["s1/simulator.json"])
        blob = sealed.read_bytes()
        assert sealed_epoch(blob) == (5 if later_epoch else 4)
        assert _content(sealed, key)["m"] == ("successor" if later_epoch
                                              else "after the checkpoint")
    finally:
        copy.discard()
