"""One webhook request: to the checked address, no redirects, a capped read.

The connection goes to ``Target.address`` (the address ``safety`` checked), never to a
fresh lookup of the name: the url is rewritten to the address, the name is sent as the
``Host`` header and as the TLS SNI (httpx's ``sni_hostname`` extension), so the
endpoint's certificate is still verified against its name. Redirects are not followed
(a 3xx is a failed attempt). At most ``max_response_bytes`` of the answer are read.
Timeouts: ``connect_timeout_seconds`` to connect, ``timeout_seconds`` for each later
phase and as a deadline on the whole request: a per-read timeout alone lets an endpoint
that trickles its headers a byte at a time hold the request for hours, so a watchdog
timer shuts the connection's socket down when the deadline passes, wherever the request
is (connect, TLS, headers, body).

No connection is kept alive: every attempt opens its own. httpx pools connections by
the address connected to, and since the url is pinned to the checked address, a
kept-alive TLS connection whose certificate was verified for one name would carry
another name's request to the same address unverified. A fresh connection per attempt
also means the watchdog always knows the socket to shut (it learns it from httpcore's
``trace`` extension as the connection is made).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from actors.webhooks.safety import Target


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request got: a status (None when there was no answer), the
    ``Retry-After`` header, a short error for the operator and the latency."""

    status: int | None
    retry_after: str | None
    error: str
    seconds: float
    body: bytes = b""


def make_client(connect_timeout: float, timeout: float, max_connections: int = 16,
                verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """The bounded client the delivery loop shares across endpoints (``verify``: the
    system's CAs, or a context trusting a test's own CA). No keep-alive: a connection
    is never reused for another attempt (see the module docstring)."""
    return httpx.Client(
        follow_redirects=False, trust_env=False, verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0))


class Watchdog:
    """Shuts the request's socket down at its deadline, so no phase of the request
    (a trickled header block included) outlives ``webhooks.timeout_seconds``. Fed the
    socket by httpcore's ``trace`` extension as the connection is made and wrapped in
    TLS; one timer thread per request, cancelled and joined by ``stop``."""

    def __init__(self, seconds: float) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.fired = False
        self.timer = threading.Timer(max(seconds, 0.0), self._fire)
        self.timer.daemon = True
        self.timer.name = "wagate-webhook-watchdog"

    def start(self) -> None:
        self.timer.start()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember the socket of a new connection (the TLS one
        replaces the plain one, which TLS detaches)."""
        if name not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self.lock:
            self.sock = sock
            fired = self.fired
        if fired:
            _shut(sock)

    def _fire(self) -> None:
        with self.lock:
            self.fired = True
            sock = self.sock
        _shut(sock)

    def stop(self) -> None:
        self.timer.cancel()
        self.timer.join()


def _shut(sock: socket.socket | None) -> None:
    """Wake a thread blocked reading ``sock`` (shutdown does, close does not)."""
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):  # already closed: nobody waits on it
        sock.shutdown(socket.SHUT_RDWR)


def pinned_url(target: Target) -> str:
    host = f"[{target.address}]" if ":" in target.address else target.address
    return f"{target.scheme}://{host}:{target.port}{target.path}"


def host_header(target: Target) -> str:
    default = 443 if target.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host
    return name if target.port == default else f"{name}:{target.port}"


def post(client: httpx.Client, target: Target, headers: dict[str, str], body: bytes,
         *, timeout: float, max_bytes: int) -> Attempt:
    """POST ``body`` to ``target``'s checked address; never raises for the endpoint's
    behaviour (a refused connection, a timeout, a reset are an Attempt without status)."""
    started = time.monotonic()
    watchdog = Watchdog(timeout)
    extensions: dict[str, Any] = {"trace": watchdog.trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    request = client.build_request(
        "POST", pinned_url(target), content=body,
        headers={**headers, "host": host_header(target), "user-agent": "wagate-webhooks"},
        extensions=extensions)
    watchdog.start()
    try:
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            error = "timed out" if watchdog.fired else _describe(exc)
            return Attempt(None, None, error, time.monotonic() - started)
        try:
            kept = _read_capped(response, max_bytes, started + timeout)
        except httpx.HTTPError:
            kept = b""  # the status arrived: a body cut short does not change the outcome
        finally:
            response.close()
    finally:
        watchdog.stop()
    return Attempt(response.status_code, response.headers.get("retry-after"), "",
                   time.monotonic() - started, kept)


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float) -> bytes:
    kept = bytearray()
    for chunk in response.iter_raw():
        kept += chunk[:max_bytes - len(kept)]
        if len(kept) >= max_bytes or time.monotonic() > deadline:
            break
    return bytes(kept)


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return f"no answer ({type(exc).__name__})"
