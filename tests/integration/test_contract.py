"""The public contract (README: The API) as an unmodified client sees it.

The five operations of the product specification must keep working byte for byte:
existing integrations (Apollo, ``gql``) send exactly these documents, so any change
to names, argument types or nullability would break them silently. The HTTP
endpoints operators and load balancers rely on are checked here too.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable
from typing import Any

import pytest

from gateway import __version__
from tests.integration.harness import Gateway, GraphQLResult

# The five operations exactly as the specification writes them.
STATUS = "query    { whatsAppStatus { connected qrCode qrCodeSvg } }"
CONNECT = "mutation { whatsAppConnect }"
DISCONNECT = "mutation { whatsAppDisconnect }"
SEND = ("mutation ($phoneNumber: String!, $message: String!) {\n"
        "  sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message) }")
TEST = "mutation ($phoneNumber: String!) { testWhatsAppConnection(phoneNumber: $phoneNumber) }"

# The same documents as Apollo Client puts them on the wire: reprinted by graphql-js
# ``print`` and with ``__typename`` added to every object selection (addTypename).
APOLLO = {
    STATUS: "{\n  whatsAppStatus {\n    connected\n    qrCode\n    qrCodeSvg\n"
            "    __typename\n  }\n}",
    CONNECT: "mutation {\n  whatsAppConnect\n}",
    DISCONNECT: "mutation {\n  whatsAppDisconnect\n}",
    SEND: "mutation ($phoneNumber: String!, $message: String!) {\n"
          "  sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message)\n}",
    TEST: "mutation ($phoneNumber: String!) {\n"
          "  testWhatsAppConnection(phoneNumber: $phoneNumber)\n}",
}

Envelope = Callable[[str, dict[str, Any]], dict[str, Any]]
# How clients wrap a document: Apollo sends operationName null for an anonymous
# operation, the Python ``gql`` client leaves it out, and a hand-written client may
# send the specification's text with operationName null.
ENVELOPES: dict[str, Envelope] = {
    "apollo": lambda doc, v: {"operationName": None, "variables": v, "query": APOLLO[doc]},
    "spec-text-operationName-null": lambda doc, v: {"operationName": None, "variables": v,
                                                    "query": doc},
    "spec-text-no-operationName": lambda doc, v: {"query": doc, "variables": v},
}


def call(gw: Gateway, doc: str, variables: dict[str, Any] | None = None
         ) -> list[tuple[str, dict[str, Any]]]:
    """Run ``doc`` once per envelope; returns (envelope, data) and fails on any error."""
    answers = []
    for name, envelope in ENVELOPES.items():
        response = gw.post_graphql(envelope(doc, variables or {}))
        assert response.status_code == 200, response.text
        result = GraphQLResult(response.json())
        assert not result.errors, (name, result)
        answers.append((name, result.data))
    return answers


def test_the_five_operations_work_as_specified(gateway: Gateway) -> None:
    """Pair, send, test and log out using only the specification's five documents,
    each in every client envelope, and check the exact shape and types of the data."""
    for name, data in call(gateway, STATUS):
        expected = {"connected": False, "qrCode": None, "qrCodeSvg": None}
        if name == "apollo":
            expected["__typename"] = "WhatsAppStatus"
        assert data == {"whatsAppStatus": expected}, name

    for _, data in call(gateway, CONNECT):
        assert data == {"whatsAppConnect": True}
    gateway.wait_state("QR_PENDING")
    for _, data in call(gateway, STATUS):
        status = data["whatsAppStatus"]
        assert status["connected"] is False
        assert base64.b64decode(status["qrCode"], validate=True).startswith(b"\x89PNG\r\n")
        prefix = "data:image/svg+xml;base64,"
        assert status["qrCodeSvg"].startswith(prefix)
        assert b"<svg" in base64.b64decode(status["qrCodeSvg"][len(prefix):], validate=True)

    gateway.sim("scan")
    gateway.wait_state("CONNECTED")
    for _, data in call(gateway, STATUS):
        assert data["whatsAppStatus"]["connected"] is True
        assert data["whatsAppStatus"]["qrCode"] is None

    for name, data in call(gateway, SEND, {"phoneNumber": "+14155552671",
                                           "message": "contract send"}):
        assert data == {"sendWhatsAppNotification": True}, name
    for _, data in call(gateway, TEST, {"phoneNumber": "+14155552671"}):
        assert data == {"testWhatsAppConnection": True}
    texts = [m["text"] for m in gateway.inbox() if m["to"] == "14155552671"]
    assert texts.count("contract send") == len(ENVELOPES)
    assert texts.count("wagate connection test") == len(ENVELOPES)

    for _, data in call(gateway, DISCONNECT):
        assert data == {"whatsAppDisconnect": True}
    assert gateway.wait_state("LOGGED_OUT")["connected"] is False


def _type(ref: dict[str, Any]) -> str:
    """An introspected type reference in SDL notation (``Boolean!``, ``[X]``)."""
    if ref["kind"] == "NON_NULL":
        return _type(ref["ofType"]) + "!"
    if ref["kind"] == "LIST":
        return f"[{_type(ref['ofType'])}]"
    return ref["name"]


TYPE_REF = "type { kind name ofType { kind name ofType { kind name } } }"


def test_schema_keeps_the_specified_types_and_only_adds_optional_arguments(
        linked_gateway: Gateway) -> None:
    """Return types and required arguments are the contract; everything we added must
    be optional, or the specification's documents would stop validating."""
    result = linked_gateway.gql(
        "{ __schema { queryType { name } mutationType { name } }"
        f" query: __type(name: \"Query\") {{ fields {{ name {TYPE_REF}"
        f"   args {{ name defaultValue {TYPE_REF} }} }} }}"
        f" mutation: __type(name: \"Mutation\") {{ fields {{ name {TYPE_REF}"
        f"   args {{ name defaultValue {TYPE_REF} }} }} }}"
        f" status: __type(name: \"WhatsAppStatus\") {{ fields {{ name {TYPE_REF} }} }} }}")
    assert not result.errors, result
    fields = {f["name"]: f for t in ("query", "mutation") for f in result.data[t]["fields"]}
    specified = {
        "whatsAppStatus": ("WhatsAppStatus!", {}),
        "whatsAppConnect": ("Boolean!", {}),
        "whatsAppDisconnect": ("Boolean!", {}),
        "sendWhatsAppNotification": ("Boolean!", {"phoneNumber": "String!",
                                                  "message": "String!"}),
        "testWhatsAppConnection": ("Boolean!", {"phoneNumber": "String!"}),
    }
    for name, (returns, required) in specified.items():
        field = fields[name]
        assert _type(field["type"]) == returns, name
        args = {a["name"]: a for a in field["args"]}
        for arg, arg_type in required.items():
            assert _type(args[arg]["type"]) == arg_type, (name, arg)
        for extra in set(args) - set(required):
            assert (args[extra]["type"]["kind"] != "NON_NULL"
                    or args[extra]["defaultValue"] is not None), (name, extra)
    status = {f["name"]: _type(f["type"]) for f in result.data["status"]["fields"]}
    assert status["connected"] == "Boolean!"
    assert status["qrCode"] == "String" and status["qrCodeSvg"] == "String"


