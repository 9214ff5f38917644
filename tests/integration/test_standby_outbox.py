"""Only the active leader's outbox takes sends (issue 22, item 3): real ``wagate serve``
processes on loopback with ``cluster.database_url`` on a real PostgreSQL.

The leaders share the message store (PostgreSQL), and only the active leader's outbox
opens it: a standby's outbox waits for the leadership lock before it starts. Meanwhile
the standby's supervisor answers every request for the outbox, sends and reads alike,
with ``UNAVAILABLE``, ``reason: LEADER_STANDBY``, which tells the caller to use the
active leader (before, it answered "the message store is starting", which said
nothing of where to go).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from actors.outbox.db import STORE_RETRY_SECONDS
from tests.integration.harness import Gateway, GraphQLResult, expect_error, wait_for
from tests.integration.test_leader_failover import (
    TAKEOVER_DEADLINE,
    _leader_row,
    _placement,
)
from tests.integration.test_leader_step_down import _end_lock_connection, _events, _leaders
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

A, B = "alpha", "gamma"
PHONE = "+14155552671"
OK = {"sendWhatsAppNotification": True}
MESSAGES = "query($s: String) { whatsAppMessages(session: $s) { edges { cursor } } }"


def _refused_as_standby(result: GraphQLResult) -> None:
    error = expect_error(result, "UNAVAILABLE", "standby", "active leader")
    assert error["extensions"]["reason"] == "LEADER_STANDBY", error


def _delivered_once(inbox: Gateway, text: str) -> None:
    wait_for(lambda: [m["text"] for m in inbox.inbox()].count(text) == 1, 30, 0.2,
             f"{text!r} to be delivered once")
    assert [m["text"] for m in inbox.inbox()].count(text) == 1


def _accepts_under(gw: Gateway, host: str, session: str, text: str) -> None:
    """``session`` connects under ``gw`` on ``host``; a send through ``gw`` is accepted
    and delivered once."""
    wait_for(lambda: (_placement(gw, session) or {}) == {"state": "CONNECTED", "host": host},
             TAKEOVER_DEADLINE, 0.1, f"{session} to connect under {host}")

    def accepted() -> bool:
        result = gw.send(PHONE, text, session=session)
        if result.data == OK:
            return True
        # The session may connect before the new leader's outbox has the store: that
        # waits for the old leader's outbox to let go of it, and tries again every
        # STORE_RETRY_SECONDS. Until then a send is refused as "starting", which
        # writes nothing and asks the caller to retry (as this does).
        assert result.error_code == "UNAVAILABLE", result
        assert "the message store is starting" in result.errors[0]["message"], result
        return False

    wait_for(accepted, STORE_RETRY_SECONDS + TAKEOVER_DEADLINE, 0.5,
             f"a send through {host} accepted")
    _delivered_once(gw, text)


def test_a_standby_refuses_sends_and_takes_them_once_the_active_leader_is_killed(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    first, second = _leaders(make_gateway, tmp_path / "shared", pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    first.link("k1")
    assert not second.connect("k1").errors  # the standby knows it; it starts nothing
    assert first.send(PHONE, "through the active leader", session="k1").data == OK

    _refused_as_standby(second.send(PHONE, "through the standby", session="k1"))
    _refused_as_standby(second.gql(MESSAGES, {"s": "k1"}))  # the store is the active's
    _delivered_once(first, "through the active leader")

    first.kill_everything()
    wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
             "B to take the leadership lock")
    _accepts_under(second, B, "k1", "through the new active leader")

    # A again, as a standby now: it knows k1 as paired.
    first.start()
    wait_for(lambda: (first.status("k1").get("lastError") or {}).get("code")
             == "LEADER_STANDBY", TAKEOVER_DEADLINE, 0.1, "A to wait as a standby")
    _refused_as_standby(first.send(PHONE, "through the restarted standby", session="k1"))
    assert _leader_row(pg) == (B, True)
    texts = [m["text"] for m in second.inbox()]
    assert "through the standby" not in texts
    assert "through the restarted standby" not in texts


def test_a_leader_that_steps_down_refuses_sends_and_the_new_one_takes_them(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    first, second = _leaders(make_gateway, tmp_path / "shared", pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    first.link("k2")
    assert not second.connect("k2").errors
    assert first.send(PHONE, "to A before", session="k2").data == OK

    _end_lock_connection(pg, A)
    wait_for(lambda: _events(first, "leader.standby"), TAKEOVER_DEADLINE, 0.1,
             "A to step down")
    _refused_as_standby(first.send(PHONE, "to A after", session="k2"))
    _accepts_under(second, B, "k2", "to B after")
    _refused_as_standby(first.send(PHONE, "to A at the end", session="k2"))
    assert _leader_row(pg) == (B, True)
    texts = [m["text"] for m in second.inbox()]
    assert "to A after" not in texts and "to A at the end" not in texts


def _restart_outbox(gw: Gateway) -> None:
    """SIGKILL ``gw``'s outbox process and wait for the supervisor's new one."""
    old = gw.health()["processes"]["outbox"]
    gw.signal_process(old, signal.SIGKILL)
    wait_for(lambda: gw.health().get("processes", {}).get("outbox") not in (None, old),
             30, 0.1, "a new outbox process")


def test_a_restarted_outbox_is_told_again_whether_its_leader_is_active(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """An outbox the supervisor starts again after a crash, long after the lock was
    taken: the active leader's new outbox takes sends, the standby's refuses them."""
    first, second = _leaders(make_gateway, tmp_path / "shared", pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    first.link("k3")
    assert not second.connect("k3").errors
    _restart_outbox(first)
    _restart_outbox(second)
    _accepts_under(first, A, "k3", "to the active leader's new outbox")
    _refused_as_standby(second.send(PHONE, "to the standby's new outbox", session="k3"))
    assert "to the standby's new outbox" not in [m["text"] for m in first.inbox()]
