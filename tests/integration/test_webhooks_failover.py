"""Webhooks in multi-host mode with leases (issue 22, item 3): real ``wagate serve``
leaders on loopback, one real PostgreSQL, a real receiver.

The outbox's event log is in PostgreSQL there. Leader A holds the leadership lock,
leader B is a standby; both declare the same endpoint. Only the active leader
delivers: every event reaches the receiver once (a standby delivering too would send
each twice). A is SIGKILLed; B takes over and delivers the events made under it.
Before, each leader's webhook worker read the event log file in its own data_dir,
which nothing writes in this mode: nothing was ever delivered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.webhooks import signing
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster_leases import host_config
from tests.integration.test_leader_failover import _leader_row, _placement
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.integration.test_webhooks import pulled_events
from tests.pg import PgCluster
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.integration

A, B = "alpha", "gamma"
SESSION = "s1"
PHONE = "+14155552671"
SECRET_ENV = "WAGATE_TEST_WEBHOOK_SECRET"


def _leaders(make_gateway: Callable[..., Gateway], shared: Path, url: str, hook: str
             ) -> tuple[Gateway, Gateway]:
    extra = {"webhooks": {"allow_insecure": ["127.0.0.0/8"], "retry_scale": 0.001}}
    first = make_gateway(host_config(shared, url, extra, role="leader", host_name=A,
                                     sessions=1), name="alpha")
    second = make_gateway(host_config(shared, url, extra, role="leader", host_name=B,
                                      sessions=1), name="gamma", key_file=first.key_file)
    for gateway in (first, second):
        with gateway.config_path.open("a", encoding="utf-8") as config:
            config.write(f'\n[[webhooks.endpoints]]\nurl = "{hook}"\n'
                         f'secret_env = "{SECRET_ENV}"\n')
    return first, second


def _delivered(receiver: Receiver) -> Counter[str]:
    with receiver._lock:
        return Counter(r.headers["webhook-id"] for r in receiver.requests)


def _log_delivered(gateway: Gateway, receiver: Receiver, sent: int) -> bool:
    """Every event of the log (as ``gateway`` reads it) at the receiver, the log
    holding the SENT events of at least ``sent`` messages."""
    logged = pulled_events(gateway)
    done = sum(e["type"] == "message.status" and e["data"]["state"] == "SENT"  # type: ignore[index]
               for e in logged)
    return done >= sent and {str(e["id"]) for e in logged} <= set(_delivered(receiver))


def test_only_the_active_leader_delivers_and_the_standby_takes_over(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, signing.new_secret())
    with Receiver() as receiver:
        first, second = _leaders(make_gateway, tmp_path / "shared", pg.url(),
                                 receiver.url())
        first.start()
        wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the lock")
        second.start()
        first.link(SESSION)
        for n in range(3):
            assert not first.send(PHONE, f"under A {n}", session=SESSION).errors
        wait_for(lambda: _log_delivered(first, receiver, 3), 30, 0.2,
                 "A's event log at the receiver")
        standby = second.gql("{ webhooks { id } }")
        assert standby.error_code == "UNAVAILABLE", standby.errors
        assert standby.error["extensions"]["reason"] == "LEADER_STANDBY"

        first.kill_everything()
        wait_for(lambda: _leader_row(pg) == (B, True), 60, 0.05, "B to take the lock")
        wait_for(lambda: (_placement(second, SESSION) or {}) == {"state": "CONNECTED",
                                                                  "host": B},
                 60, 0.1, "the session to connect under B")
        for n in range(2):
            assert not second.send(PHONE, f"under B {n}", session=SESSION).errors
        wait_for(lambda: _log_delivered(second, receiver, 5), 30, 0.2,
                 "the whole log, B's events too, at the receiver")
        twice = {event: n for event, n in _delivered(receiver).items() if n > 1}
        assert not twice, twice  # one leader delivered at a time
