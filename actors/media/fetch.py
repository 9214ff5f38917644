"""A media ``url`` fetched by the gateway, with the webhooks' outbound safety.

The same rules as a webhook delivery (``actors.webhooks.safety``, ``.client``): https
to a public address, plain http or a private, loopback or link-local address only for
hosts in ``media.allow_insecure``; every address the name resolves to is checked and
the connection goes to the checked one (no second lookup an attacker could answer
differently); redirects are never followed (a 3xx is a failure, so a public url
cannot bounce the gateway to an internal one); the body is streamed into the media
store and cut off at ``max_bytes``; a watchdog ends the whole request at ``timeout``.
Every failure is ``INVALID_MEDIA`` with ``reason: FETCH_FAILED`` and what went wrong.

Pure: no actor, no Flask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx

from actors.media.kinds import refused
from actors.media.store import MediaWriter
from actors.webhooks.client import Watchdog, make_client, pinned_request
from actors.webhooks.safety import Resolver, UnsafeTarget, resolve, target
from gateway.core.errors import GatewayError
from gateway.core.urls import loggable_url


def fetch_into(url: str, writer: MediaWriter, *, allow: Sequence[str], timeout: float,
               max_bytes: int, resolver: Resolver = resolve,
               client_factory: Callable[[], httpx.Client] | None = None) -> None:
    """Stream ``url``'s body into ``writer``; raises INVALID_MEDIA (FETCH_FAILED, or
    TOO_LARGE with the limit) without touching the writer's fate (the caller aborts)."""
    shown = loggable_url(url)
    try:
        checked = target(url, allow, resolver)
    except UnsafeTarget as exc:
        raise _failed(f"the url {shown} may not be fetched: "
                      f"{_for_media(str(exc))}") from None
    client = client_factory() if client_factory is not None else make_client(timeout, timeout,
                                                                             1)
    watchdog = Watchdog(timeout)
    request = pinned_request(client, "GET", checked, watchdog, {"user-agent": "wagate-media"})
    deadline = time.monotonic() + timeout
    watchdog.start()
    try:
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            reason = "timed out" if watchdog.fired else _describe(exc)
            raise _failed(f"the url {shown} could not be fetched: {reason}") from None
        try:
            _check_status(response, shown, max_bytes)
            _stream(response, writer, shown, max_bytes, deadline, watchdog)
        finally:
            response.close()
    finally:
        watchdog.stop()
        client.close()


def _check_status(response: httpx.Response, shown: str, max_bytes: int) -> None:
    if 300 <= response.status_code < 400:
        raise _failed(f"the url {shown} answered a redirect ({response.status_code}); "
                      "redirects are not followed: give the final url")
    if response.status_code != 200:
        raise _failed(f"the url {shown} answered HTTP {response.status_code}, not 200")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise refused("TOO_LARGE", f"the url {shown} holds {declared} bytes, more than the "
                      f"{max_bytes} any media may have", limit=max_bytes)


def _stream(response: httpx.Response, writer: MediaWriter, shown: str, max_bytes: int,
            deadline: float, watchdog: Watchdog) -> None:
    try:
        for chunk in response.iter_bytes():
            if writer.size + len(chunk) > max_bytes:
                raise refused("TOO_LARGE", f"the url {shown} holds more than the {max_bytes} "
                              "bytes any media may have", limit=max_bytes)
            writer.write(chunk)
            if time.monotonic() > deadline:
                raise _failed(f"the url {shown} took longer than the fetch timeout")
    except httpx.HTTPError as exc:
        reason = "timed out" if watchdog.fired else _describe(exc)
        raise _failed(f"the url {shown} was cut off while fetching: {reason}") from None


def _for_media(text: str) -> str:
    """The webhooks' refusal, worded for a media url (its own allowlist key)."""
    return text.replace("webhooks.", "media.").replace("webhook", "media")


def _failed(message: str) -> GatewayError:
    return refused("FETCH_FAILED", message)


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return f"no answer ({type(exc).__name__})"
