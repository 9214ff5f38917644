"""A misbehaving HTTP CONNECT proxy on 127.0.0.1, to fail WhatsApp dials on purpose.

The real client can only be exercised offline up to its first network step: the
websocket dial, which neonize makes through the configured proxy. This proxy
answers that dial in the ways a broken network does, so the transport's failure
paths run against the real Go code (docs/engine-behaviour.md, "How a connect fails
before it reaches WhatsApp", measured each of these):

* ``close``: read the CONNECT request, then close without a reply ("unexpected EOF");
* ``http502``: answer ``502 Bad Gateway`` ("Bad Gateway");
* ``ok_then_close``: answer ``200``, then reset the tunnel (the TLS handshake fails);
* ``tls_hang``: answer ``200``, then stay silent (Go gives up after 10 s);
* ``hang``: accept the TCP connection and never answer (Go gives up after 60 s).

``refused_port()`` gives the fifth case: a loopback port with nothing listening.

It only ever binds 127.0.0.1 and never connects anywhere itself. It counts the
connections and keeps the first request line of each, so a test can prove the
client really went through it. ``stop()`` closes every socket and joins every
thread it started, so a test can assert that nothing is left running.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

MODES = ("close", "http502", "ok_then_close", "tls_hang", "hang")

_POLL_SECONDS = 0.05  # how often blocked sockets look at the stop flag
_REQUEST_LIMIT = 64 * 1024  # a CONNECT request is a few hundred bytes
_REQUEST_DEADLINE_SECONDS = 5.0  # a client that sends no full request is dropped


def refused_port() -> int:
    """A loopback TCP port with nothing listening on it (connections are refused).

    The port is taken from the kernel and released at once; another process could
    grab it in between, which is harmless here (the dial then fails differently and
    the test that expects "refused" says so).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FaultProxy:
    """A threaded loopback proxy that fails every CONNECT in one ``mode``."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the lists and the counter below
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._connections = 0
        self._requests: list[str] = []
        self._drained = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ control

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(_POLL_SECONDS)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"fault-proxy-{self.mode}")
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket and join every thread; idempotent."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ observations

    @property
    def address(self) -> str:
        """The proxy URL to configure (``transport.proxy``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def requests(self) -> list[str]:
        """The first line of every request received (``CONNECT host:port HTTP/1.1``)."""
        with self._lock:
            return list(self._requests)

    @property
    def drained_bytes(self) -> int:
        """Bytes read and ignored in the silent modes: after the ``200`` in
        ``tls_hang`` (the client's TLS hello), everything in ``hang``."""
        with self._lock:
            return self._drained

    def threads_alive(self) -> list[str]:
        """Names of this proxy's threads still running (empty after ``stop``)."""
        with self._lock:
            threads = [*self._threads]
        if self._acceptor is not None:
            threads.append(self._acceptor)
        return [thread.name for thread in threads if thread.is_alive()]

    # ------------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            conn.settimeout(_POLL_SECONDS)
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                       name=f"fault-proxy-{self.mode}-conn")
            with self._lock:
                self._connections += 1
                self._sockets.append(conn)
                self._threads.append(handler)
            handler.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "hang":
                self._drain(conn)
                return
            request = self._read_request(conn)
            if request is None:
                return
            with self._lock:
                self._requests.append(request.split(b"\r\n", 1)[0].decode("latin-1"))
            if self.mode == "close":
                return
            if self.mode == "http502":
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if self.mode == "tls_hang":
                self._drain(conn)
                return
            # ok_then_close: wait for the client's first TLS bytes, then reset the
            # tunnel (SO_LINGER 0 sends an RST instead of an orderly FIN).
            self._recv_some(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # the client went away, or stop() closed the socket
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _read_request(self, conn: socket.socket) -> bytes | None:
        """The request head, or None if the client closed or we are stopping."""
        data = b""
        deadline = time.monotonic() + _REQUEST_DEADLINE_SECONDS
        while b"\r\n\r\n" not in data:
            if self._stop.is_set() or time.monotonic() > deadline or len(data) > _REQUEST_LIMIT:
                return None
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return None
            data += chunk
        return data

    def _recv_some(self, conn: socket.socket) -> None:
        """Wait (briefly) for the next bytes from the client."""
        deadline = time.monotonic() + 2.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if conn.recv(4096) is not None:
                    return
            except TimeoutError:
                continue

    def _drain(self, conn: socket.socket) -> None:
        """Read and discard until the client closes or we are stopping; never answer."""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            with self._lock:
                self._drained += len(chunk)
