"""Kept-alive delivery connections (``client.Channels``): one connection per endpoint
name is reused, never across names (a TLS connection verified for one name must not
carry another's events), and the shared deadline thread cuts a hung request without
ever cutting the next request's connection."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from actors.webhooks.client import Channels, post
from actors.webhooks.delivery import Deliverer
from actors.webhooks.safety import Target
from actors.webhooks.source import Event, SqliteEventSource
from actors.webhooks.store import EndpointStore
from tests.webhooks.conftest import CONFIG, KEY, EventLog
from tests.webhooks.receiver import HANG, Receiver
from tests.webhooks.test_delivery import endpoint


def _target(receiver: Receiver, host: str = "127.0.0.1", scheme: str = "http") -> Target:
    return Target(scheme, host, receiver.port, "/hook", "127.0.0.1")


def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wagate-webhook-watchdog"]


def test_requests_to_one_name_share_one_connection() -> None:
    channels = Channels(2.0, 2.0)
    try:
        with Receiver() as receiver:
            where = _target(receiver)
            statuses = [post(channels.get(where), where, {}, b"{}", timeout=2.0,
                             max_bytes=64).status for _ in range(5)]
            assert statuses == [200] * 5
            assert receiver.connections_opened == 1
    finally:
        channels.close()
    assert _watchdogs() == []


def test_a_kept_alive_tls_connection_is_not_reused_for_another_name(tmp_path: Path) -> None:
    """The channel of ``a.invalid`` holds a connection verified for a; ``b.invalid``
    at the same address gets a channel (and a TLS handshake) of its own, and the
    certificate, valid for a only, is refused."""
    from tests.webhooks.test_pinning import contexts

    server, client_context = contexts(tmp_path, "a.invalid")
    channels = Channels(2.0, 2.0, verify=client_context)
    try:
        with Receiver(tls=server) as receiver:
            a, b = _target(receiver, "a.invalid", "https"), _target(receiver, "b.invalid", "https")
            first = post(channels.get(a), a, {}, b"{}", timeout=2.0, max_bytes=64)
            second = post(channels.get(b), b, {}, b"{}", timeout=2.0, max_bytes=64)
            again = post(channels.get(a), a, {}, b"{}", timeout=2.0, max_bytes=64)
        assert (first.status, second.status, again.status) == (200, None, 200)
        assert [r.sni for r in receiver.requests] == ["a.invalid", "a.invalid"]
    finally:
        channels.close()


def test_a_hung_request_is_cut_and_the_next_connection_is_left_alone() -> None:
    """The deadline thread cuts the hung request; a request answered before its
    deadline is never cut afterwards (its watchdog is disarmed), so the kept-alive
    connection survives past the old deadline and carries the next request."""
    channels = Channels(0.5, 0.5)
    try:
        with Receiver(script=[HANG]) as receiver:
            where = _target(receiver)
            hung = post(channels.get(where), where, {}, b"{}", timeout=0.5, max_bytes=64)
            assert (hung.status, hung.error) == (None, "timed out")
            answered = post(channels.get(where), where, {}, b"{}", timeout=0.5, max_bytes=64)
            opened = receiver.connections_opened
            time.sleep(1.0)  # the condition is the time itself: twice the old deadline
            later = post(channels.get(where), where, {}, b"{}", timeout=0.5, max_bytes=64)
            assert (answered.status, later.status) == (200, 200)
            assert receiver.connections_opened == opened  # the same connection
    finally:
        channels.close()
    assert _watchdogs() == []


def test_a_turn_reads_the_log_once_per_batch_not_once_per_event(tmp_path: Path) -> None:
    """Reading ``batch_events`` rows again for every request cost more than the request:
    a turn of 20 events reads the log once (and once more to find it drained)."""
    log = EventLog(tmp_path / "events.sqlite3")
    for n in range(20):
        log.add(n=n)
    reads: list[int] = []

    class Counting(SqliteEventSource):
        def events_after(self, after_seq: int, limit: int) -> list[Event]:
            reads.append(after_seq)
            return super().events_after(after_seq, limit)

    store = EndpointStore(tmp_path / "webhooks", KEY, durable=False)
    channels = Channels(2.0, 2.0)
    try:
        with Receiver() as receiver:
            endpoint_id, _ = endpoint(store, receiver.url())
            deliverer = Deliverer(store, Counting(log.path), channels, CONFIG, time.time)
            assert deliverer.run_endpoint(endpoint_id) == 20
            assert reads == [0, 20]
        assert len(receiver.requests) == 20
        assert store.get(endpoint_id).cursor == 20
    finally:
        channels.close()
        store.close()
