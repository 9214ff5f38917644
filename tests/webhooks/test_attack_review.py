"""Regressions of issue #14's webhooks, found by an attack review: each test failed
before its fix and names the defect it guards against."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.webhooks import schedule, signing
from actors.webhooks.client import make_client, post
from actors.webhooks.commands import Command, CommandRefused, run
from actors.webhooks.safety import Target, UnsafeTarget, target
from actors.webhooks.store import EndpointStore
from tests.webhooks.conftest import EventLog, MakeDeliverer, drive
from tests.webhooks.receiver import Receiver


def test_a_retry_after_of_unicode_digits_is_read_or_ignored_never_raises() -> None:
    """failed on main (fixed): DEFECT retry-after-unicode-digit. ``retry_after_seconds`` takes
    ``str.isdigit()`` as "delta-seconds", but isdigit() is true for '²' or '①', which
    float() refuses: ValueError escapes the pure function (RFC 9110 delta-seconds is
    ASCII 1*DIGIT only)."""
    now = datetime.now(UTC)
    for hostile in ("²", "①", "10²"):
        assert schedule.retry_after_seconds(hostile, now) is None


def test_a_hostile_retry_after_still_backs_the_endpoint_off(
        log: EventLog, store: EndpointStore, deliverer: MakeDeliverer) -> None:
    """failed on main (fixed): DEFECT retry-after-unicode-digit. An endpoint answering
    ``503`` with ``Retry-After: ²`` makes ``_deliver`` raise before ``store.failed``: the
    failure is not recorded, ``next_attempt_at`` does not move, so the endpoint is due at
    once again: the gateway re-sends in a tight loop, never walks the schedule and is
    never disabled (a receiver can make the gateway hammer it, or a third party it
    fronts, for ever)."""
    log.add()
    with Receiver(default=(503, {"Retry-After": "²"})) as receiver:
        hook = store.create(receiver.url(), (), (), "", signing.new_secret(),
                            time.time()).id
        loop = deliverer(retry_scale=100.0)  # the first wait: 500 s (5 s x 100)
        loop.run_endpoint(hook)
        receiver.wait_for(1)
    after = store.get(hook)
    assert after.failures == 1
    assert after.next_attempt_at > time.time() + 100


@contextmanager
def trickling_server(gap: float, header_bytes: int) -> Iterator[tuple[int, list[int]]]:
    """A raw server on 127.0.0.1 that answers one request with a 200 whose header
    block arrives one byte every ``gap`` seconds (a slow-loris answer); it records how
    many bytes it could send before the client hung up."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent: list[int] = []
    stop = threading.Event()
    answer = (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * header_bytes
              + b"\r\ncontent-length: 0\r\n\r\n")

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            count = 0
            try:
                for byte in answer:
                    if stop.wait(gap):
                        break
                    conn.sendall(bytes([byte]))
                    count += 1
            except OSError:
                pass
            sent.append(count)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], sent
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
        assert not thread.is_alive()


def test_an_answer_whose_headers_trickle_in_is_cut_at_the_total_timeout() -> None:
    """failed on main (fixed): DEFECT header-slow-loris. ``webhooks.timeout_seconds`` is
    documented as "for the whole request, from connect to the last byte", but ``post``
    only bounds each socket read (httpx's read timeout) and the body: an endpoint that
    sends its status line and headers one byte just inside each read timeout holds the
    request (and a worker thread; ``ConcurrentDeliverer.close`` waits on it) for
    header-size x timeout, hours with the defaults (h11 accepts ~16 KiB of headers).
    Here: timeout 0.5 s, a byte every 0.1 s, ~60 bytes of headers (~6 s): the attempt
    must end without an answer; on main it waits for every byte and reports 200."""
    client = make_client(0.5, 0.5)
    try:
        with trickling_server(0.1, 20) as (port, sent):
            where = Target("http", "127.0.0.1", port, "/hook", "127.0.0.1")
            attempt = post(client, where, {}, b"{}", timeout=0.5, max_bytes=64)
        assert attempt.status is None, attempt
        assert sent and sent[0] < 40  # the client hung up long before the headers ended
    finally:
        client.close()


