"""The rate windows across a leader failover, end to end (issue 22, item 3).

In multi-host mode the outbox runs on the active leader and keeps its rate windows in
PostgreSQL. Two leaders with data_dirs of their own and one database: A fills a
recipient's window and most of the day's, A is SIGKILLed, the standby B takes over
and refuses exactly what A would have refused. Each leader kept its windows in its own
data_dir before: B started with empty ones and let the burst through. Then the
windows' table is made unreachable: a send is refused as ``UNAVAILABLE`` (reason
``RATE_STATE_UNAVAILABLE``), nothing stored, and passes once the table is back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.integration.harness import Gateway, expect_error, wait_for
from tests.integration.test_cluster_leases import host_config
from tests.integration.test_leader_failover import TAKEOVER_DEADLINE, _leader_row, _placement
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

A, B = "alpha", "gamma"
PHONE = "+14155552671"
OK = {"sendWhatsAppNotification": True}
# The hour, not the minute: the takeover may take longer than what is left of a minute.
LIMITS = {"limits": {"per_number_per_minute": 2, "per_number_per_hour": 2,
                     "global_per_day": 5}}


def _rename(cluster: PgCluster, old: str, new: str) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


def test_a_standby_leader_continues_the_rate_windows_of_the_one_it_replaces(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first = make_gateway(host_config(shared, pg.url(), LIMITS, role="leader", host_name=A,
                                     sessions=1), name="alpha")
    second = make_gateway(host_config(shared, pg.url(), LIMITS, role="leader", host_name=B,
                                      sessions=1), name="gamma", key_file=first.key_file)
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    first.link("f1")
    assert not second.connect("f1").errors  # the standby is told of it; it starts nothing
    for n in range(2):
        assert first.send(PHONE, f"to the recipient {n}", session="f1").data == OK
    assert first.send("+14155550001", "another", session="f1").data == OK
    assert first.send("+14155550002", "and another", session="f1").data == OK
    on_a = expect_error(first.send(PHONE, "third", session="f1"), "RATE_LIMITED")
    assert on_a["extensions"]["scope"] == "recipient_hour"

    first.kill_everything()
    wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
             "B to take the leadership lock")
    wait_for(lambda: (_placement(second, "f1") or {}).get("state") == "CONNECTED",
             TAKEOVER_DEADLINE, 0.1, "the session to connect under B")
    assert second.health()["limiter"]["global_day_used"] == 4
    on_b = expect_error(second.send(PHONE, "third again", session="f1"), "RATE_LIMITED")
    assert on_b["extensions"]["scope"] == "recipient_hour"
    assert on_b["extensions"]["retryAfterSeconds"] <= on_a["extensions"]["retryAfterSeconds"]

    # A recipient whose windows B has not read yet: the read fails, the send is refused.
    _rename(pg, "wagate_rate_state", "wagate_rate_state_away")
    try:
        refused = expect_error(second.send("+14155550003", "while the table is away",
                                           session="f1"),
                               "UNAVAILABLE", "rate limits", "retry in")
        assert refused["extensions"]["reason"] == "RATE_STATE_UNAVAILABLE"
        assert refused["extensions"]["retryAfterSeconds"] > 0
    finally:
        _rename(pg, "wagate_rate_state_away", "wagate_rate_state")
    assert second.send("+14155550003", "the fifth of the day", session="f1").data == OK
    day = expect_error(second.send("+14155550004", "a sixth", session="f1"), "RATE_LIMITED")
    assert day["extensions"]["scope"] == "global_day"
    assert second.health()["limiter"]["global_day_used"] == 5  # the refusals took nothing
    texts = [m["text"] for m in second.inbox()]
    assert "third" not in texts and "third again" not in texts
    assert "while the table is away" not in texts
