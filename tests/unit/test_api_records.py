"""The API's typed records (gateway/api/records.py): what the API returns, named like the
schema's fields, built from the actors' answers in one place.

Records are built here from a real message store's rows (SQLite on disk) and real
``SessionStatus`` values; the schema is the real one (gateway/api/schema.graphql).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from graphql import GraphQLObjectType

import gateway.api
from actors.messages import ErrorInfo, MessagePage, SessionState, SessionStatus
from actors.outbox.numbers import NumberCheck
from actors.outbox.store import MessageStore, NewMessage, cursor_of, public_record
from actors.session.states import SESSION_STATES, hint
from gateway.api import records
from gateway.api.resolvers import build_schema
from gateway.auth.tokens import ACTIONS, Principal

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
UNCONFIRMED_AFTER = 600.0

# Each record and the schema type it is.
RECORD_TYPES = {
    records.MessageRecord: "WhatsAppMessage",
    records.StateChange: "MessageStateChange",
    records.MessageEdge: "WhatsAppMessageEdge",
    records.PageInfo: "PageInfo",
    records.MessageConnection: "WhatsAppMessageConnection",
    records.SessionRecord: "WhatsAppStatus",
    records.SessionHintRecord: "SessionHint",
    records.SessionErrorRecord: "SessionError",
    records.NumberCheckRecord: "NumberCheck",
    records.PrincipalRecord: "Principal",
    records.LimitsRecord: "GatewayLimits",
    records.GatewayRecord: "WhatsAppGateway",
    records.SessionQueue: "SessionQueue",
    records.DailyUsage: "DailyUsage",
    records.EventRecord: "WhatsAppEvent",
    records.EventEdge: "WhatsAppEventEdge",
    records.EventConnection: "WhatsAppEventConnection",
    records.IncomingRecord: "WhatsAppIncomingMessage",
    records.IncomingEdge: "WhatsAppIncomingEdge",
    records.IncomingConnection: "WhatsAppIncomingConnection",
    records.WebhookRecord: "Webhook",
    records.WebhookWithSecretRecord: "WebhookWithSecret",
    records.WebhookTestRecord: "WebhookTestResult",
    records.ChartBucketRecord: "WhatsAppChartBucket",
    records.MediaFileRecord: "MediaFile",
}


@pytest.fixture
def store(tmp_path: Path):
    store = MessageStore(tmp_path / "outbox")
    yield store
    store.close()


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_a_record_is_its_schema_type_field_for_field(record_type: type) -> None:
    """Every field of the type is a record attribute (read by GraphQL's default
    resolver) or has a resolver of its own, and the record has nothing the type lacks:
    a field added to the schema without either would answer null (or fail as non-null)
    for every client."""
    graphql_type = build_schema().type_map[RECORD_TYPES[record_type]]
    assert isinstance(graphql_type, GraphQLObjectType)
    attributes = {f.name for f in dataclasses.fields(record_type)}
    resolved = {name for name, field in graphql_type.fields.items() if field.resolve}
    assert attributes <= set(graphql_type.fields), attributes - set(graphql_type.fields)
    assert not attributes & resolved, "a field with a resolver needs no attribute"
    assert attributes | resolved == set(graphql_type.fields)


def test_every_object_type_the_api_returns_has_a_record() -> None:
    """The root types aside, every object type of the schema is one record's."""
    schema = build_schema()
    roots = {"Query", "Mutation"}
    objects = {name for name, t in schema.type_map.items()
               if isinstance(t, GraphQLObjectType) and not name.startswith("__")}
    assert objects - roots == set(RECORD_TYPES.values())


def _columns(store: MessageStore) -> set[str]:
    return {row[1] for row in store.db.execute("PRAGMA table_info(messages)")}


def _resolver_modules() -> list[Path]:
    """The modules of gateway/api whose functions resolve GraphQL fields."""
    return [path for path in sorted(Path(gateway.api.__file__).parent.glob("*.py"))
            if "GraphQLResolveInfo" in path.read_text("utf-8")]


