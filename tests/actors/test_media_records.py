"""Media in the outbox store: records, references, the disk bound and retention, on
both of the store's backends (SQLite; PostgreSQL in multi-host mode)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from actors.media import store as files
from actors.messages import MediaSpec, MessageState
from actors.outbox import media as outbox_media
from actors.outbox.store import MessageStore, NewMessage, content_text, key_verdict, media_of
from actors.session.sealed_store import StoreKey

DAY = 86400.0
# MessageStore(directory, ...) on the test's backend (tests/conftest.py).
OpenStore = Callable[..., MessageStore]


def _spec(stored: files.StoredFile, kind: str = "DOCUMENT") -> MediaSpec:
    return MediaSpec(kind=kind, mime="application/pdf", size=stored.size,
                     sha256=stored.sha256, disk_bytes=files.sealed_size(stored.size),
                     file_name="a.pdf")


def _setup(tmp_path: Path, open_store: OpenStore) -> tuple[MessageStore, Path]:
    root = tmp_path / "media"
    files.ensure_key_pair(root, StoreKey(b"k" * 32, "test"))
    return open_store(tmp_path / "outbox"), root


def test_a_media_record_carries_its_file_and_a_key_tells_files_apart(
        tmp_path: Path, open_store: OpenStore) -> None:
    store, root = _setup(tmp_path, open_store)
    spec = _spec(files.store_bytes(root, b"%PDF-1.4 one"))
    record = store.add(NewMessage("s", "15550001111", "the caption", idempotency_key="k",
                                  requester="app", media=spec), 1.0)
    assert store.get(record["id"]) == record
    assert record["media_id"] == record["id"] and record["text"] == "the caption"
    assert media_of(record) == MediaSpec("DOCUMENT", "application/pdf", spec.size, spec.sha256,
                                         0, "a.pdf")
    ref = store.media_ref(record["id"])
    assert ref is not None and ref["session"] == "s" and ref["direction"] == "out"
    same = content_text("the caption", spec)
    other = content_text("the caption", MediaSpec("DOCUMENT", "x", 1, "f" * 64, 1))
    assert key_verdict(record, "app", "15550001111", same) == "duplicate"
    assert key_verdict(record, "app", "15550001111", other) == "reused"
    assert key_verdict(record, "app", "15550001111", "the caption") == "reused"
    store.close()


def test_the_disk_bound_counts_each_file_once(tmp_path: Path, open_store: OpenStore) -> None:
    store, root = _setup(tmp_path, open_store)
    spec = _spec(files.store_bytes(root, os.urandom(1000)))
    assert outbox_media.refusal(store, root, spec, spec.disk_bytes - 1, "r") is not None
    refused = outbox_media.refusal(store, root, spec, spec.disk_bytes - 1, "r")
    assert refused is not None and refused.code == "RATE_LIMITED"
    assert refused.details["reason"] == "QUEUE_FULL"
    assert outbox_media.refusal(store, root, spec, spec.disk_bytes, "r") is None
    store.add(NewMessage("s", "1555", "", media=spec), 1.0)
    store.add(NewMessage("s", "1556", "", media=spec), 1.0)
    assert store.media_bytes() == spec.disk_bytes
    # already stored: a second message with it costs nothing, even at a full store
    assert outbox_media.refusal(store, root, spec, spec.disk_bytes, "r") is None
    gone = MediaSpec("IMAGE", "image/png", 1, "e" * 64, 100)
    missing = outbox_media.refusal(store, root, gone, 10**9, "r")
    assert missing is not None and missing.details == {"reason": "UNREADABLE"}
    store.close()


def test_retention_deletes_a_file_only_when_no_message_needs_it(
        tmp_path: Path, open_store: OpenStore) -> None:
    store, root = _setup(tmp_path, open_store)
    spec = _spec(files.store_bytes(root, b"shared file"))
    first = store.add(NewMessage("s", "1555", "", media=spec), 0.0)
    second = store.add(NewMessage("s", "1556", "", media=spec), 0.0)
    store.transition(first, MessageState.SENT, 1.0)
    assert outbox_media.prune(store, root, 10 * DAY, 7 * DAY) == 0  # the second is pending
    assert store.media_ref(first["id"]) is None and store.media_known(spec.sha256)
    store.transition(second, MessageState.FAILED, 5 * DAY)
    assert outbox_media.prune(store, root, 10 * DAY, 7 * DAY) == 0  # not 7 days yet
    assert outbox_media.prune(store, root, 12.1 * DAY, 7 * DAY) == 1
    assert list(files.stored_files(root)) == [] and store.media_bytes() == 0
    store.close()


def test_an_upload_never_accepted_is_swept_after_the_grace(
        tmp_path: Path, open_store: OpenStore) -> None:
    store, root = _setup(tmp_path, open_store)
    stored = files.store_bytes(root, b"refused upload")
    path = files.file_path(root, stored.sha256)
    now = path.stat().st_mtime
    assert outbox_media.prune(store, root, now + 1, 7 * DAY) == 0  # maybe on its way
    os.utime(path, (now - outbox_media.UNREFERENCED_GRACE_SECONDS - 1,) * 2)
    assert outbox_media.prune(store, root, now + 1, 7 * DAY) == 1
    assert not path.exists()
    store.close()


def test_incoming_references_expire_from_reception(tmp_path: Path, open_store: OpenStore) -> None:
    store, root = _setup(tmp_path, open_store)
    spec = _spec(files.store_bytes(root, b"a voice note"), "VOICE")
    store.add_media_ref("in1", spec, "s", "in", "r1", 0.0)
    assert outbox_media.prune(store, root, 6 * DAY, 7 * DAY) == 0
    assert outbox_media.prune(store, root, 8 * DAY, 7 * DAY) == 1
    assert store.media_ref("in1") is None
    store.close()
