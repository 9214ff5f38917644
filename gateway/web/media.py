"""``GET /media/<id>``: the bytes of a sent or received media file.

For a token allowed to read messages on the file's session (the same rule as
``whatsAppMessage``: another session's file is as good as absent, a 404). The outbox
hands over the key of that one file (``OpenMedia``); the bytes are decrypted here a
chunk at a time and streamed, with ``Content-Length`` and single-range requests
(``206``, what a browser's video and audio players ask for).

A stored file is whatever a caller or a correspondent sent, so it is never rendered
as a page of this origin: ``nosniff``, a sandboxing Content-Security-Policy, and
``attachment`` unless it is a picture, video or audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, Response, g, request

from actors.media import store as files
from actors.messages import OpenMedia
from gateway.auth.tokens import Principal
from gateway.web.errors import error_response
from gateway.web.hooks import require
from gateway.web.state import current

INLINE_PREFIXES = ("image/", "video/", "audio/")

media_blueprint = Blueprint("media", __name__)


@media_blueprint.get("/media/<media_id>")
def media(media_id: str) -> Response | tuple[Response, int]:
    principal = require("messages")
    state = current()
    ref = state.bridge.ask(OpenMedia(media_id[:64], g.request_id))
    if ref is None or not _may_see(principal, ref["session"]):
        return error_response("NOT_FOUND", f"no media {media_id!r} (unknown, deleted after "
                              "media.retention_days, or of a session this token may not "
                              "read)", 404)
    root = state.config.media_path
    size = int(ref["size"])
    headers = _headers(ref)
    status, start, end = 200, 0, size
    if request.range is not None:
        wanted = request.range.range_for_length(size)
        if wanted is None:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(b"", 416, headers=headers)
        status, (start, end) = 206, wanted
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    body = _chunks(root, ref["sha256"], ref["key"], start, end)
    return Response(body, status, headers=headers, mimetype=ref["mime"],
                    direct_passthrough=True)


def _may_see(principal: Principal, session: str) -> bool:
    return principal.may_see(session)


def _chunks(root: Path, sha256: str, key: bytes, start: int, end: int) -> Iterator[bytes]:
    """Decrypted one chunk at a time, as the response is written."""
    yield from files.read_range(root, sha256, key, start, end)


def _headers(ref: dict[str, object]) -> dict[str, str]:
    mime = str(ref["mime"])
    name = str(ref.get("file_name") or f"{ref['kind']}".lower())
    disposition = "inline" if mime.startswith(INLINE_PREFIXES) else "attachment"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in name)
    return {"Content-Disposition": f"{disposition}; filename=\"{fallback}\"; "
                                   f"filename*=UTF-8''{quote(name, safe='')}",
            "Accept-Ranges": "bytes", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "private, no-store"}
