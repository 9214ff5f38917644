"""Media files survive leader failover (issue 22, item 3): real ``wagate serve``
processes on loopback with ``cluster.database_url`` on a real PostgreSQL, and one
``storage.media_dir`` both leaders share.

Leader A holds the leadership lock with a session on it; leader B is a standby. The
simulated WhatsApp service goes down, so A accepts a media message it cannot send
yet: its record and media reference wait in PostgreSQL, its file (encrypted to the
media key pair) in the shared media directory. A loses power (SIGKILL) and the service
comes back. B takes the lock and sends the file once, byte for byte, and serves it at
its ``/media`` URL: both leaders use one key pair. Before ``storage.media_dir``, the
file stayed in A's ``data_dir/media`` and B could neither send nor serve it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import media_fixtures as fx
from tests.integration.harness import Gateway, wait_for
from tests.integration.test_cluster_leases import host_config
from tests.integration.test_leader_failover import _leader_row, _placement
from tests.integration.test_media import received, sent, upload
from tests.integration.test_session_lease import pg  # noqa: F401 (the module's database)
from tests.pg import PgCluster

pytestmark = pytest.mark.integration

A, B = "alpha", "gamma"
SESSION = "s1"
TAKEOVER_DEADLINE = 60.0


def leader_config(shared: Path, url: str, host: str) -> dict[str, Any]:
    """One leader of the pair: the cluster's shared directories, media_dir among them."""
    limits = {"limits": {"per_number_per_minute": 100_000, "per_number_per_hour": 100_000,
                         "global_per_day": 100_000}}
    config = host_config(shared, url, limits, role="leader", host_name=host, sessions=1)
    config["storage"]["media_dir"] = str(shared / "media")
    return config


def test_a_file_a_dead_leader_accepted_is_sent_once_by_the_standby(
        make_gateway: Callable[..., Gateway], pg: PgCluster,  # noqa: F811
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first = make_gateway(leader_config(shared, pg.url(), A), name="alpha")
    second = make_gateway(leader_config(shared, pg.url(), B), name="gamma",
                          key_file=first.key_file)
    first.start()
    wait_for(lambda: _leader_row(pg) == (A, True), 20, 0.1, "A to take the leadership lock")
    second.start()
    first.link(SESSION)
    assert not second.connect(SESSION).errors  # the standby knows it; it starts nothing

    first.sim("drop", "--session", SESSION, "--down-for", "300")
    wait_for(lambda: (_placement(first, SESSION) or {}).get("state") != "CONNECTED", 20, 0.1,
             "the session to lose its connection")
    data = fx.pdf() + os.urandom(16)
    record = sent(upload(first, "DOCUMENT", data, "report.pdf", session=SESSION))
    media = record["media"]
    assert not [m for m in first.inbox() if m.get("sha256") == media["sha256"]]

    first.kill_everything()  # A loses power: the file stays where A put it
    second.sim("restore")
    wait_for(lambda: _leader_row(pg) == (B, True), TAKEOVER_DEADLINE, 0.05,
             "B to take the leadership lock")
    wait_for(lambda: (_placement(second, SESSION) or {}) == {"state": "CONNECTED",
                                                              "host": B},
             TAKEOVER_DEADLINE, 0.1, "the session to connect under B")

    at_recipient = received(second, media["sha256"], 60)
    out = tmp_path / "out"
    second.sim("media", at_recipient["id"], "--out", str(out))
    assert out.read_bytes() == data
    assert sum(m.get("sha256") == media["sha256"] for m in second.inbox()) == 1
    served = second.http.get(second.url + media["url"], timeout=10)
    assert served.status_code == 200 and served.content == data
