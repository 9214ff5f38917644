"""The endpoint store on disk: secrets sealed with the storage key, bound to their
endpoint; state survives reopening; replay by time finds its cursor."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.session.sealed_store import CorruptStore, StoreKey, WrongKey
from actors.webhooks import signing
from actors.webhooks.delivery import cursor_before, head_of
from actors.webhooks.source import Event, SqliteEventSource
from actors.webhooks.store import EndpointStore, UnknownEndpoint
from tests.webhooks.conftest import KEY, EventLog


def test_secrets_are_sealed_on_disk_and_open_only_with_the_key(tmp_path: Path) -> None:
    secret = signing.new_secret()
    store = EndpointStore(tmp_path / "webhooks", KEY)
    hook = store.create("https://example.com/h", ("message.status",), (), "d", secret,
                        time.time()).id
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "webhooks").iterdir())
    assert secret.encode() not in raw and secret[6:].encode() not in raw
    reopened = EndpointStore(tmp_path / "webhooks", KEY)
    assert reopened.secrets(hook, time.time()) == [secret]
    assert reopened.get(hook).events == ("message.status",)
    reopened.close()
    other = EndpointStore(tmp_path / "webhooks", StoreKey(b"o" * 32, "other"))
    with pytest.raises(WrongKey):
        other.secrets(hook, time.time())
    other.close()


def test_a_secret_copied_onto_another_endpoint_does_not_open(tmp_path: Path) -> None:
    store = EndpointStore(tmp_path / "webhooks", KEY)
    a = store.create("https://a.example/", (), (), "", signing.new_secret(), 1.0).id
    b = store.create("https://b.example/", (), (), "", signing.new_secret(), 1.0).id
    db = sqlite3.connect(tmp_path / "webhooks" / "endpoints.sqlite3")
    with db:
        db.execute("UPDATE endpoints SET secret = (SELECT secret FROM endpoints WHERE id = ?)"
                   " WHERE id = ?", (a, b))
    db.close()
    with pytest.raises(CorruptStore):
        store.secrets(b, 2.0)
    store.close()


def test_the_endpoint_repr_holds_no_secret_and_unknown_ids_are_errors(
        store: EndpointStore) -> None:
    secret = signing.new_secret()
    hook = store.create("https://example.com/h", (), (), "", secret, 1.0)
    assert secret not in repr(hook) and secret[6:] not in repr(store.all())
    for call in (store.get, store.delete, lambda i: store.secrets(i, 1.0)):
        with pytest.raises(UnknownEndpoint):
            call("wh_missing")


def test_replay_since_a_time_starts_after_the_last_earlier_event(log: EventLog) -> None:
    for _ in range(3):
        log.add()
    source = SqliteEventSource(log.path)
    events = source.events_after(0, 10)
    assert cursor_before(source, events[1].created_at, batch=1) == 1
    assert cursor_before(source, datetime.now(UTC) + timedelta(days=1)) == 3
    assert cursor_before(source, datetime(2000, 1, 1, tzinfo=UTC)) == 0


def test_the_head_of_the_log_is_one_read_not_a_walk_through_it(log: EventLog) -> None:
    """A gateway starting on a million events walked all of them (JSON-decoding each)
    to find where new endpoints start: seconds of CPU at every start."""
    reads: list[int] = []

    class Counting(SqliteEventSource):
        def events_after(self, after_seq: int, limit: int) -> list[Event]:
            reads.append(after_seq)
            return super().events_after(after_seq, limit)

    source = Counting(log.path)
    assert head_of(source) == 0  # an empty log
    for _ in range(5):
        log.add()
    assert head_of(source) == 5
    assert reads == []  # no event row was read


def test_declared_endpoints_follow_the_file_and_keep_their_cursor(
        store: EndpointStore) -> None:
    from actors.webhooks.declared import declared_id, sync_declared
    from gateway.core.config import WebhookEndpointConfig

    first, second = signing.new_secret(), signing.new_secret()
    item = WebhookEndpointConfig(url="https://a.example/h", secret_env="S", events=("x",))
    api = store.create("https://api.example/", (), (), "", signing.new_secret(), 1.0).id
    assert sync_declared(store, [item], {"S": first}, 1.0, head=7) == []
    hook = declared_id(item.url)
    assert store.get(hook).cursor == 7 and store.secrets(hook, 1.0) == [first]
    store.skipped(hook, 9, store.get(hook).replays)
    changed = WebhookEndpointConfig(url=item.url, secret_env="S", events=("y",))
    assert sync_declared(store, [changed], {"S": second}, 2.0, head=50) == []
    assert store.get(hook).cursor == 9 and store.get(hook).events == ("y",)
    assert store.secrets(hook, 2.0) == [second]
    problems = sync_declared(store, [changed], {"S": "nonsense"}, 3.0, head=50)
    assert "variable S" in problems[0] and "nonsense" not in problems[0]
    sync_declared(store, [], {}, 4.0, head=50)
    assert [e.id for e in store.all()] == [api]