def test_no_resolver_reads_a_store_column(store: MessageStore) -> None:
    """``r["wa_message_id"]`` in a resolver makes the outbox's table the API's contract:
    only gateway/api/records.py may index a row by a column name."""
    columns = _columns(store)
    modules = _resolver_modules()
    assert {p.name for p in modules} >= {"resolvers.py", "overview.py"}
    offenders = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                    and node.slice.value in columns):
                offenders.append(f"{path.name}:{node.lineno} [{node.slice.value!r}]")
    assert offenders == []


def _sent(store: MessageStore, *, updated: float, key: str | None = "k1") -> dict:
    row = store.add(NewMessage("default", "14155552671", "hello", idempotency_key=key,
                               valid_until=NOW + 3600), NOW - 120)
    row = store.transition(row, "SENDING", NOW - 100)
    store.transition(row, "SENT", updated, wa_message_id="3EB0ABC", attempts=1)
    stored = store.get(row["id"])
    assert stored is not None
    return public_record(stored)  # what the outbox hands the web tier


def test_a_message_record_from_a_stored_row(store: MessageStore) -> None:
    row = _sent(store, updated=NOW - 60)
    record = records.message_record(row, now=NOW, unconfirmed_after=UNCONFIRMED_AFTER)
    assert record == records.MessageRecord(
        id=row["id"], state="SENT", session="default", phoneNumber="+14155552671",
        acceptedAt="2025-12-31T23:58:00Z", updatedAt="2025-12-31T23:59:00Z", attempts=1,
        whatsAppMessageId="3EB0ABC", reason=None, error=None, uncertain=False,
        deliveryUnconfirmed=False, validUntil="2026-01-01T01:00:00Z", idempotencyKey="k1",
        duplicate=False,
        history=(records.StateChange("QUEUED", "2025-12-31T23:58:00Z", None),
                 records.StateChange("SENDING", "2025-12-31T23:58:20Z", None),
                 records.StateChange("SENT", "2025-12-31T23:59:00Z", None)))


def test_delivery_is_unconfirmed_only_when_sent_longer_than_the_threshold(
        store: MessageStore) -> None:
    late = _sent(store, updated=NOW - UNCONFIRMED_AFTER - 1, key=None)
    assert records.message_record(late, now=NOW, unconfirmed_after=UNCONFIRMED_AFTER
                                  ).deliveryUnconfirmed is True
    assert records.message_record(late, now=NOW, unconfirmed_after=UNCONFIRMED_AFTER + 2
                                  ).deliveryUnconfirmed is False
    delivered = store.transition(late, "DELIVERED", NOW - UNCONFIRMED_AFTER)
    assert records.message_record(public_record(delivered), now=NOW,
                                  unconfirmed_after=1).deliveryUnconfirmed is False


def test_a_failed_message_keeps_its_reason_and_error_and_a_duplicate_says_so(
        store: MessageStore) -> None:
    row = store.add(NewMessage("s1", "4917012345678", "x"), NOW)
    row = store.transition(row, "FAILED", NOW + 1, "SERVER_ERROR_ACK", error="479",
                           uncertain=True)
    record = records.message_record(public_record(row), now=NOW, unconfirmed_after=1,
                                    duplicate=True)
    assert (record.reason, record.error, record.uncertain, record.duplicate) == (
        "SERVER_ERROR_ACK", "479", True, True)
    assert record.history[-1] == records.StateChange("FAILED", "2026-01-01T00:00:01Z",
                                                     "SERVER_ERROR_ACK")
    assert (record.validUntil, record.idempotencyKey, record.whatsAppMessageId) == (
        None, None, None)


