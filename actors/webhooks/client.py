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

Connections are kept alive per ``Channels`` entry: one httpx client, holding at most one
connection, for each (scheme, name, address, port). httpx pools connections by the
address connected to, and since the url is pinned to the checked address, a shared
pool would let a TLS connection whose certificate was verified for one name carry
another name's request to the same address unverified; a client per name cannot. A new
connection per request (``make_client``, what ``sendTestWebhook`` and the tests use)
cost about a third of the delivery loop's CPU. The watchdog learns the socket from
httpcore's ``trace`` extension as a connection is made; a kept-alive one's socket is
remembered by its ``Channel``.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
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


KEEPALIVE_SECONDS = 10.0  # an idle kept-alive connection is closed after this
CHANNELS_MAX = 32  # kept-alive clients of one Channels (the least recently used goes)


def make_client(connect_timeout: float, timeout: float, max_connections: int = 16,
                verify: ssl.SSLContext | bool = True, keep_alive: bool = False
                ) -> httpx.Client:
    """A bounded client (``verify``: the system's CAs, or a context trusting a test's
    own CA). Without ``keep_alive`` a connection is never reused for another attempt;
    with it, the client must serve one name only (``Channels``: module docstring)."""
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections if keep_alive else 0,
                          keepalive_expiry=KEEPALIVE_SECONDS)
    # TCP_NODELAY: httpcore writes a request's headers and body in two sends; on a
    # kept-alive connection Nagle's algorithm held the body back until the receiver's
    # delayed ACK (about 40 ms: 25 requests a second instead of hundreds).
    transport = httpx.HTTPTransport(verify=verify, limits=limits, trust_env=False,
                                    socket_options=[(socket.IPPROTO_TCP,
                                                     socket.TCP_NODELAY, 1)])
    return httpx.Client(
        follow_redirects=False, trust_env=False, verify=verify, transport=transport,
        timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)))


