"""The whole-request deadline of ``client.post``: what the attempt reports when the
watchdog cuts it, and that no watchdog thread outlives its request."""

from __future__ import annotations

import threading

from actors.webhooks.client import make_client, post
from actors.webhooks.safety import Target
from tests.webhooks.receiver import HANG, Receiver
from tests.webhooks.test_attack_review import trickling_server


def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wagate-webhook-watchdog"]


def test_a_cut_request_is_reported_as_timed_out_and_leaves_no_watchdog() -> None:
    client = make_client(0.5, 0.5)
    try:
        with trickling_server(0.1, 20) as (port, _):
            where = Target("http", "127.0.0.1", port, "/hook", "127.0.0.1")
            attempt = post(client, where, {}, b"{}", timeout=0.5, max_bytes=64)
        assert (attempt.status, attempt.error) == (None, "timed out")
        assert _watchdogs() == []
    finally:
        client.close()


def test_answered_and_hung_requests_leave_no_watchdog() -> None:
    client = make_client(1.0, 1.0)
    try:
        with Receiver(script=[(200, {}), HANG]) as receiver:
            where = Target("http", "127.0.0.1", receiver.port, "/hook", "127.0.0.1")
            answered = post(client, where, {}, b"{}", timeout=1.0, max_bytes=64)
            assert answered.status == 200 and _watchdogs() == []
            hung = post(client, where, {}, b"{}", timeout=0.5, max_bytes=64)
            assert hung.status is None and _watchdogs() == []
    finally:
        client.close()