def test_a_page_of_rows_becomes_a_connection(store: MessageStore) -> None:
    rows = [public_record(store.add(NewMessage("default", "14155552671", str(i)), NOW + i))
            for i in range(2)]
    page = MessagePage(tuple(rows), tuple(cursor_of(r) for r in rows), has_next_page=True)
    connection = records.message_connection(page, now=NOW, unconfirmed_after=1)
    assert [edge.node.id for edge in connection.edges] == [r["id"] for r in rows]
    assert [edge.cursor for edge in connection.edges] == list(page.cursors)
    assert connection.pageInfo == records.PageInfo(True, page.cursors[-1])
    empty = records.message_connection(MessagePage((), (), False), now=NOW,
                                       unconfirmed_after=1)
    assert empty == records.MessageConnection((), records.PageInfo(False, None))


@pytest.mark.parametrize("state", list(SessionState))
def test_a_session_record_for_every_state(state: SessionState) -> None:
    status = SessionStatus("shop", state, phone="4917012345678", qr_code="2@abc",
                           qr_expires_at=NOW, reconnect_attempt=2,
                           last_error=ErrorInfo("RECONNECT_FAILED", "check the network"),
                           connected_since=NOW - 1, banned_until=NOW + 1, host="h1")
    assert records.session_record(status) == records.SessionRecord(
        session="shop", connected=state is SessionState.CONNECTED, qrCodeRaw="2@abc",
        qrExpiresAt="2026-01-01T00:00:00Z", state=state.value,
        bridgeState=SESSION_STATES[state].bridge_state,
        hint=records.SessionHintRecord(hint(status).label, hint(status).meaning,
                                       hint(status).what_to_do, hint(status).tone),
        bannedUntil="2026-01-01T00:00:01Z",
        phoneNumber="+4917012345678", reconnectAttempt=2,
        lastError=records.SessionErrorRecord("RECONNECT_FAILED", "check the network"),
        connectedSince="2025-12-31T23:59:59Z", host="h1")


def test_a_new_session_has_nulls_not_empty_strings() -> None:
    record = records.session_record(SessionStatus("default"))
    assert (record.qrCodeRaw, record.qrExpiresAt, record.phoneNumber, record.lastError,
            record.connectedSince, record.bannedUntil, record.host) == (None,) * 7
    assert (record.state, record.bridgeState, record.connected) == ("NEW", "UNCONFIGURED",
                                                                   False)


def test_session_records_are_those_the_caller_may_see_by_name() -> None:
    statuses = [SessionStatus(name) for name in ("b", "c", "a")]
    assert [r.session for r in records.session_records(
        statuses, Principal("all", "viewer"))] == ["a", "b", "c"]
    assert [r.session for r in records.session_records(
        statuses, Principal("some", "viewer", frozenset({"c", "a"})))] == ["a", "c"]


def test_a_number_check_record_answers_the_number_as_given() -> None:
    known = NumberCheck("14155552671", True, jid="14155552671@s.whatsapp.net",
                        business=False, checked_at=NOW, cached=True)
    assert records.number_check_record("+1 (415) 555-2671", known) == records.NumberCheckRecord(
        input="+1 (415) 555-2671", phoneNumber="+14155552671", onWhatsApp=True,
        jid="14155552671@s.whatsapp.net", lid=None, business=False,
        checkedAt="2026-01-01T00:00:00Z", cached=True, reason=None)
    unknown = records.number_check_record("4917012345678",
                                          NumberCheck("4917012345678", None, reason="TIMEOUT"))
    assert (unknown.onWhatsApp, unknown.checkedAt, unknown.reason) == (None, None, "TIMEOUT")


@pytest.mark.parametrize("role", sorted({r for roles in ACTIONS.values() for r in roles}))
def test_a_principal_record_lists_what_its_role_may_do(role: str) -> None:
    record = records.principal_record(Principal("t", role, frozenset({"b", "a"})))
    assert record.sessions == ("a", "b")
    assert record.actions == tuple(sorted(a for a, roles in ACTIONS.items() if role in roles))
    assert records.principal_record(Principal("t", role)).sessions is None