class Deadlines:
    """One thread that fires the watchdogs of a ``Channels``' requests at their
    deadlines: a timer thread per request cost about a third of a request's time (its
    start waits for the GIL). A watchdog fires under the lock, so once ``disarm``
    returns, it has either fired or never will (a late fire would shut the next
    request's kept-alive connection)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: dict[int, tuple[float, Callable[[], None]]] = {}
        self.tokens = itertools.count()
        self.thread: threading.Thread | None = None
        self.closed = False

    def arm(self, seconds: float, fire: Callable[[], None]) -> int:
        with self.cond:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="wagate-webhook-watchdog")
                self.thread.start()
            token = next(self.tokens)
            self.pending[token] = (time.monotonic() + max(seconds, 0.0), fire)
            self.cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self.cond:
            self.pending.pop(token, None)

    def _run(self) -> None:
        with self.cond:
            while not self.closed:
                now = time.monotonic()
                for token in [t for t, (at, _) in self.pending.items() if at <= now]:
                    self.pending.pop(token)[1]()
                earliest = min((at for at, _ in self.pending.values()), default=now + 60.0)
                self.cond.wait(max(earliest - now, 0.0))

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
            thread = self.thread
        if thread is not None:
            thread.join()


@dataclass(slots=True)
class Channel:
    """A client and the socket of its connection (the last one made: the client holds
    one at most), for the watchdog of a request on a kept-alive connection."""

    client: httpx.Client
    deadlines: Deadlines
    sock: socket.socket | None = None


class Channels:
    """Kept-alive clients, one per (scheme, name, address, port), each with one
    connection at most; used by one thread (a delivery worker). Bounded: past
    ``CHANNELS_MAX`` the least recently used is closed."""

    def __init__(self, connect_timeout: float, timeout: float,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.connect_timeout, self.timeout, self.verify = connect_timeout, timeout, verify
        self.open: OrderedDict[tuple[str, str, str, int], Channel] = OrderedDict()
        self.deadlines = Deadlines()

    def get(self, target: Target) -> Channel:
        key = (target.scheme, target.host, target.address, target.port)
        channel = self.open.pop(key, None)
        if channel is None:
            channel = Channel(make_client(self.connect_timeout, self.timeout, 1,
                                          self.verify, keep_alive=True), self.deadlines)
        self.open[key] = channel  # the most recently used is last
        while len(self.open) > CHANNELS_MAX:
            _, oldest = self.open.popitem(last=False)
            oldest.client.close()
        return channel

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1].client.close()
        self.deadlines.close()


class Watchdog:
    """Shuts the request's socket down at its deadline, so no phase of the request
    (a trickled header block included) outlives ``webhooks.timeout_seconds``. Fed the
    socket by httpcore's ``trace`` extension as the connection is made and wrapped in
    TLS, or by its ``Channel`` (a kept-alive connection's). Armed on the channel's
    ``Deadlines`` thread, or without a channel on a timer thread of its own, cancelled
    and joined by ``stop``."""

    def __init__(self, seconds: float, channel: Channel | None = None) -> None:
        self.lock = threading.Lock()
        # a kept-alive connection's socket (a request that opens a new one replaces it)
        self.channel = channel
        self.sock: socket.socket | None = channel.sock if channel is not None else None
        self.fired = False
        self.seconds = seconds
        self.token: int | None = None
        self.timer: threading.Timer | None = None
        if channel is None:  # no shared deadline thread: a timer of its own
            self.timer = threading.Timer(max(seconds, 0.0), self._fire)
            self.timer.daemon = True
            self.timer.name = "wagate-webhook-watchdog"

    def start(self) -> None:
        if self.timer is not None:
            self.timer.start()
        elif self.channel is not None:
            self.token = self.channel.deadlines.arm(self.seconds, self._fire)

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember the socket of a new connection (the TLS one
        replaces the plain one, which TLS detaches); ask for quick ACKs before the
        answer is read."""
        if name == "http11.receive_response_headers.started":
            _quick_ack(self.sock)
            return
        if name not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if self.channel is not None:
            self.channel.sock = sock
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
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join()
        elif self.channel is not None and self.token is not None:
            self.channel.deadlines.disarm(self.token)


def _quick_ack(sock: socket.socket | None) -> None:
    """ACK the answer's segments at once (Linux; elsewhere nothing). A receiver that
    writes its status line and body in two sends without TCP_NODELAY (Python's
    http.server does) holds the body until the first segment is ACKed, and on a
    kept-alive connection Linux delays that ACK by ~40 ms: 25 events a second instead
    of hundreds. Quick-ACK mode is not sticky, so it is asked for before each answer."""
    option = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or option is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)


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


def pinned_request(client: httpx.Client, method: str, target: Target, watchdog: Watchdog,
                   headers: dict[str, str], content: bytes | None = None) -> httpx.Request:
    """A request to ``target``'s checked address: the name goes as Host and as the TLS
    SNI, and ``watchdog`` learns the socket of the connection it opens."""
    extensions: dict[str, Any] = {"trace": watchdog.trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    return client.build_request(method, pinned_url(target), content=content,
                                headers={**headers, "host": host_header(target)},
                                extensions=extensions)


def post(via: httpx.Client | Channel, target: Target, headers: dict[str, str], body: bytes,
         *, timeout: float, max_bytes: int) -> Attempt:
    """POST ``body`` to ``target``'s checked address, through a client that keeps no
    connection or through ``target``'s own ``Channel``; never raises for the endpoint's
    behaviour (a refused connection, a timeout, a reset are an Attempt without status)."""
    started = time.monotonic()
    channel = via if isinstance(via, Channel) else None
    client = via.client if isinstance(via, Channel) else via
    watchdog = Watchdog(timeout, channel)
    request = pinned_request(client, "POST", target, watchdog,
                             {**headers, "user-agent": "wagate-webhooks"}, body)
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
