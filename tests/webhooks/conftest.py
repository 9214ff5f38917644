"""Fixtures of the webhook tests: a real SQLite event table of the event log's shape,
the real endpoint store, a real httpx client, and a loop driver that waits on a
condition with a deadline."""

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
