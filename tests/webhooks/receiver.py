"""A real HTTP receiver on 127.0.0.1 for the webhook tests.

A threaded ``http.server`` whose answers are scripted per request: a status (with
headers, e.g. ``Retry-After``), ``HANG`` (no answer until the receiver stops), or
``CLOSE`` (the connection is closed without an answer). Every request is recorded
(headers, body, the Host header, the SNI name under TLS). Used as a context manager:
leaving it stops the server, releases hung handlers and joins every thread.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = "hang"
CLOSE = "close"
Answer = tuple[int, dict[str, str]] | str


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    sni: str | None
    at: float


@dataclass
class Receiver:
    """Answers from ``script`` in turn, then ``default`` for every later request."""

    script: list[Answer] = field(default_factory=list)
    default: Answer = (200, {})
    tls: ssl.SSLContext | None = None
    requests: list[Received] = field(default_factory=list)
    answer_body: bytes = b"ok"
    # called in the handler's thread before each answer (a test acts "while the
    # request is out")
    on_request: Callable[[Received], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._released = threading.Event()
        self._sni = threading.local()
        self._connections: set[Any] = set()
        self.connections_opened = 0  # connections accepted so far (keep-alive tests)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> Receiver:
        handler = _handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = False
        self._server.block_on_close = True
        if self.tls is not None:
            self.tls.sni_callback = self._remember_sni
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._released.is_set():
            return  # already stopped
        self._released.set()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        with self._lock:  # kept-alive connections: their handlers wait for a next request
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads (block_on_close)
        self._thread.join(timeout=10)

    def _remember_sni(self, sock: Any, name: str | None, context: Any) -> None:
        sock.sni_name = name  # read back by the handler from its connection

    def opened(self, connection: Any) -> None:
        with self._lock:
            self._connections.add(connection)
            self.connections_opened += 1

    def next_answer(self) -> Answer:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)
            self._lock.notify_all()

    def wait_for(self, count: int, deadline_seconds: float = 20.0) -> list[Received]:
        """The first ``count`` requests, waiting for them up to a deadline."""
        end = time.monotonic() + deadline_seconds
        with self._lock:
            while len(self.requests) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} requests, not {count}")
                self._lock.wait(left)
            return list(self.requests[:count])

    def hang_until_released(self) -> None:
        self._released.wait(30)


def _handler(receiver: Receiver) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # a forgotten connection cannot keep a handler thread forever

        def setup(self) -> None:
            super().setup()
            receiver.opened(self.connection)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            sni = getattr(self.connection, "sni_name", None)
            receiver.record(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                     body, sni, time.monotonic()))
            if receiver.on_request is not None:
                receiver.on_request(receiver.requests[-1])
            answer = receiver.next_answer()
            if answer == HANG:
                receiver.hang_until_released()
                self.close_connection = True
                return
            if answer == CLOSE:
                self.close_connection = True
                return
            assert isinstance(answer, tuple)
            status, headers = answer
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(receiver.answer_body)))
            self.end_headers()
            self.wfile.write(receiver.answer_body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
