"""whatsAppMessageChart: the hourly counts of message.status events by state, from the
pure query (actors/outbox/events.py) on a real SQLite log and a real PostgreSQL one, and
through the real Flask app and resolvers (the FakeBridge answers with the outbox's own
chart function)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.messages import ChartMessageStates, Ok
from actors.outbox import events as ev
from actors.outbox.db import Db
from actors.outbox.store import MessageStore
from tests.unit.web_helpers import Web, add_token, codes, web, web_config

NOW = 1_767_225_600.0 + 5 * 3600 + 1800  # 2026-01-01T05:30:00Z
CHART = ("query($h: Int, $s: String) { whatsAppMessageChart(hours: $h, session: $s) { "
         "start sent delivered read failed } }")


@pytest.fixture
def store(tmp_path: Path, open_store: Callable[..., MessageStore]) -> Iterator[MessageStore]:
    """The outbox store on the test's backend (tests/conftest.py: SQLite and PostgreSQL)."""
    store = open_store(tmp_path / "outbox")
    yield store
    store.close()


def status(db: Db, state: str, at: float, session: str = "a") -> None:
    ev.append_event(db, ev.MESSAGE_STATUS, session, {"message_id": "m", "state": state}, at)


def test_an_empty_log_gives_every_hour_as_zeros(store: MessageStore) -> None:
    buckets = ev.message_state_chart(store.db, NOW, 24, None)
    assert len(buckets) == 24
    assert buckets[-1].start == NOW - 1800  # the current hour, started at 05:00
    assert [b.start for b in buckets] == [NOW - 1800 - 3600 * (23 - n) for n in range(24)]
    assert all((b.sent, b.delivered, b.read, b.failed) == (0, 0, 0, 0) for b in buckets)


def test_events_are_counted_in_their_hour_by_state(store: MessageStore) -> None:
    db = store.db
    status(db, "QUEUED", NOW - 10)  # not a charted state
    status(db, "SENT", NOW - 10)
    status(db, "SENT", NOW - 1800)  # the first second of the current hour
    status(db, "DELIVERED", NOW - 1801)  # the last second of the hour before
    status(db, "READ", NOW - 3 * 3600)
    status(db, "FAILED", NOW - 3 * 3600, session="b")
    status(db, "EXPIRED", NOW - 3 * 3600)
    ev.append_event(db, ev.SESSION_STATUS, "a", {"state": "SENT"}, NOW)  # not a message
    status(db, "SENT", NOW - 24 * 3600)  # before the window
    status(db, "SENT", NOW + 3600)  # a clock that jumped back: after the window
    buckets = ev.message_state_chart(db, NOW, 24, None)
    counts = [(b.sent, b.delivered, b.read, b.failed) for b in buckets]
    assert counts[-1] == (2, 0, 0, 0)
    assert counts[-2] == (0, 1, 0, 0)
    assert counts[-4] == (0, 0, 1, 1)
    assert sum(map(sum, counts)) == 5


def test_sessions_filter_and_an_empty_tuple_means_none(store: MessageStore) -> None:
    status(store.db, "SENT", NOW, "a")
    status(store.db, "SENT", NOW, "b")
    status(store.db, "SENT", NOW, "b")
    assert ev.message_state_chart(store.db, NOW, 1, ["b"])[0].sent == 2
    assert ev.message_state_chart(store.db, NOW, 1, ["a", "b"])[0].sent == 3
    assert ev.message_state_chart(store.db, NOW, 1, [])[0].sent == 0  # never everything
    assert ev.message_state_chart(store.db, NOW, 1, ["x' OR 1=1 --"])[0].sent == 0
    assert ev.message_state_chart(store.db, NOW, 0, None) == []
    assert ev.message_state_chart(store.db, NOW, -5, None) == []


def test_the_sqlite_query_reads_the_time_index_also_for_a_session(tmp_path: Path) -> None:
    """The window's hours, not all of a session's retention days (SQLite's plan; on
    PostgreSQL the planner decides by its statistics)."""
    store = MessageStore(tmp_path / "outbox")
    plans = []

    def trace(statement: str) -> None:
        if statement.lstrip().upper().startswith("SELECT CAST"):
            plans.append(statement)

    store.db.set_trace_callback(trace)
    ev.message_state_chart(store.db, NOW, 24, ["a"])
    store.db.set_trace_callback(None)
    assert len(plans) == 1
    plan = " ".join(str(tuple(row)) for row in store.db.execute("EXPLAIN QUERY PLAN " + plans[0]))
    assert "USING INDEX events_by_time" in plan, plan
    store.close()


# ---- through the API ------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, store: MessageStore) -> Iterator[tuple[Web, MessageStore]]:
    def answer(request: ChartMessageStates) -> Ok:
        return Ok(tuple(ev.message_state_chart(store.db, NOW, request.hours, request.sessions)))

    for w in web(web_config(tmp_path)):
        w.bridge.handlers[ChartMessageStates] = answer
        yield w, store


def chart(w: Web, token: str, **variables: Any) -> list[dict[str, Any]]:
    result = w.gql(CHART, variables, token)
    assert not result.get("errors"), result
    return result["data"]["whatsAppMessageChart"]


def test_the_api_gives_hourly_buckets_with_iso_starts(site: tuple[Web, MessageStore]) -> None:
    w, store = site
    status(store.db, "DELIVERED", NOW)
    buckets = chart(w, add_token(w.config, "ops", "operator"))
    assert len(buckets) == 24
    assert buckets[-1] == {"start": "2026-01-01T05:00:00Z", "sent": 0, "delivered": 1,
                           "read": 0, "failed": 0}
    assert len(chart(w, add_token(w.config, "a2", "admin"), h=168)) == 168
    assert len(chart(w, add_token(w.config, "a3", "admin"), h=1)) == 1


@pytest.mark.parametrize("role, allowed", [("admin", True), ("operator", True),
                                           ("sender", True), ("viewer", False)])
def test_roles_are_those_of_whatsapp_events(site: tuple[Web, MessageStore], role: str,
                                            allowed: bool) -> None:
    w, _ = site
    result = w.gql(CHART, {}, add_token(w.config, "t", role))
    assert codes(result) == ([] if allowed else ["FORBIDDEN"])


def test_a_session_limited_token_counts_only_its_sessions(
        site: tuple[Web, MessageStore]) -> None:
    w, store = site
    status(store.db, "SENT", NOW, "a")
    status(store.db, "SENT", NOW, "b")
    token = add_token(w.config, "shop", "sender", sessions=("a",))
    assert chart(w, token)[-1]["sent"] == 1
    assert w.bridge.asked_of(ChartMessageStates)[-1].sessions == ("a",)
    assert codes(w.gql(CHART, {"s": "b"}, token)) == ["FORBIDDEN"]
    assert chart(w, add_token(w.config, "all", "admin"), s="b")[-1]["sent"] == 1


@pytest.mark.parametrize("variables", [{"h": 0}, {"h": -1}, {"h": 169}, {"h": 2**31 - 1},
                                       {"s": "a/b"}, {"s": ""}])
def test_bad_arguments_are_refused_before_the_outbox_is_asked(
        site: tuple[Web, MessageStore], variables: dict[str, Any]) -> None:
    w, _ = site
    result = w.gql(CHART, variables, add_token(w.config, "t", "admin"))
    assert codes(result) in (["GRAPHQL_VALIDATION_FAILED"], ["INVALID_SESSION"])
    assert w.bridge.asked_of(ChartMessageStates) == []
    if "h" in variables:
        assert "hours must be a whole number, 1 to 168" in result["errors"][0]["message"]
