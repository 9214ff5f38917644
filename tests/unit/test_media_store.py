"""The encrypted media store: round trips, range reads, dedup, and every damage refused."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from actors.media import store
from actors.session.sealed_store import CorruptStore, StoreKey, WrongKey, is_sealed

KEY = StoreKey(b"k" * 32, "test")
OTHER = StoreKey(b"o" * 32, "other")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    media = tmp_path / "media"
    store.ensure_key_pair(media, KEY)
    return media


def _key(root: Path, sha: str) -> bytes:
    return store.file_key(root, sha, store.load_private(root, KEY))


@pytest.mark.parametrize("size", [0, 1, store.CHUNK_BYTES - 1, store.CHUNK_BYTES,
                                  store.CHUNK_BYTES + 1, 3 * store.CHUNK_BYTES + 17])
def test_round_trip_at_chunk_edges(root: Path, size: int) -> None:
    data = os.urandom(size)
    stored = store.store_bytes(root, data)
    path = store.file_path(root, stored.sha256)
    assert stored.size == size and path.stat().st_size == store.sealed_size(size)
    assert store.read_all(root, stored.sha256, _key(root, stored.sha256)) == data
    assert store.file_size(root, stored.sha256) == size


def test_ranges_decrypt_only_what_they_need(root: Path) -> None:
    data = os.urandom(3 * store.CHUNK_BYTES + 100)
    sha = store.store_bytes(root, data).sha256
    key = _key(root, sha)
    chunk = store.CHUNK_BYTES
    for start, end in ((0, 1), (chunk - 1, chunk + 1), (chunk, 2 * chunk), (len(data) - 1, None),
                       (5, 5), (2 * chunk + 3, len(data) + 50)):
        parts = list(store.read_range(root, sha, key, start, end))
        assert b"".join(parts) == data[start:end]
    assert len(list(store.read_range(root, sha, key, chunk + 1, chunk + 2))) == 1
    with pytest.raises(store.MediaStoreError):
        list(store.read_range(root, sha, key, 10, 5))


def test_identical_files_are_stored_once_and_not_in_clear(root: Path) -> None:
    data = b"the same bytes " * 1000
    first, second = store.store_bytes(root, data), store.store_bytes(root, data)
    assert first.sha256 == second.sha256
    assert [sha for sha, _ in store.stored_files(root)] == [first.sha256]
    assert not list((root / store.TEMP_DIR).iterdir())
    for path in root.rglob("*"):
        if path.is_file():
            assert b"the same bytes" not in path.read_bytes()
    assert store.disk_bytes(root) == store.sealed_size(len(data))


def test_a_flipped_byte_a_truncated_or_a_dropped_chunk_is_refused(root: Path) -> None:
    data = os.urandom(2 * store.CHUNK_BYTES + 10)
    sha = store.store_bytes(root, data).sha256
    key = _key(root, sha)
    path = store.file_path(root, sha)
    good = path.read_bytes()
    for damaged in (good[:-1], good[:-(store.TAG_BYTES + 10)],
                    good[:store.HEADER_BYTES + store.CHUNK_BYTES + store.TAG_BYTES],
                    _flip(good, store.HEADER_BYTES + 5), _flip(good, len(good) - 1)):
        path.write_bytes(damaged)
        with pytest.raises(store.MediaStoreError):
            store.read_all(root, sha, key)
    for at in (0, 10, store.HEADER_BYTES - 1):  # magic, size, the sealed file key
        path.write_bytes(_flip(good, at))
        with pytest.raises(store.MediaStoreError):
            _key(root, sha)
    path.write_bytes(good[:10])
    with pytest.raises(store.MediaStoreError):
        store.file_size(root, sha)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def test_a_header_of_another_file_does_not_open(root: Path) -> None:
    one = store.store_bytes(root, b"one" * 10)
    two = store.store_bytes(root, b"two" * 10)
    path_one, path_two = (store.file_path(root, s.sha256) for s in (one, two))
    path_two.write_bytes(path_one.read_bytes()[:store.HEADER_BYTES]
                         + path_two.read_bytes()[store.HEADER_BYTES:])
    with pytest.raises(store.MediaStoreError):
        store.read_all(root, two.sha256, _key(root, two.sha256))


def test_the_private_key_is_sealed_and_opens_only_with_the_storage_key(root: Path) -> None:
    assert is_sealed((root / store.PRIVATE_FILE).read_bytes())
    with pytest.raises(WrongKey):
        store.load_private(root, OTHER)
    with pytest.raises(store.MediaStoreError):
        store.load_private(root, None)
    (root / store.PRIVATE_FILE).write_bytes(b"WAGSEAL\x00" + bytes(60))
    with pytest.raises(CorruptStore):
        store.load_private(root, KEY)


def test_a_file_sealed_to_another_key_pair_is_refused(tmp_path: Path, root: Path) -> None:
    other = tmp_path / "other"
    store.ensure_key_pair(other, KEY)
    sha = store.store_bytes(other, b"x" * 100).sha256
    (root / sha[:2]).mkdir()
    store.file_path(other, sha).rename(store.file_path(root, sha))
    with pytest.raises(store.MediaStoreError):
        _key(root, sha)


def test_interrupted_uploads_are_swept_and_an_abort_leaves_nothing(root: Path) -> None:
    writer = store.MediaWriter(root, store.load_public(root))
    writer.write(b"half an upload")
    assert store.sweep_temp(root) == 1
    writer = store.MediaWriter(root, store.load_public(root))
    writer.write(b"x")
    writer.abort()
    assert not list((root / store.TEMP_DIR).iterdir())
    assert list(store.stored_files(root)) == []
    assert store.delete(root, "a" * 64) == 0
    with pytest.raises(store.MediaStoreError):
        store.file_path(root, "../../etc/passwd")


def test_the_demo_keeps_the_private_key_in_clear(tmp_path: Path) -> None:
    root = tmp_path / "media"
    store.ensure_key_pair(root, None)
    sha = store.store_bytes(root, b"demo").sha256
    assert store.read_all(root, sha, store.file_key(root, sha, store.load_private(root, None))
                          ) == b"demo"


def _race_for_the_key_pair(root: str, barrier: Any, results: Any) -> None:
    """One host starting: make the key pair (after every other host is ready to do the
    same), then store a file sealed to the public key it found."""
    barrier.wait(30)
    store.ensure_key_pair(Path(root), KEY)
    results.put(store.store_bytes(Path(root), os.urandom(64)).sha256)


@pytest.mark.parametrize("attempt", range(3))
def test_hosts_starting_at_once_end_with_one_key_pair(tmp_path: Path, attempt: int) -> None:
    """Leaders sharing storage.media_dir start together: one private key wins, and
    every file any of them stored opens with it (before, each wrote its own pair over
    the others' and files sealed to a lost public key could never be read)."""
    context = multiprocessing.get_context("fork")
    hosts = 6
    barrier, results = context.Barrier(hosts), context.Queue()
    root = tmp_path / "media"
    processes = [context.Process(target=_race_for_the_key_pair,
                                 args=(str(root), barrier, results)) for _ in range(hosts)]
    for process in processes:
        process.start()
    try:
        shas = [results.get(timeout=60) for _ in range(hosts)]
    finally:
        for process in processes:
            process.join(30)
    assert [p.exitcode for p in processes] == [0] * hosts
    private = store.load_private(root, KEY)  # media.pub belongs to media.key
    for sha in shas:
        store.read_all(root, sha, store.file_key(root, sha, private))
    assert {p.name for p in root.iterdir() if p.is_file()} == {
        store.PUBLIC_FILE, store.PRIVATE_FILE}  # no temp file left behind


def test_a_crash_between_the_two_key_files_is_repaired_at_the_next_start(
        root: Path) -> None:
    """The private key is written first: without media.pub the next start derives it
    from media.key, and files stored before still open."""
    sha = store.store_bytes(root, b"before").sha256
    (root / store.PUBLIC_FILE).unlink()
    store.ensure_key_pair(root, KEY)
    assert store.read_all(root, sha, _key(root, sha)) == b"before"


def test_a_host_sweeps_only_its_own_interrupted_uploads(root: Path) -> None:
    """Hosts sharing storage.media_dir: one starting removes its own half uploads (and
    those of a version without per-host temp directories), never another host's
    upload under way, which still finishes."""
    public = store.load_public(root)
    mine, theirs = (store.MediaWriter(root, public, host="alpha"),
                    store.MediaWriter(root, public, host="gamma"))
    mine.write(b"cut off by a crash")
    theirs.write(b"still uploading")
    legacy = root / store.TEMP_DIR / ".upload.old12345.tmp"
    legacy.write_bytes(b"x")
    assert mine.path.parent == root / store.TEMP_DIR / "alpha"
    assert store.sweep_temp(root, "alpha") == 2
    assert not mine.path.exists() and not legacy.exists() and theirs.path.exists()
    stored = theirs.finish()
    assert store.read_all(root, stored.sha256, _key(root, stored.sha256)) == b"still uploading"
    assert store.sweep_temp(root, "gamma") == 0
