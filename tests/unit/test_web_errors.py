"""Error formatting, in process: known codes keep their code, message and details;
anything unexpected becomes INTERNAL with the request id and nothing of its text;
a body or document the gateway cannot use is GRAPHQL_VALIDATION_FAILED with a
message that says what to send."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.messages import Connect, Failed, GetHealth, GetStatus
from gateway.api.errors import GatewayError
from tests.unit.web_helpers import Web, codes, web, web_config

SECRET = "internal detail /var/lib/secret"  # must never reach a client
STATUS = "query { whatsAppStatus { state } }"
MAX_BODY = 2048
MAX_BATCH = 3


@pytest.fixture
def w(tmp_path: Path) -> Iterator[Web]:
    yield from web(web_config(tmp_path, **{"auth.required": False,
                                          "graphql.max_body_bytes": MAX_BODY,
                                          "graphql.max_batch": MAX_BATCH,
                                          "graphql.explorer": False}))


def boom(_: Any) -> Any:
    raise RuntimeError(SECRET)


def only_error(response: Any) -> dict[str, Any]:
    [error] = response.get_json()["errors"]
    assert set(error) == {"message", "extensions"}, error
    return error  # type: ignore[no-any-return]


def test_a_known_failure_keeps_its_code_message_and_details(w: Web) -> None:
    w.bridge.handlers[Connect] = lambda m: Failed(
        "SESSION_LIMIT", "at most 1 session (sessions.max_sessions)", {"limit": 1})
    result = w.gql("mutation { whatsAppConnect }")
    [error] = result["errors"]
    assert error["message"] == "at most 1 session (sessions.max_sessions)"
    assert error["extensions"] == {"code": "SESSION_LIMIT", "limit": 1}
    assert error["path"] == ["whatsAppConnect"]


def test_actors_that_do_not_answer_are_unavailable(w: Web) -> None:
    del w.bridge.handlers[GetStatus]
    result = w.gql(STATUS)
    assert codes(result) == ["UNAVAILABLE"] and result["data"] is None


def test_an_unexpected_exception_in_a_resolver_is_internal_with_the_request_id(w: Web) -> None:
    w.bridge.handlers[GetStatus] = boom
    response = w.post(STATUS, headers={"X-Request-Id": "req-7"})
    assert response.status_code == 200
    [error] = response.get_json()["errors"]
    assert error["extensions"] == {"code": "INTERNAL", "requestId": "req-7"}
    assert "req-7" in error["message"]
    assert "secret" not in response.get_data(as_text=True).lower()


def test_an_unexpected_exception_in_a_view_is_a_500_with_the_request_id(w: Web) -> None:
    w.bridge.handlers[GetHealth] = boom
    response = w.client.get("/admin/health", headers={"X-Request-Id": "req-8"})
    assert response.status_code == 500
    error = only_error(response)
    assert error["extensions"] == {"code": "INTERNAL"} and "req-8" in error["message"]
    assert "secret" not in response.get_data(as_text=True).lower()
    assert response.headers["X-Request-Id"] == "req-8"


def test_the_admin_views_answer_failing_actors_themselves(w: Web) -> None:
    """/admin/health is a 503 with the error shape inside its document; /metrics still
    answers (the web tier's own series count) with wagate_actors_up 0."""
    def refuse(_: Any) -> Any:
        raise GatewayError("UNAVAILABLE", "no")
    w.bridge.handlers[GetHealth] = lambda m: None
    health = w.client.get("/admin/health")
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "unavailable" and body["errors"][0]["extensions"]["code"] == \
        "UNAVAILABLE"
    w.bridge.handlers[GetHealth] = refuse
    metrics = w.client.get("/metrics")  # catches GatewayError: the web tier's own still count
    assert metrics.status_code == 200 and b"wagate_actors_up 0" in metrics.data


@pytest.mark.parametrize("document", [
    "query {",  # syntax
    "query { noSuchField }",
    "query { whatsAppStatus(session: 5) { state } }",  # argument of the wrong type
    "query { whatsAppStatus }",  # no selection on an object
])
def test_a_document_graphql_refuses_is_graphql_validation_failed(w: Web, document: str) -> None:
    result = w.gql(document)
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"] and "data" not in result
    assert w.bridge.asked == []


def test_variables_that_do_not_fit_their_types_are_graphql_validation_failed(w: Web) -> None:
    result = w.gql("query($s: String) { whatsAppStatus(session: $s) { state } }", {"s": [1]})
    assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"]


@pytest.mark.parametrize("body, content_type, status, says", [
    (b'{"query": "{ x }"}', "text/plain", 400, "Content-Type: application/json"),
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b"\xff\xfe", "application/json", 400, "UTF-8"),
    (b"[" * 40 + b"]" * 40, "application/json", 400, "nested more than 32"),
    (b'{"query": "\\ud800"}', "application/json", 400, "unpaired UTF-16 surrogate"),
    (b'"a string"', "application/json", 400, "send a JSON object"),
    (b"[]", "application/json", 400, f"a batch holds 1 to {MAX_BATCH}"),
    (json.dumps([{"query": STATUS}] * (MAX_BATCH + 1)).encode(), "application/json", 400,
     f"a batch holds 1 to {MAX_BATCH}"),
    (b'{"query": "' + b"x" * MAX_BODY + b'"}', "application/json", 413,
     f"larger than {MAX_BODY} bytes"),
])
def test_a_body_the_gateway_cannot_use_is_refused_with_what_to_send(
        w: Web, body: bytes, content_type: str, status: int, says: str) -> None:
    response = w.client.post("/graphql", data=body, content_type=content_type)
    assert response.status_code == status
    error = only_error(response)
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert says in error["message"]
    assert w.bridge.asked == []


def test_a_batch_runs_each_operation_and_refuses_only_the_bad_ones(w: Web) -> None:
    response = w.client.post("/graphql", json=[{"query": STATUS}, "not an object",
                                               {"query": "query {"}])
    assert response.status_code == 200
    good, bad, broken = response.get_json()
    assert good == {"data": {"whatsAppStatus": {"state": "CONNECTED"}}}
    assert codes(bad) == ["GRAPHQL_VALIDATION_FAILED"] and "JSON object" in \
        bad["errors"][0]["message"]
    assert codes(broken) == ["GRAPHQL_VALIDATION_FAILED"]


@pytest.mark.parametrize("method, path, status, code, says", [
    ("GET", "/nothing/here", 404, "NOT_FOUND", "no such path /nothing/here"),
    ("GET", "/static/secret.txt", 404, "NOT_FOUND", "no such path"),
    ("PUT", "/graphql", 405, "GRAPHQL_VALIDATION_FAILED", "PUT is not allowed on /graphql"),
    ("POST", "/healthz", 405, "GRAPHQL_VALIDATION_FAILED", "POST is not allowed"),
    ("GET", "/graphql", 404, "NOT_FOUND", "the GraphQL explorer is off"),
])
def test_http_errors_have_the_graphql_error_shape(w: Web, method: str, path: str, status: int,
                                                  code: str, says: str) -> None:
    response = w.client.open(path, method=method)
    assert response.status_code == status and response.mimetype == "application/json"
    error = only_error(response)
    assert error["extensions"] == {"code": code} and says in error["message"]


def test_the_explorer_page_is_served_when_it_is_on(tmp_path: Path) -> None:
    for w in web(web_config(tmp_path, **{"auth.required": False, "graphql.explorer": True})):
        page = w.client.get("/graphql")
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert "nonce-" in page.headers["Content-Security-Policy"]
