"""Property-based fuzzing of the HTTP API: malformed, oversized, deeply nested and
type-confused requests against a running gateway with a linked session.

The properties, for every request: no 5xx, no stack trace, a JSON answer in which
every error carries an ``extensions.code`` and none is ``INTERNAL`` (bad input is the
caller's error, never a gateway fault); and at the end no process of the gateway
died and the linked session is still connected. At least ``MIN_REQUESTS`` requests
are sent (counted, and asserted by the last test of the module). Hypothesis runs
derandomized, so a failure reproduces.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.errors import ERROR_CODES
from tests.integration.harness import Gateway

MIN_REQUESTS = 5000
SENT: Counter[str] = Counter()
REAL_FIELDS = ["whatsAppStatus", "whatsAppSessions", "whatsAppGateway", "whatsAppMessage",
               "whatsAppMessages", "whatsAppConnect", "sendWhatsAppNotification",
               "sendWhatsAppMessage", "testWhatsAppConnection",
               "whatsAppRequestPairingCode", "state", "connected", "qrCode", "edges", "node",
               "history", "id", "session", "__typename", "__schema", "types", "name"]
REAL_ARGS = ["session", "phoneNumber", "message", "keepSession", "id", "first", "after",
             "state", "input", "idempotencyKey", "validForSeconds"]
CONTRACT = [
    ("query($s: String) { whatsAppStatus(session: $s) { connected qrCode state } }", ["s"]),
    ("mutation($s: String) { whatsAppConnect(session: $s) }", ["s"]),
    # Never the linked "default" session: the fuzzing sends through it.
    ("mutation($s: String!, $k: Boolean) { whatsAppDisconnect(session: $s, keepSession: $k) }",
     ["s!", "k"]),
    ("mutation($p: String!, $m: String!, $s: String) { sendWhatsAppNotification("
     "phoneNumber: $p, message: $m, session: $s) }", ["p", "m", "s"]),
    ("mutation($p: String!, $s: String) { testWhatsAppConnection(phoneNumber: $p, "
     "session: $s) }", ["p", "s"]),
    ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) { id state } }",
     ["i"]),
    ("query($f: Int, $a: String, $st: String) { whatsAppMessages(first: $f, after: $a, "
     "state: $st) { edges { cursor } } }", ["f", "a", "st"]),
    ("query($id: ID!) { whatsAppMessage(id: $id) { id state } }", ["id"]),
]
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


CORE: dict[str, set[int]] = {}


@pytest.fixture(scope="module")
def target(linked_gateway: Gateway) -> Gateway:
    if not CORE:
        CORE.update(core_processes(linked_gateway))
    return linked_gateway


def core_processes(gw: Gateway) -> dict[str, set[int]]:
    """Processes that must never die: the web server's, the supervisor, the outbox and
    the linked session (sessions the fuzzing creates or logs out come and go)."""
    from tests.integration.harness import group_members

    state = gw.run_state() or {}
    health = gw.health()
    return {"web": set(group_members(int(state["web_pgid"]))),
            "actors": {int(p) for p in health["processes"].values()},
            "session": {gw.session_pid("default")}}


def check(response: requests.Response, kind: str) -> None:
    SENT[kind] += 1
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()  # every answer is JSON
    for item in body if isinstance(body, list) else [body]:
        assert isinstance(item, dict), body
        for error in item.get("errors") or []:
            code = error.get("extensions", {}).get("code")
            assert code in ERROR_CODES and code != "INTERNAL", error
            assert error.get("message"), error


def post(gw: Gateway, kind: str, headers: dict[str, str] | None = None,
         **kwargs: Any) -> requests.Response:
    # A connection per request: hypothesis may pause longer than gunicorn keeps an idle
    # connection open, and a request sent into a closing connection is not retried.
    headers = {**gw.http.headers, "Connection": "close", **(headers or {})}
    response = requests.post(gw.url + "/graphql", timeout=60, headers=headers, **kwargs)
    check(response, kind)
    return response


@settings(FUZZ, max_examples=700)
@given(body=st.binary(max_size=600) | st.text(max_size=600).map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "application/graphql",
                                     "application/json; charset=utf-8", "multipart/form-data",
                                     "application/x-www-form-urlencoded"]))
def test_raw_bodies(target: Gateway, body: bytes, content_type: str) -> None:
    post(target, "raw", data=body, headers={"Content-Type": content_type})


@settings(FUZZ, max_examples=700)
@given(value=json_values | st.fixed_dictionaries(
    {}, optional={"query": json_values, "variables": json_values,
                  "operationName": json_values, "extensions": json_values}))
def test_json_shapes(target: Gateway, value: Any) -> None:
    post(target, "json", data=json.dumps(value), headers={"Content-Type": "application/json"})


@st.composite
def documents(draw: st.DrawFn) -> str:
    """GraphQL-looking text: real and unknown fields, arguments of every literal kind,
    aliases, fragments, directives, random nesting; often almost valid."""
    literal = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats().map(repr),
                        st.text(max_size=20).map(json.dumps), st.sampled_from(
                            ["true", "false", "null", "SENT", "[1, 2]", "{a: 1}", "$s",
                             '"""block"""', "[[[]]]", "{}"]))
    name = st.sampled_from(REAL_FIELDS) | st.text(
        "_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8)

    budget = [draw(st.integers(1, 120))]  # fields in the document, so its size is bounded

    def selection(depth: int) -> str:
        fields = []
        for _ in range(draw(st.integers(1, 3))):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            field = draw(name)
            if draw(st.booleans()):
                field = f"{draw(name)}: {field}"
            if draw(st.integers(0, 2)) == 0:
                args = ", ".join(f"{draw(st.sampled_from(REAL_ARGS))}: {draw(literal)}"
                                 for _ in range(draw(st.integers(1, 3))))
                field += f"({args})"
            if draw(st.integers(0, 5)) == 0:
                field += f" @{draw(st.sampled_from(['skip', 'include', 'nope']))}" \
                         f"(if: {draw(literal)})"
            if depth > 0 and draw(st.booleans()):
                field += " " + selection(depth - 1)
            fields.append(field)
        if draw(st.integers(0, 6)) == 0:
            fields.append("...F")
        return "{ " + " ".join(fields or ["id"]) + " }"

    op = draw(st.sampled_from(["", "query ", "mutation ", "subscription ", "query Q($s: "
                               "String) ", "mutation M($p: String!, $x: [Int!]!) "]))
    text = op + selection(draw(st.integers(0, 12)))
    if "...F" in text or draw(st.integers(0, 8)) == 0:
        on = draw(st.sampled_from(["Query", "Mutation", "WhatsAppStatus", "Nope"]))
        text += f" fragment F on {on} " + selection(draw(st.integers(0, 3)))
    if draw(st.integers(0, 10)) == 0:  # a syntax error somewhere
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["{", "}", "(", ":", "$", "\"", "...", "@"])) \
            + text[cut:]
    return text


@settings(FUZZ, max_examples=1700)
@given(query=documents(), variables=st.none() | st.dictionaries(
    st.sampled_from(["s", "p", "m", "x", "k"]), json_values, max_size=3))
def test_documents(target: Gateway, query: str, variables: Any) -> None:
    post(target, "document", json={"query": query, "variables": variables})


@settings(FUZZ, max_examples=1200)
@given(operation=st.sampled_from(CONTRACT), data=st.data())
def test_type_confused_variables(target: Gateway, operation: tuple[str, list[str]],
                                 data: st.DataObject) -> None:
    query, names = operation
    typed = {
        "s": st.sampled_from(["default", "other", "../x", "", "a" * 100, "ü"]),
        "s!": st.sampled_from(["other", "fuzz", "../x", "", "a" * 100, "ü"]),
        "p": st.sampled_from(["+14155552671", "0", "+999", "", "+1 415 555 2671 ext 9"]),
        "m": st.text(max_size=50) | st.sampled_from(["", " ", "x" * 4097, "\ud800",
                                                     "a\udc00b"]),
        "i": st.fixed_dictionaries({"phoneNumber": st.sampled_from(["+14155552671", "x"]),
                                    "message": st.text(max_size=20)},
                                   optional={"validForSeconds": st.none() | st.integers(
                                                 -5, 2**40),
                                             "idempotencyKey": st.text(max_size=200),
                                             "session": st.none() | st.text(max_size=70)}),
    }
    variables = {n.rstrip("!"): data.draw(
        typed[n] if n.endswith("!") else json_values | typed.get(n, json_values), label=n)
        for n in names if n.endswith("!") or data.draw(st.booleans(), label=f"has {n}")}
    post(target, "variables", json={"query": query, "variables": variables})


@settings(FUZZ, max_examples=500)
@given(kind=st.sampled_from(["selection", "json", "string", "batch", "aliases", "fragments"]),
       size=st.integers(1, 6000))
def test_deep_and_large(target: Gateway, kind: str, size: int) -> None:
    if kind == "selection":
        body: Any = {"query": "{ whatsAppStatus " * size + "{ state }" + " }" * size}
    elif kind == "json":
        body = {"query": "{ whatsAppStatus { state } }",
                "variables": {"s": json.loads("[" * min(size, 900) + "]" * min(size, 900))}}
    elif kind == "string":
        body = {"query": "mutation($m: String!) { sendWhatsAppNotification(phoneNumber: "
                "\"+14155552671\", message: $m) }", "variables": {"m": "é" * size * 50}}
    elif kind == "batch":
        body = [{"query": "{ whatsAppStatus { state } }"}] * (size % 40)
    elif kind == "aliases":
        body = {"query": "{ " + " ".join(f"a{i}: whatsAppSessions {{ session }}"
                                          for i in range(size % 2000)) + " }"}
    else:
        frags = " ".join(f"fragment F{i} on WhatsAppStatus {{ ...F{i + 1} }}"
                         for i in range(size % 300))
        body = {"query": "{ whatsAppStatus { ...F0 } } " + frags
                + f" fragment F{size % 300} on WhatsAppStatus {{ state }}"}
    raw = json.dumps(body)
    if kind == "json" and size > 900:  # deeper than Python's own json could build
        raw = raw.replace("[]", "[" * size + "]" * size, 1)
    post(target, f"large-{kind}", data=raw, headers={"Content-Type": "application/json"})


@settings(FUZZ, max_examples=500)
@given(authorization=st.none() | st.text(max_size=80) | st.sampled_from(
           ["Bearer", "Bearer ", "Basic abc", "bearer wgt_", "Bearer " + "x" * 5000]),
       forwarded=st.none() | st.text(max_size=60) | st.sampled_from(
           ["1.2.3.4", "::1", "127.0.0.1, 10.0.0.1", "999.1.1.1", "fe80::1%eth0"]),
       request_id=st.none() | st.text(max_size=100))
def test_headers(target: Gateway, authorization: str | None, forwarded: str | None,
                 request_id: str | None) -> None:
    headers: dict[str, str] = {}
    for key, value in (("Authorization", authorization), ("X-Forwarded-For", forwarded),
                       ("X-Request-Id", request_id)):
        if value is not None:
            headers[key] = value.encode("latin-1", "replace").decode("latin-1")
    # What an HTTP client can send at all: no control characters, no outer blanks.
    headers = {k: "".join(c for c in v if " " <= c != "\x7f").strip()
               for k, v in headers.items()}
    response = requests.post(target.url + "/graphql", headers=headers, timeout=30,
                             json={"query": "{ whatsAppStatus { state } }"})
    check(response, "headers")
    if authorization != f"Bearer {target.token}":
        assert response.status_code == 401


def test_the_gateway_survived_the_fuzzing(target: Gateway) -> None:
    total = sum(SENT.values())
    print(f"fuzzed requests: {total} {dict(SENT)}")
    assert total >= MIN_REQUESTS, f"only {total} requests were sent"
    dead = {kind: [p for p in pids if not os.path.exists(f"/proc/{p}")]
            for kind, pids in CORE.items()}
    assert not any(dead.values()), f"gateway processes died during fuzzing: {dead}"
    assert requests.get(target.url + "/readyz", timeout=10).status_code == 200
    assert target.status()["state"] == "CONNECTED"
    failed = [s["session"] for s in target.health()["sessions"] if s["state"] == "FAILED"]
    assert not failed, f"sessions that gave up: {failed}"
