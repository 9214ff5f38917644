"""The fault proxy itself: each mode answers a CONNECT as documented, and stops clean."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.neonize.fault_proxy import MODES, FaultProxy, refused_port

CONNECT = b"CONNECT web.whatsapp.com:443 HTTP/1.1\r\nHost: web.whatsapp.com:443\r\n\r\n"


def _dial(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2.0)
    sock.sendall(CONNECT)
    return sock


def _recv_all(sock: socket.socket, quiet: float = 0.3) -> tuple[bytes, str]:
    """What the proxy sent, and how the stream ended: closed, reset or silent."""
    sock.settimeout(quiet)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return data, "silent"
    except ConnectionResetError:
        return data, "reset"
    return data, "closed"


def _wait(predicate: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize(("mode", "reply", "ending"), [
    ("close", b"", "closed"),
    ("http502", b"HTTP/1.1 502 Bad Gateway", "closed"),
    ("tls_hang", b"HTTP/1.1 200 Connection established\r\n\r\n", "silent"),
    ("hang", b"", "silent"),
])
def test_each_mode_answers_a_connect_as_documented(mode: str, reply: bytes, ending: str) -> None:
    with FaultProxy(mode) as proxy, _dial(proxy) as sock:
        data, how = _recv_all(sock)
        assert data.startswith(reply) and (reply or data == b"")
        assert how == ending
        assert proxy.connections == 1
        if mode in ("tls_hang", "hang"):
            sock.sendall(b"more")
            assert _wait(lambda: proxy.drained_bytes >= 4)
        if mode != "hang":
            assert _wait(lambda: proxy.requests == ["CONNECT web.whatsapp.com:443 HTTP/1.1"])
        else:
            assert proxy.requests == []


def test_ok_then_close_resets_the_tunnel_after_the_first_bytes() -> None:
    with FaultProxy("ok_then_close") as proxy, _dial(proxy) as sock:
        sock.settimeout(2.0)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"\x16\x03\x01 client hello")
        _, how = _recv_all(sock, quiet=2.0)
        assert how == "reset"


def test_stop_ends_every_thread_even_with_clients_hanging() -> None:
    before = set(threading.enumerate())
    proxy = FaultProxy("hang").start()
    clients = [_dial(proxy) for _ in range(3)]
    assert _wait(lambda: proxy.connections == 3)
    proxy.stop()
    proxy.stop()  # idempotent
    for client in clients:
        client.close()
    assert proxy.threads_alive() == []
    assert set(threading.enumerate()) <= before


def test_refused_port_has_nothing_listening() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", refused_port()), timeout=2.0).close()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        FaultProxy("teapot")
    assert set(MODES) == {"close", "http502", "ok_then_close", "tls_hang", "hang"}