@pytest.mark.parametrize("address", [
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix (RFC 6052) of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 (RFC 3056) of 169.254.169.254
    "::ffff:0:7f00:1",  # IPv4-translated (RFC 2765) 127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible (deprecated) 169.254.169.254
])
def test_ipv6_forms_embedding_a_private_ipv4_are_refused(address: str) -> None:
    """failed on main (fixed): DEFECT ipv6-embedded-ipv4. ``check_address`` unwraps only
    IPv4-mapped (::ffff:a.b.c.d); Python calls the NAT64, 6to4, IPv4-translated and
    IPv4-compatible forms "global", so a name resolving to e.g. 64:ff9b::a9fe:a9fe passes
    and, on an IPv6-only host behind NAT64 (cloud IPv6-only subnets), reaches the
    metadata service or the private IPv4 network."""
    with pytest.raises(UnsafeTarget, match=r"webhooks\.allow_insecure"):
        target("https://hooks.example.com/", (), lambda host, port: [address])


def test_a_replay_after_a_cursor_beyond_the_log_head_does_not_mute_the_endpoint(
        log: EventLog, deliverer: MakeDeliverer) -> None:
    """failed on main (fixed): DEFECT replay-beyond-head. ``replayWebhooks(id, after: N)`` stores
    any N as the endpoint's cursor; with N past the log's head (a typo, a seq from
    another gateway's log, 2147483647) every event written afterwards has a smaller seq
    and is skipped: the endpoint is silently muted, shown enabled and healthy, until
    the log's seq passes N. Either refuse such a cursor (WEBHOOK_INVALID, naming the
    head) or clamp it to the head; here: the next event must arrive."""
    log.add()
    loop = deliverer()
    with Receiver() as receiver:
        hook = run(loop, Command("create", {"url": receiver.url()}))["webhook"]["id"]
        try:
            run(loop, Command("replay", {"id": hook, "after": 2_147_483_647}))
        except CommandRefused as refused:
            assert refused.code == "WEBHOOK_INVALID"
        fresh = log.add()
        drive(loop, lambda: bool(receiver.requests), deadline=10.0)
        assert receiver.requests[-1].headers["webhook-id"] == fresh


def test_a_kept_alive_tls_connection_is_not_reused_for_another_name(tmp_path: Path) -> None:
    """failed on main (fixed): DEFECT tls-pool-reuse-across-names. ``post`` pins the url to the
    checked address and passes the name only as Host and SNI, so httpx's pool keys
    connections by address:port. A request to ``b.invalid`` that resolves to the same
    address as an earlier ``a.invalid`` rides the kept-alive connection whose
    certificate was verified for ``a.invalid`` only: b's certificate is never checked.
    With DNS for b's name spoofed to a server holding any valid certificate that has
    been (or can be made) a webhook target, b's signed events go there. Fix: a pool per
    (name, address, port) -- e.g. one httpx.Client per endpoint, or a custom transport
    keyed by the name -- or ``Connection: close`` for https."""
    from tests.webhooks.test_pinning import contexts

    server, client_context = contexts(tmp_path, "a.invalid")  # the certificate: a only
    client = make_client(2.0, 2.0, verify=client_context)
    try:
        with Receiver(tls=server) as receiver:
            a = Target("https", "a.invalid", receiver.port, "/hook", "127.0.0.1")
            b = Target("https", "b.invalid", receiver.port, "/hook", "127.0.0.1")
            first = post(client, a, {}, b"{}", timeout=2.0, max_bytes=64)
            second = post(client, b, {}, b"{}", timeout=2.0, max_bytes=64)
        assert first.status == 200
        assert second.status is None, (second, [r.sni for r in receiver.requests])
    finally:
        client.close()
