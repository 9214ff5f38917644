"""``sendWhatsAppMedia``'s file: from an upload or a url into the media store, checked.

The web tier has already streamed an upload into an unfinished ``MediaWriter`` (chunk
by chunk, encrypted: ``gateway.web.uploads``); a url is streamed into one here. Either
way the file is checked from its bytes (size, then type) before it is finished, i.e.
fsynced under its SHA-256 name: a refused file never reaches the store's namespace.

No Flask: the upload is anything with a ``writer`` and a ``filename``.
"""

from __future__ import annotations

from typing import Protocol

from actors.media import fetch, kinds
from actors.media import store as files
from actors.messages import MediaSpec
from gateway.core.config import Config
from gateway.core.errors import GatewayError


class Upload(Protocol):
    """A file part of a multipart request, as the web tier hands it over."""

    @property
    def filename(self) -> str | None: ...

    @property
    def writer(self) -> files.MediaWriter: ...


def exactly_one(upload: object, url: object) -> None:
    if (upload is None) == (url is None):
        raise GatewayError("GRAPHQL_VALIDATION_FAILED", "give exactly one of file (an upload) "
                           "and url", field="file")
    if upload is not None and not hasattr(upload, "writer"):
        raise GatewayError("GRAPHQL_VALIDATION_FAILED", "file must be a file part of a "
                           "multipart request (graphql-multipart-request-spec)", field="file")


def store_media(config: Config, kind: kinds.Kind, upload: Upload | None, url: str | None,
                file_name: str | None) -> MediaSpec:
    """Check and store the file; returns what the message record names."""
    limits = kinds.MediaLimits.from_config(config.media)
    root = config.media_path
    if upload is not None:
        writer = upload.writer
        file_name = file_name or kinds.check_file_name(upload.filename)
    else:
        assert url is not None
        writer = files.MediaWriter(root, files.load_public(root), host=config.host_label)
    try:
        if url is not None:
            fetch.fetch_into(url, writer, allow=config.media.allow_insecure,
                             timeout=config.media.fetch_timeout_seconds,
                             max_bytes=limits.max_bytes[kind])
            file_name = file_name or kinds.check_file_name(_url_name(url))
        mime = kinds.check_media(kind, writer.head, writer.size, limits)
        stored = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return MediaSpec(kind=kind.value, mime=mime, size=stored.size, sha256=stored.sha256,
                     disk_bytes=files.sealed_size(stored.size), file_name=file_name or "")


def _url_name(url: str) -> str | None:
    """The last path part of a url, as a document's default name (None: none usable)."""
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    name = path.rsplit("/", 1)[-1] if "/" in path.split("://", 1)[-1] else ""
    return name if name and name.isprintable() and len(name) <= 255 else None
