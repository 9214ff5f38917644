"""An unexpected error in a resolver, through the real web tier over real HTTP: the
client sees INTERNAL with the id of *its* request, and nothing of the error.

The formatter (gateway/api/errors.py) has no Flask: the web tier hands it the request
id in a context variable. The app is served in this process by Werkzeug's
single-threaded server, so one thread answers every request, as a gunicorn worker
thread answers many: a request must never name the previous one's id.

The fault is real: the number cache's table is dropped under the running app (a
damaged ``numbers.sqlite``), which ``whatsAppCheckNumbers`` reads before it asks any
actor, so no actor system is needed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from gateway.core.config import config_from_dict
from gateway.web.app import create_app
from gateway.web.hooks import REQUEST_ID_HEADER
from gateway.web.metrics import GRAPHQL_REQUESTS

CHECK = '{ whatsAppCheckNumbers(phoneNumbers: ["+14155552671"]) { onWhatsApp } }'
STATUS = '{ whatsAppStatus(session: "no spaces") { state } }'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The real app on a free loopback port (demo config: no tokens), stopped after."""
    config = config_from_dict({"storage": {"data_dir": str(tmp_path)},
                               "auth": {"required": False},
                               "transport": {"engine": "simulator"}})
    server = make_server("127.0.0.1", 0, create_app(config), threaded=False)
    thread = threading.Thread(target=server.serve_forever, name="test-web", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/graphql"
    finally:
        server.shutdown()
        thread.join(timeout=30)
        server.server_close()
    assert not thread.is_alive()


def damage_number_cache(data_dir: Path) -> None:
    with sqlite3.connect(data_dir / "numbers.sqlite") as db:
        db.execute("DROP TABLE answers")


def internal_count() -> float:
    return sum(sample.value for metric in GRAPHQL_REQUESTS.collect()
               for sample in metric.samples
               if sample.name.endswith("_total")
               and sample.labels == {"operation": "whatsAppCheckNumbers",
                                     "outcome": "INTERNAL"})


def test_an_unexpected_error_names_the_id_of_its_own_request(served: str,
                                                             tmp_path: Path) -> None:
    damage_number_cache(tmp_path)
    before = internal_count()
    with requests.Session() as http:
        first = http.post(served, json={"query": CHECK},
                          headers={REQUEST_ID_HEADER: "req-first"}, timeout=30)
        [error] = first.json()["errors"]
        assert error["extensions"] == {"code": "INTERNAL", "requestId": "req-first"}, error
        assert error["message"].endswith("req-first") and "answers" not in error["message"]
        assert first.headers[REQUEST_ID_HEADER] == "req-first"

        # The same server thread, a request without an id of its own: a new one, never
        # the previous request's.
        second = http.post(served, json={"query": CHECK}, timeout=30)
        [error] = second.json()["errors"]
        fresh = second.headers[REQUEST_ID_HEADER]
        assert fresh and fresh != "req-first"
        assert error["extensions"] == {"code": "INTERNAL", "requestId": fresh}, error

        # A public error on the same thread keeps its code (the metrics count codes of
        # the table; two INTERNALs above).
        invalid = http.post(served, json={"query": STATUS}, timeout=30).json()
        assert invalid["errors"][0]["extensions"] == {"code": "INVALID_SESSION",
                                                      "field": "session"}, invalid
    assert internal_count() - before == 2
