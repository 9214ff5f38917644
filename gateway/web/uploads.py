"""GraphQL multipart requests (the upload side of ``sendWhatsAppMedia``).

The GraphQL multipart request specification (``operations``, ``map``, then one part
per file) is what ``apollo-upload-client`` and ``gql`` send. Werkzeug parses the body
as it arrives and asks the request for a stream to write each file part into
(``Request._get_file_stream``); the default spools to a temp file in clear text. Here
each file part goes straight into an encrypted ``MediaWriter`` in the media store,
in werkzeug's chunks: a file is never whole in a worker's memory, and never on disk
unencrypted. The body may be at most the largest ``media.max_<kind>_mb`` plus a
little (a 413 otherwise, before a byte is stored); the kind's own limit is checked
by the resolver, from the bytes.
"""

from __future__ import annotations

import json
from typing import IO, Any, cast

from ariadne import combine_multipart_data
from ariadne.exceptions import HttpBadRequestError
from flask import Request, g

from actors.media import store as files
from actors.media.kinds import MediaLimits
from gateway.core.config import Config
from gateway.web.request_body import BodyError, parse_json_body

MULTIPART = "multipart/form-data"
FORM_SLACK_BYTES = 1024 * 1024  # operations, map and the multipart framing
MAX_FILE_PARTS = 4  # one file per send; a batch of a few


class UploadSink:
    """The file-like object werkzeug writes one file part into: an unfinished
    ``MediaWriter`` (the resolver checks and finishes it, or it is aborted)."""

    def __init__(self, writer: files.MediaWriter) -> None:
        self.writer = writer
        self.filename: str | None = None

    def write(self, data: bytes) -> int:
        self.writer.write(bytes(data))
        return len(data)

    def seek(self, *_: Any) -> int:  # werkzeug rewinds a finished part; nothing to do
        return 0

    def read(self, *_: Any) -> bytes:  # never read back: the bytes are encrypted
        return b""

    def readline(self, *_: Any) -> bytes:
        return b""

    def close(self) -> None:
        """Werkzeug closes the streams of a request that failed half-way."""


class MediaRequest(Request):
    """A request whose file parts stream into the media store (and nowhere else)."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None
                         ) -> IO[bytes]:
        sinks: list[UploadSink] = g.setdefault("upload_sinks", [])
        if len(sinks) >= MAX_FILE_PARTS:
            raise BodyError(f"a request may carry at most {MAX_FILE_PARTS} files")
        root, host = g.media_root_of
        sink = UploadSink(files.MediaWriter(root, files.load_public(root), host=host))
        sinks.append(sink)
        return cast(IO[bytes], sink)


def max_body(config: Config) -> int:
    return MediaLimits.from_config(config.media).largest + FORM_SLACK_BYTES


def multipart_operations(request: Request, config: Config) -> Any:
    """The operations of a multipart request with each file put in its variable (an
    ``UploadSink``, the resolvers' ``Upload``). Raises BodyError for a malformed one."""
    g.media_root_of = (config.media_path, config.host_label)
    request.max_content_length = max_body(config)
    form, parts = request.form, request.files
    try:
        operations = parse_json_body(form.get("operations", "").encode("utf-8"))
        files_map = json.loads(form.get("map", "{}"))
    except ValueError as exc:
        raise BodyError(f"a multipart request needs the fields operations and map as JSON "
                        f"(graphql-multipart-request-spec): {exc}") from None
    sinks = {}
    for name, storage in parts.items():
        sink = cast(UploadSink, storage.stream)
        sink.filename = storage.filename
        sinks[name] = sink
    try:
        return combine_multipart_data(operations, files_map, sinks)
    except HttpBadRequestError as exc:
        raise BodyError(str(exc.message)) from None


def discard_uploads() -> None:
    """After the request: an upload no resolver finished (refused, unused, or a failed
    parse) leaves nothing behind (a finished one has already moved to its name)."""
    for sink in g.pop("upload_sinks", []):
        sink.writer.abort()
