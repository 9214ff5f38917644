"""whatsAppEvents through the real Flask app and resolvers, over a real event log in
SQLite (the FakeBridge answers ListEvents with the outbox's own paging function)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.messages import EventPage, ListEvents, Ok
from actors.outbox import events as ev
from actors.outbox.store import MessageStore
from tests.unit.web_helpers import Web, add_token, codes, web, web_config

EVENTS = ("query($a: String, $t: [EventType!], $s: String, $f: Int) { "
          "whatsAppEvents(after: $a, types: $t, session: $s, first: $f) { "
          "edges { cursor node { id type session timestamp data } } "
          "pageInfo { hasNextPage endCursor } } }")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Web, MessageStore]]:
    store = MessageStore(tmp_path / "outbox")

    def answer(request: ListEvents) -> Ok:
        found, more = ev.page_of_events(store.db, request.after_seq, types=request.types,
                                        sessions=request.sessions, first=request.first)
        return Ok(EventPage(tuple(found), more, ev.last_seq(store.db)))

    config = web_config(tmp_path)
    for w in web(config):
        w.bridge.handlers[ListEvents] = answer
        yield w, store
    store.close()


def write(store: MessageStore, count: int) -> list[ev.Event]:
    written = []
    for n in range(count):
        kind = ev.SESSION_STATUS if n % 3 == 0 else ev.MESSAGE_STATUS
        written.append(ev.append_event(store.db, kind, ("a", "b")[n % 2], {"n": n},
                                       1_767_225_600.0 + n))
    return written


def page_all(w: Web, token: str, **variables: Any) -> list[dict[str, Any]]:
    nodes, after = [], None
    for _ in range(100):
        result = w.gql(EVENTS, {**variables, "a": after}, token)
        assert not result.get("errors"), result
        connection = result["data"]["whatsAppEvents"]
        nodes += [edge["node"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            return nodes
        after = connection["pageInfo"]["endCursor"]
    raise AssertionError("paging did not end")


def test_paging_from_the_start_gets_every_event_once_in_order(
        site: tuple[Web, MessageStore]) -> None:
    w, store = site
    token = add_token(w.config, "app", "sender")
    written = write(store, 23)
    nodes = page_all(w, token, f=5)
    assert [n["id"] for n in nodes] == [e.id for e in written]
    assert nodes[1] == {"id": written[1].id, "type": "message.status", "session": "b",
                        "timestamp": "2026-01-01T00:00:01.000000Z", "data": {"n": 1}}
    # A consumer that comes back later resumes where it stopped: only the new ones.
    last = w.gql(EVENTS, {"f": 500}, token)["data"]["whatsAppEvents"]["edges"][-1]["cursor"]
    newer = write(store, 2)
    again = w.gql(EVENTS, {"a": last}, token)["data"]["whatsAppEvents"]
    assert [e["node"]["id"] for e in again["edges"]] == [e.id for e in newer]
    empty = w.gql(EVENTS, {"a": again["pageInfo"]["endCursor"]}, token)["data"]
    assert empty["whatsAppEvents"] == {"edges": [], "pageInfo": {"hasNextPage": False,
                                                                 "endCursor": None}}


def test_filters_by_type_and_session(site: tuple[Web, MessageStore]) -> None:
    w, store = site
    token = add_token(w.config, "ops", "operator")
    written = write(store, 12)
    nodes = page_all(w, token, t=["SESSION_STATUS"], s="a", f=2)
    assert [n["id"] for n in nodes] == [e.id for e in written
                                        if e.type == ev.SESSION_STATUS and e.session == "a"]


def test_a_session_limited_token_sees_only_its_sessions(
        site: tuple[Web, MessageStore]) -> None:
    w, store = site
    token = add_token(w.config, "shop", "sender", sessions=("a",))
    written = write(store, 10)
    assert [n["id"] for n in page_all(w, token)] == [e.id for e in written if e.session == "a"]
    assert codes(w.gql(EVENTS, {"s": "b"}, token)) == ["FORBIDDEN"]
    assert w.bridge.asked_of(ListEvents)[-1].sessions == ("a",)


@pytest.mark.parametrize("role, allowed", [("admin", True), ("operator", True),
                                           ("sender", True), ("viewer", False)])
def test_roles(site: tuple[Web, MessageStore], role: str, allowed: bool) -> None:
    w, _ = site
    result = w.gql(EVENTS, {}, add_token(w.config, "t", role))
    assert codes(result) == ([] if allowed else ["FORBIDDEN"])


@pytest.mark.parametrize("variables", [
    {"f": 0}, {"f": -1}, {"f": 501}, {"f": 2**31 - 1},
    {"a": "not-a-cursor"}, {"a": "bTphYmM"},  # "m:abc": a message cursor is not one
    {"a": "ZTotMQ"},  # "e:-1"
    {"s": "a/b"},
])
def test_bad_arguments_are_refused_before_the_outbox_is_asked(
        site: tuple[Web, MessageStore], variables: dict[str, Any]) -> None:
    w, _ = site
    result = w.gql(EVENTS, variables, add_token(w.config, "t", "admin"))
    assert codes(result) in (["GRAPHQL_VALIDATION_FAILED"], ["INVALID_SESSION"])
    assert w.bridge.asked_of(ListEvents) == []
