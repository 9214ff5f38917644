"""The resolvers in-process: the real schema, a real ``RequestContext``, a real status
snapshot on disk, and no actor system at all.

Bad arguments and refused callers must cost nothing (gateway/api/resolvers.py: input is
checked before any actor is asked), and what needs no actor (a status from a fresh
snapshot, the gateway's own figures) must not ask one. The context's bridge therefore
records what it was asked and answers as a bridge does when no actor system answers
(UNAVAILABLE); every document here asserts which asks it made (none, mostly). The
subprocess tests (tests/integration) cover the answers that do need the actors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from ariadne import graphql_sync
from graphql import GraphQLSchema

from actors.messages import ErrorInfo, GetHealth, HealthReport, SessionState, SessionStatus
from actors.supervisor.snapshot import SnapshotReader, write_snapshot
from gateway import __version__
from gateway.api.context import RequestContext
from gateway.api.errors import GatewayError, format_error
from gateway.api.qr import qr_png_base64, qr_svg_data_uri
from gateway.api.resolvers import MAX_KEY_LENGTH, build_schema
from gateway.auth.tokens import Principal
from gateway.core.config import Config, load_config

ADMIN = Principal("ops", "admin")
SHOP = Principal("shop", "sender", frozenset({"shop", "shop2"}))
SHOP_OPERATOR = Principal("shop-ops", "operator", frozenset({"shop", "shop2"}))
VIEWER = Principal("screen", "viewer")


class NoActors:
    """A bridge with no actor system behind it: what it was asked, then UNAVAILABLE, but
    for ``GetHealth`` when the test gives the report the supervisor would answer."""

    def __init__(self, health: HealthReport | None) -> None:
        self.asked: list[str] = []
        self.health = health

    def ask(self, message: Any, timeout: float | None = None, to_outbox: bool = False) -> Any:
        self.asked.append(type(message).__name__)
        if isinstance(message, GetHealth) and self.health is not None:
            return self.health
        raise GatewayError("UNAVAILABLE", "no actor system in this test")


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(None, {"storage.data_dir": str(tmp_path)})


class Api:
    """Runs documents as the web tier does, with the audit entries they wrote."""

    def __init__(self, schema: GraphQLSchema, config: Config, data_dir: Path) -> None:
        self.schema, self.config = schema, config
        self.snapshots = SnapshotReader(data_dir, max_age=3600)
        self.audited: list[dict[str, Any]] = []
        self.health: HealthReport | None = None

    def run(self, query: str, principal: Principal = ADMIN, *, asks: tuple[str, ...] = (),
            **variables: Any) -> dict[str, Any]:
        """The result of ``query``, which asked the actors ``asks`` (message types)."""
        bridge = NoActors(self.health)
        context = RequestContext(
            bridge=bridge, config=self.config, principal=principal,
            audit=lambda event, **fields: self.audited.append({"event": event, **fields}),
            snapshots=self.snapshots, numbers=None, request_id="r1", client_ip="127.0.0.1")
        _, result = graphql_sync(self.schema, {"query": query, "variables": variables},
                                 context_value=context, error_formatter=format_error,
                                 logger="wagate.graphql.errors")
        assert bridge.asked == list(asks)
        return result

    def refusal(self, query: str, principal: Principal = ADMIN,
                **variables: Any) -> dict[str, Any]:
        """The one error of a refused document: its code and extensions."""
        errors = self.run(query, principal, **variables).get("errors")
        assert errors is not None and len(errors) == 1, errors
        return {"message": errors[0]["message"], **errors[0]["extensions"]}


@pytest.fixture
def api(schema: GraphQLSchema, config: Config, tmp_path: Path) -> Api:
    (tmp_path / "run").mkdir()
    return Api(schema, config, tmp_path)


MESSAGES = "query($first: Int, $state: String, $session: String) { whatsAppMessages(" \
    "first: $first, state: $state, session: $session) { edges { cursor } } }"


@pytest.mark.parametrize("first", [0, -1, 201])
def test_a_page_size_out_of_range_is_refused(api: Api, first: int) -> None:
    refusal = api.refusal(MESSAGES, first=first)
    assert (refusal["code"], refusal["field"]) == ("GRAPHQL_VALIDATION_FAILED", "first")
    assert "1 to 200" in refusal["message"] or "200" in refusal["message"]


def test_an_unknown_message_state_is_refused_with_the_known_ones(api: Api) -> None:
    refusal = api.refusal(MESSAGES, state="LOST")
    assert (refusal["code"], refusal["field"]) == ("GRAPHQL_VALIDATION_FAILED", "state")
    assert "QUEUED" in refusal["message"] and "READ" in refusal["message"]


def test_a_token_of_several_sessions_must_name_the_one_it_lists(api: Api) -> None:
    refusal = api.refusal(MESSAGES, SHOP_OPERATOR)
    assert refusal["code"] == "FORBIDDEN" and "shop, shop2" in refusal["message"]
    assert api.refusal(MESSAGES, SHOP_OPERATOR, session="other")["code"] == "FORBIDDEN"
    assert api.refusal(MESSAGES, SHOP_OPERATOR, session="bad name!")["code"] == \
        "INVALID_SESSION"
    assert api.refusal(MESSAGES, SHOP, session="shop")["code"] == "FORBIDDEN"  # a sender


SEND = "mutation($to: String!, $text: String!, $session: String, $key: String) { " \
    "sendWhatsAppNotification(phoneNumber: $to, message: $text, session: $session, " \
    "idempotencyKey: $key) }"


def test_a_refused_mutation_is_audited_with_its_outcome(api: Api) -> None:
    assert api.refusal(SEND, VIEWER, to="+1 415 555 2671", text="hi")["code"] == "FORBIDDEN"
    assert api.refusal(SEND, to="12", text="hi")["code"] == "INVALID_NUMBER"
    assert api.refusal(SEND, to="+14155552671", text="")["code"] == "INVALID_MESSAGE"
    assert [(a["event"], a["operation"], a["actor"], a["role"], a["outcome"], a["recipient"],
             a["session"], a["ip"]) for a in api.audited] == [
        ("mutation", "sendWhatsAppNotification", "screen", "viewer", "FORBIDDEN",
         "14155552671", "default", "127.0.0.1"),
        ("mutation", "sendWhatsAppNotification", "ops", "admin", "INVALID_NUMBER", "12",
         "default", "127.0.0.1"),
        ("mutation", "sendWhatsAppNotification", "ops", "admin", "INVALID_MESSAGE",
         "14155552671", "default", "127.0.0.1")]


def test_an_idempotency_key_too_long_is_refused(api: Api) -> None:
    refusal = api.refusal(SEND, to="+14155552671", text="hi", key="k" * (MAX_KEY_LENGTH + 1))
    assert (refusal["code"], refusal["field"]) == ("INVALID_MESSAGE", "idempotencyKey")


@pytest.mark.parametrize("seconds", [0, -5])
def test_a_validity_that_is_not_positive_is_refused(api: Api, seconds: int) -> None:
    refusal = api.refusal("mutation($s: Int) { sendWhatsAppMessage(input: {phoneNumber: "
                          "\"+14155552671\", message: \"hi\", validForSeconds: $s}) { id } }",
                          s=seconds)
    assert (refusal["code"], refusal["field"]) == ("INVALID_MESSAGE", "validForSeconds")


def test_too_many_numbers_to_check_are_refused(api: Api, config: Config) -> None:
    numbers = ["+14155552671"] * (config.numbers.max_per_call + 1)
    refusal = api.refusal("query($n: [String!]!) { whatsAppCheckNumbers(phoneNumbers: $n) "
                          "{ onWhatsApp } }", n=numbers)
    assert (refusal["code"], refusal["field"]) == ("INVALID_NUMBER", "phoneNumbers")


STATUS = "query($session: String) { whatsAppStatus(session: $session) { session connected " \
    "qrCode qrCodeSvg qrCodeRaw qrExpiresAt state bridgeState bannedUntil phoneNumber " \
    "reconnectAttempt lastError { code message } connectedSince host } }"


def _snapshot(api: Api, *statuses: SessionStatus) -> None:
    write_snapshot(api.snapshots.path.parent.parent, {s.session: s for s in statuses},
                   time.time())


def test_a_status_from_the_snapshot_renders_the_qr_code(api: Api) -> None:
    _snapshot(api, SessionStatus("default", SessionState.QR_PENDING, qr_code="2@abc,def",
                                 qr_expires_at=1_767_225_600.0,
                                 last_error=ErrorInfo("QR_EXPIRED", "scan the new code")))
    status = api.run(STATUS, session=None)["data"]["whatsAppStatus"]  # null: the default
    assert status == {
        "session": "default", "connected": False, "qrCode": qr_png_base64("2@abc,def"),
        "qrCodeSvg": qr_svg_data_uri("2@abc,def"), "qrCodeRaw": "2@abc,def",
        "qrExpiresAt": "2026-01-01T00:00:00Z", "state": "QR_PENDING",
        "bridgeState": "UNCONFIGURED", "bannedUntil": None, "phoneNumber": None,
        "reconnectAttempt": 0, "lastError": {"code": "QR_EXPIRED",
                                             "message": "scan the new code"},
        "connectedSince": None, "host": None}


def test_a_connected_session_has_no_qr_code(api: Api) -> None:
    _snapshot(api, SessionStatus("shop", SessionState.CONNECTED, phone="4917012345678",
                                 connected_since=1_767_225_600.0, host="h1"))
    status = api.run(STATUS, SHOP, session="shop")["data"]["whatsAppStatus"]
    assert (status["connected"], status["qrCode"], status["qrCodeSvg"], status["phoneNumber"],
            status["connectedSince"], status["host"], status["bridgeState"]) == (
        True, None, None, "+4917012345678", "2026-01-01T00:00:00Z", "h1", "CONNECTED")
    assert api.refusal(STATUS, SHOP, session="default")["code"] == "FORBIDDEN"


def test_sessions_are_those_the_caller_may_see(api: Api) -> None:
    _snapshot(api, *(SessionStatus(name) for name in ("shop2", "default", "shop")))
    query = "{ whatsAppSessions { session state } }"
    assert [s["session"] for s in api.run(query)["data"]["whatsAppSessions"]] == [
        "default", "shop", "shop2"]
    assert api.run(query, SHOP)["data"]["whatsAppSessions"] == [
        {"session": "shop", "state": "NEW"}, {"session": "shop2", "state": "NEW"}]


def test_the_gateway_asks_the_actors_only_for_the_figures_that_need_them(
        api: Api, config: Config) -> None:
    """version, the caller and the limits need no actor; queueDepth, dailyUsage and
    queueBySession share one health report."""
    query = ("{ whatsAppGateway { version authRequired principal { name role sessions "
             "actions } limits { perNumberPerMinute globalPerDay maxSessions "
             "maxMessageLength reconnectAttempts } } }")
    gateway = api.run(query, SHOP)["data"]["whatsAppGateway"]
    assert gateway == {
        "version": __version__, "authRequired": config.auth.required,
        "principal": {"name": "shop", "role": "sender", "sessions": ["shop", "shop2"],
                      "actions": ["events", "send", "status"]},
        "limits": {"perNumberPerMinute": config.limits.per_number_per_minute,
                   "globalPerDay": config.limits.global_per_day,
                   "maxSessions": config.sessions.max_sessions,
                   "maxMessageLength": config.messages.max_length,
                   "reconnectAttempts": config.reconnect.attempts}}
    result = api.run("{ whatsAppGateway { queueDepth } }", asks=("GetHealth",))
    assert [e["extensions"]["code"] for e in result["errors"]] == ["UNAVAILABLE"]


FIGURES = ("{ whatsAppGateway { queueDepth queueBySession { session depth } "
           "dailyUsage { used limit remaining } } }")


def test_the_outbox_figures_come_from_one_report_scoped_to_the_caller(api: Api) -> None:
    api.health = HealthReport(queue_by_session={"shop": 2, "default": 0, "other": 3},
                              queue_depth=5, worker_pids={"outbox": 1},
                              limiter={"global_day_limit": 1000, "global_day_used": 7})
    assert api.run(FIGURES, asks=("GetHealth",))["data"]["whatsAppGateway"] == {
        "queueDepth": 5, "queueBySession": [{"session": "other", "depth": 3},
                                            {"session": "shop", "depth": 2}],
        "dailyUsage": {"used": 7, "limit": 1000, "remaining": 993}}
    # The daily count is of every session's sends: not for a token limited to some.
    assert api.run(FIGURES, SHOP, asks=("GetHealth",))["data"]["whatsAppGateway"] == {
        "queueDepth": 2, "queueBySession": [{"session": "shop", "depth": 2}],
        "dailyUsage": None}


def test_the_outbox_figures_are_unavailable_while_the_outbox_restarts(api: Api) -> None:
    api.health = HealthReport(queue_by_session={"shop": 2})  # no outbox pid
    result = api.run("{ whatsAppGateway { version queueDepth } }", asks=("GetHealth",))
    assert result["data"] is None  # queueDepth is non-null: the error nulls the parent
    assert [e["extensions"]["code"] for e in result["errors"]] == ["UNAVAILABLE"]
    assert "restarting" in result["errors"][0]["message"]
