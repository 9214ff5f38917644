"""The outbox's side of media: may a file be accepted, and which files may go.

Plain functions over the message store and the media directory, so the outbox actor
stays a thin shell (and these are tested without one).
"""

from __future__ import annotations

import os
from pathlib import Path

from actors.media import store as files
from actors.messages import Failed, MediaSpec
from actors.outbox.store import MessageStore

# A stored file that no message names yet is an upload on its way to acceptance, or
# one that was refused (a rate limit, a full queue): kept this long, then swept.
UNREFERENCED_GRACE_SECONDS = 600.0
MEDIA_FULL_RETRY_SECONDS = 3600


def refusal(store: MessageStore, root: Path, media: MediaSpec, max_total_bytes: int,
            request_id: str) -> Failed | None:
    """Why a media send cannot be accepted now (None: it can): its file must be in the
    store, and a new file must fit under ``media.max_total_mb``."""
    try:
        files.file_path(root, media.sha256).stat()
    except (OSError, files.MediaStoreError):
        return Failed("INVALID_MEDIA", "the uploaded file is no longer in the media store "
                      "(removed while the request waited); send it again",
                      {"reason": "UNREADABLE"}, request_id=request_id)
    if store.media_known(media.sha256):
        return None  # stored once already: costs nothing more
    used = store.media_bytes()
    if used + media.disk_bytes > max_total_bytes:
        return Failed("RATE_LIMITED", f"the media store is full ({used} of {max_total_bytes} "
                      "bytes, media.max_total_mb): files are deleted media.retention_days "
                      "after their messages end; retry later, or the operator raises "
                      "media.max_total_mb", {"reason": "QUEUE_FULL", "scope": "media_store",
                                             "retryAfterSeconds": MEDIA_FULL_RETRY_SECONDS},
                      request_id=request_id)
    return None


def prune(store: MessageStore, root: Path, now: float, retention_seconds: float) -> int:
    """Drop expired references, then delete every file no reference names (a released
    one at once, an unreferenced upload after the grace period). Returns files deleted."""
    released = set(store.media_release(now - retention_seconds))
    deleted = 0
    for sha in released:
        if not store.media_known(sha) and files.delete(root, sha):
            deleted += 1
    cutoff = now - UNREFERENCED_GRACE_SECONDS
    for sha, _ in list(files.stored_files(root)):
        if sha in released or store.media_known(sha):
            continue
        try:
            if os.stat(files.file_path(root, sha)).st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        if files.delete(root, sha):
            deleted += 1
    return deleted


def stored_bytes(store: MessageStore) -> int:
    """The media store's size as health and ``wagate_media_bytes`` show it."""
    return store.media_bytes()
