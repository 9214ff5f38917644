"""The outbox's messages survive leader failover (issue 22, item 3): real ``wagate
serve`` processes on loopback with ``cluster.database_url`` on a real PostgreSQL.

Leader A holds the leadership lock with a session on it; leader B, on the same
database, is a standby. The simulated WhatsApp service goes down for the session, so
A accepts messages it cannot send yet: they wait QUEUED in A's outbox store, which
in multi-host mode is in PostgreSQL. A loses power (SIGKILL of every process of its
run) and the service comes back. B takes the lock, its outbox opens the same store,
the session connects under B, and B sends every message A accepted, each exactly
once. Before the store was in PostgreSQL, those messages stayed in A's data_dir and
B never sent them. B need not have been told of the session: the leaders share the
session registry too (before, B's outbox failed the queue of a session B did not know
as forgotten, SESSION_FORGOTTEN, and B never started it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster_leases import host_config
from tests.integration.test_leader_failover import _leader_row, _placement
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

A, B = "alpha", "gamma"
SESSION = "s1"
PHONE = "+14155552671"
COUNT = 12
TAKEOVER_DEADLINE = 60.0


def _leaders(make_gateway: Callable[..., Gateway], shared: Path, url: str, sessions: int = 1
             ) -> tuple[Gateway, Gateway]:
    limits = {"limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                         "global_per_day": 100_000}}
    first = make_gateway(host_config(shared, url, limits, role="leader", host_name=A,
                                     sessions=sessions), name="alpha")
    second = make_gateway(host_config(shared, url, limits, role="leader", host_name=B,
                                      sessions=sessions), name="gamma", key_file=first.key_file)
    return first, second


@pytest.mark.parametrize("how", ["told", "untold", "registry_busy"])
def test_messages_a_dead_leader_accepted_are_sent_once_by_the_standby(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path, how: str) -> None:
    """``registry_busy``: the shared registry's table is locked by someone else while
    B takes over, so B cannot read it: B's outbox waits (answering LEADER_STANDBY)
    until it can. Before, it started without the session's link and failed A's queue
    as SESSION_FORGOTTEN."""
    import psycopg

    told_the_standby = how == "told"
    first, second = _leaders(make_gateway, tmp_path / "shared", pg.url(), sessions=2)
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    if not told_the_standby:
        # Another session first, logged out: A's link epochs run ahead of B's own.
        first.link("s0")
        assert not first.disconnect("s0").errors
        first.wait_state("LOGGED_OUT", "s0")
    first.link(SESSION)
    if told_the_standby:
        assert not second.connect(SESSION).errors  # the standby starts nothing

    # The service goes away: the session reconnects, and what A accepts waits QUEUED.
    first.sim("drop", "--session", SESSION, "--down-for", "300")
    wait_for(lambda: (_placement(first, SESSION) or {}).get("state") != "CONNECTED", 20, 0.1,
             "the session to lose its connection")
    texts = [f"accepted by A {n}" for n in range(COUNT)]
    for text in texts:
        result = first.send(PHONE, text, session=SESSION)
        assert not result.errors, result.errors
    assert not [m for m in first.inbox() if m["text"] in texts]  # none could be sent

    with contextlib.ExitStack() as held:
        if how == "registry_busy":
            blocker = held.enter_context(psycopg.connect(pg.dsn(), autocommit=False))
            blocker.execute("LOCK TABLE wagate_sessions IN ACCESS EXCLUSIVE MODE")
        first.kill_everything()  # A loses power: its outbox never hears of these again
        second.sim("restore")
        wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
                 "B to take the leadership lock")
        if how == "registry_busy":
            wait_for(lambda: "has not read the shared session registry" in
                     second.log_tail(400), 30, 0.2, "B to wait for the registry")
            refused = second.send(PHONE, "while the registry is busy", session=SESSION)
            assert refused.error["extensions"]["reason"] == "LEADER_STANDBY", refused.errors
            blocker.rollback()
    wait_for(lambda: (_placement(second, SESSION) or {}) == {"state": "CONNECTED",
                                                              "host": B},
             TAKEOVER_DEADLINE, 0.1, "the session to connect under B")

    def all_delivered() -> bool:
        delivered = [m["text"] for m in second.inbox()]
        return all(t in delivered for t in texts)

    wait_for(all_delivered, 60, 0.2, "every message A accepted to be sent by B")
    delivered = [m["text"] for m in second.inbox() if m["text"] in texts]
    assert sorted(delivered) == sorted(texts), delivered  # each exactly once
    if not told_the_standby:  # B knows A's logged-out session and leaves it so
        assert (_placement(second, "s0") or {}).get("state") == "LOGGED_OUT"


def test_a_send_the_database_cannot_take_is_refused_and_never_sent(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    """The store's table is locked by someone else longer than a statement may wait
    (the database is there, the leadership lock too): the send is refused with
    UNAVAILABLE, reason STORE_UNAVAILABLE, nothing of it is kept, and the next send,
    once the lock is gone, goes through."""
    import psycopg

    first, _ = _leaders(make_gateway, tmp_path / "shared", pg.url())
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    first.link(SESSION)
    assert not first.send(PHONE, "before the lock", session=SESSION).errors
    with psycopg.connect(pg.dsn(), autocommit=False) as blocker:
        blocker.execute("LOCK TABLE wagate_outbox.messages IN ACCESS EXCLUSIVE MODE")
        refused = first.send(PHONE, "while locked", session=SESSION)
        blocker.rollback()
    assert refused.error_code == "UNAVAILABLE", refused.errors
    assert refused.error["extensions"]["reason"] == "STORE_UNAVAILABLE", refused.errors
    wait_for(lambda: not first.send(PHONE, "after the lock", session=SESSION).errors, 30,
             0.5, "a send to be accepted again")
    wait_for(lambda: "after the lock" in [m["text"] for m in first.inbox()], 30, 0.2,
             "the next send to be delivered")
    texts = [m["text"] for m in first.inbox()]
    assert "while locked" not in texts and texts.count("before the lock") == 1
