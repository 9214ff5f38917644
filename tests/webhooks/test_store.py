"""The endpoint store on disk and in PostgreSQL (each store test runs on both backends,
``open_endpoints``): secrets sealed with the storage key, bound to their endpoint;
state survives reopening; the cursor only moves forward and a replay wins; replay by
time finds its cursor."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from actors.session.sealed_store import CorruptStore, StoreKey, WrongKey
from actors.webhooks import signing
from actors.webhooks.delivery import cursor_before, head_of
from actors.webhooks.source import Event, SqliteEventSource
from actors.webhooks.store import UnknownEndpoint
from tests.webhooks.conftest import Endpoints, EventLog


def _stored_bytes(open_endpoints: Endpoints) -> bytes:
    """Everything the backend holds of the endpoints: the files on SQLite, every
    column of every row (bytea as it is) on PostgreSQL."""
    if not open_endpoints.database_url:
        return b"".join(p.read_bytes() for p in open_endpoints.directory.iterdir())
    found = b""
    for row in open_endpoints.raw("SELECT * FROM endpoints"):
        for value in row:
            found += value if isinstance(value, bytes) else str(value).encode()
    return found


def test_secrets_are_sealed_on_disk_and_open_only_with_the_key(
        open_endpoints: Endpoints) -> None:
    secret = signing.new_secret()
    store = open_endpoints()
    hook = store.create("https://example.com/h", ("message.status",), (), "d", secret,
                        time.time()).id
    store.close()
    raw = _stored_bytes(open_endpoints)
    assert hook.encode() in raw  # the row is there: the check below looks at it
    assert secret.encode() not in raw and secret[6:].encode() not in raw
    reopened = open_endpoints()
    assert reopened.secrets(hook, time.time()) == [secret]
    assert reopened.get(hook).events == ("message.status",)
    other = open_endpoints(StoreKey(b"o" * 32, "other"))
    with pytest.raises(WrongKey):
        other.secrets(hook, time.time())


def test_a_secret_copied_onto_another_endpoint_does_not_open(
        open_endpoints: Endpoints) -> None:
    store = open_endpoints()
    a = store.create("https://a.example/", (), (), "", signing.new_secret(), 1.0).id
    b = store.create("https://b.example/", (), (), "", signing.new_secret(), 1.0).id
    open_endpoints.raw("UPDATE endpoints SET secret = (SELECT secret FROM endpoints "
                       "WHERE id = ?) WHERE id = ?", (a, b))
    with pytest.raises(CorruptStore):
        store.secrets(b, 2.0)


def test_the_endpoint_repr_holds_no_secret_and_unknown_ids_are_errors(
        open_endpoints: Endpoints) -> None:
    store = open_endpoints()
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
        open_endpoints: Endpoints) -> None:
    from actors.webhooks.declared import declared_id, sync_declared
    from gateway.core.config import WebhookEndpointConfig

    store = open_endpoints()
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


def test_the_cursor_only_moves_forward_and_a_replay_wins(open_endpoints: Endpoints) -> None:
    """``delivered`` and ``skipped`` never move a cursor back (SQLite's two-argument
    MAX, PostgreSQL's GREATEST), and a replay made while a request was out wins over
    the answer to that request."""
    store = open_endpoints()
    hook = store.create("https://a.example/", (), (), "", signing.new_secret(), 1.0,
                        cursor=5).id
    seen = store.get(hook).replays
    store.delivered(hook, 9, 204, 2.0, seen)
    store.skipped(hook, 7, seen)  # an older event's skip: no step back
    store.delivered(hook, 8, 200, 3.0, seen)
    found = store.get(hook)
    assert (found.cursor, found.last_status, found.last_delivery_at) == (9, 200, 3.0)
    store.failed(hook, 500, "HTTP 500", 4.0, 9.0)
    assert (store.get(hook).failures, store.get(hook).next_attempt_at) == (1, 9.0)
    replayed = store.set_cursor(hook, 2, 5.0)
    assert (replayed.cursor, replayed.failures, replayed.replays) == (2, 0, seen + 1)
    store.delivered(hook, 10, 204, 6.0, seen)  # read before the replay: it loses
    store.skipped(hook, 10, seen)
    assert store.get(hook).cursor == 2
    store.skipped(hook, 4, replayed.replays)
    assert store.get(hook).cursor == 4


def test_a_change_disable_and_rotation_are_kept(open_endpoints: Endpoints) -> None:
    store = open_endpoints()
    first, second = signing.new_secret(), signing.new_secret()
    hook = store.create("https://a.example/", ("x",), ("s1",), "d", first, 1.0).id
    store.update(hook, url="https://b.example/", events=("y", "z"), sessions=())
    store.set_enabled(hook, False, "by an operator", 2.0)
    store.rotate(hook, second, 3.0, overlap=10.0)
    store.close()
    again = open_endpoints()
    found = again.get(hook)
    assert (found.url, found.events, found.sessions, found.description) == (
        "https://b.example/", ("y", "z"), (), "d")
    assert (found.enabled, found.disabled_reason) == (False, "by an operator")
    assert again.secrets(hook, 12.0) == [second, first]  # both sign during the overlap
    assert again.secrets(hook, 13.0) == [second]
    assert again.set_enabled(hook, True, "", 14.0).enabled
    again.delete(hook)
    assert again.all() == []