def test_explorer_and_health_endpoints(linked_gateway: Gateway) -> None:
    """Humans open GET /graphql in a browser; load balancers and monitoring poll the
    health endpoints and parse /admin/health."""
    gw = linked_gateway
    explorer = gw.http.get(gw.url + "/graphql", timeout=10)
    assert explorer.status_code == 200
    assert explorer.headers["Content-Type"].startswith("text/html")
    assert "<html" in explorer.text.lower() and "graphiql" in explorer.text.lower()

    healthz = gw.http.get(gw.url + "/healthz", timeout=10)
    assert healthz.status_code == 200 and healthz.json()["status"] == "ok"
    readyz = gw.http.get(gw.url + "/readyz", timeout=10)
    assert readyz.status_code == 200 and readyz.json()["status"] == "ready"

    before = gw.health()["limiter"]["global_day_used"]
    assert gw.send("+14155550111", "counted").data == {"sendWhatsAppNotification": True}
    health = gw.health()
    assert health["status"] == "ok"
    assert health["version"] == __version__
    [session] = [s for s in health["sessions"] if s["session"] == "default"]
    assert session["state"] == "CONNECTED" and session["connected"] is True
    assert re.fullmatch(r"\+\d{7,15}", session["phoneNumber"])  # E.164, with its +
    assert session["lastError"] is None
    assert isinstance(session["uptimeSeconds"], int | float) and session["uptimeSeconds"] >= 0
    assert isinstance(session["pid"], int) and os.path.exists(f"/proc/{session['pid']}")
    assert session["pid"] in gw.actor_pids()
    assert health["queue"]["depth"] == 0
    assert health["limiter"]["global_day_used"] == before + 1
    assert health["limiter"]["global_day_limit"] == 1000


@pytest.mark.parametrize("path", ["/graphql", "/healthz", "/readyz", "/admin/health"])
def test_request_id_is_echoed_or_generated(linked_gateway: Gateway, path: str) -> None:
    """The request id ties a client's report to the gateway's log lines: an incoming
    X-Request-Id is echoed, a missing (or absurdly long) one is replaced by a fresh id."""
    gw = linked_gateway

    def request(headers: dict[str, str]) -> str:
        if path == "/graphql":
            response = gw.post_graphql({"query": STATUS}, headers=headers)
        else:
            response = gw.http.get(gw.url + path, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.headers["X-Request-Id"]

    assert request({"X-Request-Id": "client-abc-123"}) == "client-abc-123"
    generated = {request({}), request({}), request({"X-Request-Id": "x" * 65})}
    assert len(generated) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in generated), generated
