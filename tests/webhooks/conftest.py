"""Fixtures of the webhook tests: a real SQLite event table of the event log's shape,
the real endpoint store (``open_endpoints``: on SQLite and on a real PostgreSQL, as
``tests/conftest.py``'s ``store_backend``), a real httpx client, and a loop driver that
waits on a condition with a deadline."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from actors.session.sealed_store import StoreKey
from actors.webhooks.client import make_client
from actors.webhooks.delivery import Deliverer
from actors.webhooks.source import SqliteEventSource
from actors.webhooks.store import EndpointStore
from gateway.core.config import WebhooksConfig

CONFIG = WebhooksConfig(allow_insecure=("127.0.0.0/8",), retry_scale=0.0002,
                        jitter_fraction=0.1, connect_timeout_seconds=2.0,
                        timeout_seconds=2.0)
KEY = StoreKey(b"k" * 32, "test")


class EventLog:
    """The event log's columns in a table of the test's own database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                       "id TEXT UNIQUE NOT NULL, type TEXT NOT NULL, session TEXT, "
                       "created_at REAL NOT NULL, data TEXT NOT NULL)")
        db.close()

    def add(self, event_type: str = "message.status", session: str = "main",
            **data: object) -> str:
        event_id = "evt_" + uuid.uuid4().hex
        db = sqlite3.connect(self.path)
        with db:
            db.execute("INSERT INTO events (id, type, session, created_at, data) "
                       "VALUES (?,?,?,?,?)",
                       (event_id, event_type, session, time.time(), json.dumps(data)))
        db.close()
        return event_id


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path / "events.sqlite3")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EndpointStore]:
    opened = EndpointStore(tmp_path / "webhooks", KEY)
    yield opened
    opened.close()


class Endpoints:
    """Opens ``EndpointStore``s of one test on its backend (``database_url`` empty:
    SQLite in ``directory``): every call opens the same store (a reopen is a restart,
    or another leader). ``raw`` runs SQL on the backend past the store, as an attacker
    with the file or the database would."""

    def __init__(self, directory: Path, database_url: str) -> None:
        self.directory, self.database_url = directory, database_url
        self.opened: list[EndpointStore] = []

    def __call__(self, key: StoreKey | None = KEY, **kwargs: object) -> EndpointStore:
        store = EndpointStore(self.directory, key, database_url=self.database_url,
                              **kwargs)  # type: ignore[arg-type]
        self.opened.append(store)
        return store

    def raw(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """``sql`` (``?`` placeholders) on the endpoints table, committed; its rows."""
        if not self.database_url:
            db = sqlite3.connect(self.directory / "endpoints.sqlite3")
            try:
                with db:
                    return db.execute(sql, params).fetchall()
            finally:
                db.close()
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True,
                             options="-c search_path=wagate_outbox") as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture
def open_endpoints(tmp_path: Path, store_backend: str) -> Iterator[Endpoints]:
    """``Endpoints`` on each backend in turn (SQLite, then a fresh PostgreSQL database);
    every store it opened is closed at the end (a PostgreSQL one has a thread)."""
    opener = Endpoints(tmp_path / "webhooks", store_backend)
    yield opener
    opener.close()


MakeDeliverer = Callable[..., Deliverer]


@pytest.fixture
def deliverer(log: EventLog, store: EndpointStore) -> Iterator[MakeDeliverer]:
    clients = []

    def make(verify: object = True, resolver: object = None, **changes: object
             ) -> Deliverer:
        config = replace(CONFIG, **changes)  # type: ignore[arg-type]
        client = make_client(config.connect_timeout_seconds, config.timeout_seconds,
                             verify=verify)  # type: ignore[arg-type]
        clients.append(client)
        extra = {"resolver": resolver} if resolver is not None else {}
        return Deliverer(store, SqliteEventSource(log.path), client, config, time.time,
                         **extra)  # type: ignore[arg-type]

    yield make
    for client in clients:
        client.close()


def drive(deliverer: Deliverer, done: Callable[[], bool], deadline: float = 20.0) -> None:
    """Run the loop as the actor does (a pass, then wait until the next endpoint is due,
    bounded) until ``done()`` holds; fail at the deadline."""
    end = time.monotonic() + deadline
    while not done():
        if time.monotonic() > end:
            raise AssertionError("the condition did not hold before the deadline")
        deliverer.run_due()
        due = deliverer.next_due()
        wait = 0.01 if due is None else min(max(due - time.time(), 0.0), 0.05)
        time.sleep(wait)  # the actor's wakeupAfter; the condition is what is waited on
