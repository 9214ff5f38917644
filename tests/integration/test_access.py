"""Who may do what, from where: the access matrix over HTTP against a running gateway.

Every operation x every role x token state (valid, expired, revoked) x network
(loopback, the token's own network via a trusted proxy, a network the token may not
use, a network the gateway refuses), plus missing and unknown tokens. The expected
matrix is written out here, independently of ``gateway.auth.tokens``: it is the README's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.harness import Gateway, wait_for

ALL = frozenset({"admin", "operator", "sender", "viewer"})
SESSION = "matrix"
PHONE = "+14155552671"

# operation -> (how to call it, roles allowed)
GRAPHQL_OPERATIONS: dict[str, tuple[str, dict[str, Any], frozenset[str]]] = {
    "whatsAppStatus": ("query($s: String) { whatsAppStatus(session: $s) { state } }",
                       {"s": SESSION}, ALL),
    "whatsAppSessions": ("{ whatsAppSessions { session } }", {}, ALL),
    "whatsAppGateway": ("{ whatsAppGateway { version } }", {}, ALL),
    "whatsAppConnect": ("mutation($s: String) { whatsAppConnect(session: $s) }",
                        {"s": SESSION}, frozenset({"admin", "operator"})),
    "whatsAppRequestPairingCode": (
        "mutation($s: String, $p: String!) { whatsAppRequestPairingCode(session: $s, "
        "phoneNumber: $p) }", {"s": SESSION, "p": PHONE}, frozenset({"admin", "operator"})),
    "whatsAppDisconnect": ("mutation($s: String) { whatsAppDisconnect(session: $s) }",
                           {"s": SESSION}, frozenset({"admin", "operator"})),
    "sendWhatsAppNotification": (
        "mutation($s: String, $p: String!) { sendWhatsAppNotification(session: $s, "
        "phoneNumber: $p, message: \"hi\") }", {"s": SESSION, "p": PHONE},
        frozenset({"admin", "sender"})),
    "sendWhatsAppMessage": (
        "mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) { id } }",
        {"i": {"session": SESSION, "phoneNumber": PHONE, "message": "hi"}},
        frozenset({"admin", "sender"})),
    "testWhatsAppConnection": (
        "mutation($s: String, $p: String!) { testWhatsAppConnection(session: $s, "
        "phoneNumber: $p) }", {"s": SESSION, "p": PHONE}, frozenset({"admin", "sender"})),
    "whatsAppMessage": ("{ whatsAppMessage(id: \"nope\") { id } }", {},
                        frozenset({"admin", "operator"})),
    "whatsAppMessages": ("query($s: String) { whatsAppMessages(session: $s) { edges "
                         "{ cursor } } }", {"s": SESSION}, frozenset({"admin", "operator"})),
}
HTTP_OPERATIONS: dict[str, frozenset[str]] = {
    "/admin/health": frozenset({"admin", "viewer"}),
    "/admin/tokens": frozenset({"admin"}),
    "/metrics": frozenset({"admin", "viewer"}),
}

# network variant -> X-Forwarded-For sent (None: the request comes from 127.0.0.1)
NETWORKS = {"loopback": None, "proxied-allowed": "192.0.2.10",
            "gateway-refused": "198.51.100.7"}
TOKEN_NETWORK = "192.0.2.0/24"  # the restricted tokens' network
OVERRIDES = {"auth": {"allowed_networks": ["127.0.0.0/8", TOKEN_NETWORK],
                      "trusted_proxies": ["127.0.0.1/32"]}}


def _call(gw: Gateway, operation: str, token: str | None, forwarded: str | None
          ) -> tuple[int, str | None]:
    """(HTTP status, error code or None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    if operation in HTTP_OPERATIONS:
        response = requests.get(gw.url + operation, headers=headers, timeout=30)
    else:
        query, variables, _ = GRAPHQL_OPERATIONS[operation]
        response = requests.post(gw.url + "/graphql", headers=headers, timeout=30,
                                 json={"query": query, "variables": variables})
    assert response.status_code < 500, (operation, response.text)
    assert "Traceback" not in response.text
    if response.status_code != 200:
        return response.status_code, response.json()["errors"][0]["extensions"]["code"]
    if response.headers["Content-Type"].startswith("application/json"):
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            codes = {e.get("extensions", {}).get("code") for e in errors}
            assert None not in codes, body  # every error carries a code
            return 200, sorted(codes)[0]
    return 200, None


def _expected(operation: str, role: str, state: str, network: str, restricted: bool
              ) -> str:
    """"ok" (anything but an access error), "UNAUTHENTICATED" or "FORBIDDEN"."""
    if network == "gateway-refused":
        return "FORBIDDEN"  # refused before the token is even looked at
    if state in ("expired", "revoked", "missing", "unknown"):
        return "UNAUTHENTICATED"
    if restricted and network != "proxied-allowed":
        return "FORBIDDEN"  # outside the token's own networks
    roles = (HTTP_OPERATIONS[operation] if operation in HTTP_OPERATIONS
             else GRAPHQL_OPERATIONS[operation][2])
    return "ok" if role in roles else "FORBIDDEN"


def _outcome(status: int, code: str | None) -> str:
    if code == "UNAUTHENTICATED":
        assert status == 401
        return code
    if code == "FORBIDDEN":
        assert status in (200, 403)
        return code
    return "ok"


def test_access_matrix(make_gateway: Any) -> None:
    gw = make_gateway(OVERRIDES).start()
    tokens: dict[tuple[str, str, bool], str] = {}
    for role in sorted(ALL):
        for restricted in (False, True):
            networks = [TOKEN_NETWORK] if restricted else None
            tokens[(role, "valid", restricted)] = gw.make_token(role, networks=networks)
            tokens[(role, "expired", restricted)] = gw.make_token(
                role, networks=networks, expires=time.time() - 60)
            name = f"revoked-{role}-{int(restricted)}"
            tokens[(role, "revoked", restricted)] = gw.make_token(role, networks=networks,
                                                                  name=name)
            gw.revoke_token(name)
    operations = [*GRAPHQL_OPERATIONS, *HTTP_OPERATIONS]

    cells: Counter[str] = Counter()
    wrong: list[str] = []
    for operation in operations:
        for (role, state, restricted), token in tokens.items():
            for network, forwarded in NETWORKS.items():
                want = _expected(operation, role, state, network, restricted)
                got = _outcome(*_call(gw, operation, token, forwarded))
                cells[want] += 1
                if got != want:
                    wrong.append(f"{operation} {role}/{state}/restricted={restricted} "
                                 f"from {network}: {got}, expected {want}")
        for state, token in (("missing", None), ("unknown", "wgt_" + "x" * 43)):
            for network, forwarded in NETWORKS.items():
                want = _expected(operation, "-", state, network, False)
                got = _outcome(*_call(gw, operation, token, forwarded))
                cells[want] += 1
                if got != want:
                    wrong.append(f"{operation} {state} token from {network}: {got}, "
                                 f"expected {want}")
    total = sum(cells.values())
    print(f"access matrix: {total} requests: {dict(cells)}")
    assert not wrong, f"{len(wrong)} of {total} cells wrong:\n" + "\n".join(wrong)
    assert total == len(operations) * (len(tokens) + 2) * len(NETWORKS)


def test_tokens_limited_to_sessions(make_gateway: Any) -> None:
    gw = make_gateway().start()
    sender = gw.make_token("sender", sessions=["a"])
    operator = gw.make_token("operator", sessions=["a", "b"])

    def gql(token: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(gw.url + "/graphql", timeout=30,
                                 headers={"Authorization": f"Bearer {token}"},
                                 json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        return response.json()

    send = ("mutation($s: String) { sendWhatsAppNotification(session: $s, "
            "phoneNumber: \"+14155552671\", message: \"hi\") }")
    refused = gql(sender, send, {"s": "b"})
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "'b'" in refused["errors"][0]["message"]
    allowed = gql(sender, send, {"s": "a"})  # not linked: refused by the session, not auth
    assert allowed["errors"][0]["extensions"]["code"] == "NOT_CONNECTED"

    assert not gql(operator, "mutation { whatsAppConnect(session: \"a\") }", {}).get("errors")
    gw.wait_state("QR_PENDING", "a")
    assert not gw.connect("c").errors  # the admin harness token: another session
    gw.wait_state("QR_PENDING", "c")
    seen = gql(operator, "{ whatsAppSessions { session } }", {})["data"]["whatsAppSessions"]
    assert [s["session"] for s in seen] == ["a"]  # never "c"
    status = gql(operator, "{ whatsAppStatus(session: \"c\") { state } }", {})
    assert status["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # Two sessions: a message list must name one.
    listing = gql(operator, "{ whatsAppMessages { edges { cursor } } }", {})
    assert listing["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "pass session" in listing["errors"][0]["message"]
    health = requests.get(gw.url + "/admin/health", timeout=10,
                          headers={"Authorization": f"Bearer {operator}"})
    assert health.status_code == 403


def test_a_session_limited_token_sees_nothing_of_other_sessions(make_gateway: Any) -> None:
    """Two tenants share a gateway: "default" (with queued messages) and "mine". The
    tokens limited to "mine" see it alone, in every endpoint that reports on sessions,
    and none of the gateway-wide figures (other tenants' traffic, process ids)."""
    gw = make_gateway().start()
    gw.link()
    assert not gw.connect("mine").errors
    gw.wait_state("QR_PENDING", "mine")
    gw.sim("drop", "--session", "default", "--down-for", "120")
    gw.wait_state("RECONNECTING")
    for i in range(2):
        assert not gw.send(PHONE, f"queued {i}").errors  # waits in default's queue
    viewer = gw.make_token("viewer", sessions=["mine"], name="mine-viewer")
    admin = gw.make_token("admin", sessions=["mine"], name="mine-admin")
    gw.make_token("sender", sessions=["mine", "default"], name="both-sender")

    def get(path: str, token: str) -> requests.Response:
        response = requests.get(gw.url + path, timeout=30,
                                headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return response

    health = get("/admin/health", viewer).json()
    assert [s["session"] for s in health["sessions"]] == ["mine"]
    assert health["queue"] == {"depth": 0, "bySession": {}}  # not default's 2
    assert "processes" not in health and "limiter" not in health
    assert [s["pid"] for s in health["sessions"]] == [None]
    assert sum(h["sessions"] for h in health["hosts"]) <= 1  # never default's too
    assert "default" not in json.dumps(health)

    scrape = get("/metrics", viewer).text
    assert 'session="mine"' in scrape and 'session="default"' not in scrape
    for family in ("wagate_messages_total", "wagate_graphql_requests_total",
                   "wagate_rate_limit_usage_ratio", "wagate_messages_uncertain_total"):
        assert family not in scrape, family

    overview = requests.post(gw.url + "/graphql", timeout=30, json={
        "query": "{ whatsAppGateway { queueDepth queueBySession { session } "
                 "dailyUsage { used } } }"}, headers={"Authorization": f"Bearer {admin}"})
    assert overview.json() == {"data": {"whatsAppGateway": {
        "queueDepth": 0, "queueBySession": [], "dailyUsage": None}}}

    tokens = {t["name"] for t in get("/admin/tokens", admin).json()["tokens"]}
    assert tokens == {"mine-viewer", "mine-admin"}  # not the harness', not both-sender

    # The gateway's own admin still sees the whole gateway.
    whole = gw.health()
    assert whole["queue"]["depth"] == 2 and set(whole["processes"]) >= {"supervisor", "outbox"}
    assert whole["limiter"]["global_day_used"] >= 1
    usage = gw.gql("{ whatsAppGateway { dailyUsage { used } } }").data
    assert usage["whatsAppGateway"]["dailyUsage"]["used"] >= 1


def test_two_tokens_choosing_the_same_idempotency_key_each_send_their_own(
        make_gateway: Any) -> None:
    """An idempotency key is its chooser's: another client of the same session that
    picks the same key must neither get the first message (its recipient) back nor
    have its own message acknowledged and never sent."""
    gw = make_gateway().start()
    gw.link()
    alice = gw.make_token("sender", name="alice")
    bob = gw.make_token("sender", name="bob")
    query = ("mutation($i: SendWhatsAppMessageInput!) { sendWhatsAppMessage(input: $i) "
             "{ id phoneNumber duplicate } }")

    def send(token: str, phone: str, text: str) -> dict[str, Any]:
        response = requests.post(gw.url + "/graphql", timeout=30, json={
            "query": query, "variables": {"i": {"phoneNumber": phone, "message": text,
                                                 "idempotencyKey": "otp-1"}}},
            headers={"Authorization": f"Bearer {token}"})
        body = response.json()
        assert not body.get("errors"), body
        return body["data"]["sendWhatsAppMessage"]

    first = send(alice, "+14155552671", "alice: 1111")
    other = send(bob, "+14155552672", "bob: 2222")
    assert other["duplicate"] is False and other["id"] != first["id"]
    assert other["phoneNumber"] == "+14155552672"  # never alice's recipient
    retry = send(alice, "+14155552671", "alice: 1111")
    assert retry == {**first, "duplicate": True}  # a retry of one's own is still one send
    texts = wait_for(lambda: len(inbox := gw.inbox()) >= 2 and sorted(m["text"] for m in inbox),
                     20, message="both messages to arrive")
    assert texts == ["alice: 1111", "bob: 2222"]


def test_revocation_applies_to_a_running_gateway(make_gateway: Any) -> None:
    gw = make_gateway({"http": {"workers": 2}}).start()
    token = gw.make_token("viewer", name="short-lived")
    headers = {"Authorization": f"Bearer {token}"}
    # Every worker re-reads a changed token file before the next request: no waiting.
    for _ in range(4):  # over fresh connections, so both workers answer in turn
        assert requests.get(gw.url + "/admin/health", timeout=10,
                            headers={**headers, "Connection": "close"}).ok
    gw.revoke_token("short-lived")
    for _ in range(4):
        assert requests.get(gw.url + "/admin/health", timeout=10,
                            headers={**headers, "Connection": "close"}).status_code == 401
    refused = requests.get(gw.url + "/admin/health", headers=headers, timeout=10)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["errors"][0]["message"]
    listing = {t["name"]: t for t in gw.http.get(gw.url + "/admin/tokens",
                                                 timeout=10).json()["tokens"]}
    assert listing["short-lived"]["state"] == "revoked"
    assert listing["harness-admin"]["state"] == "active"
    assert not any("hash" in t for t in listing.values())  # never a hash, nor a token


def _serve(root: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    path = root / "gateway.toml"
    path.write_text(f'[storage]\ndata_dir = "{root / "data"}"\n' + config)
    return subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path),
                           *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_no_tokens_refuses_to_start(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--port", "1")  # refused before any port is touched
    assert done.returncode == 1
    assert "no usable API tokens" in done.stderr and "wagate token create" in done.stderr


def test_only_expired_or_revoked_tokens_refuse_to_start(tmp_path: Path) -> None:
    from gateway.auth.tokens import TokenEntry, TokenFile, new_token, token_hash

    tokens = TokenFile(tmp_path / "data" / "tokens.toml")
    tokens.add(TokenEntry("old", "admin", token_hash(new_token()), expires=time.time() - 1))
    tokens.add(TokenEntry("gone", "admin", token_hash(new_token())))
    tokens.revoke("gone", time.time())
    done = _serve(tmp_path, "--port", "1")
    assert done.returncode == 1 and "no usable API tokens" in done.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_demo_without_tokens_only_on_loopback(tmp_path: Path, host: str) -> None:
    done = _serve(tmp_path, "--demo", "--host", host, "--port", "1")
    assert done.returncode == 2  # a configuration error, refused at load
    assert "loopback" in done.stderr and host in done.stderr


def test_a_config_file_cannot_serve_the_real_engine_without_tokens(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--port", "1", config="[auth]\nrequired = false\n")
    assert done.returncode == 2
    assert "auth.required = false is only for the demo" in done.stderr
    assert "wagate serve --demo" in done.stderr


def test_token_cli_round_trip(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')

    def wagate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "token", *args,
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    created = wagate("create", "--name", "ci", "--role", "sender", "--sessions", "default",
                     "--networks", "10.0.0.0/8,fd00::/8", "--expires", "90d")
    assert created.returncode == 0, created.stderr
    token = next(line.strip() for line in created.stdout.splitlines()
                 if line.strip().startswith("wgt_"))
    stored = (tmp_path / "data" / "tokens.toml").read_text()
    assert token not in stored and "sha256:" in stored  # only the hash is kept
    assert (tmp_path / "data" / "tokens.toml").stat().st_mode & 0o077 == 0
    assert wagate("create", "--name", "ci", "--role", "viewer").returncode == 2  # duplicate
    assert wagate("create", "--name", "x", "--role", "root").returncode == 2
    bad = wagate("create", "--name", "y", "--role", "viewer", "--networks", "10.0.0.300/8")
    assert bad.returncode == 2 and "CIDR" in bad.stderr
    listing = wagate("list")
    assert "ci" in listing.stdout and "active" in listing.stdout and token not in listing.stdout
    assert wagate("revoke", "ci").returncode == 0
    assert "revoked" in wagate("list").stdout
    assert wagate("revoke", "nobody").returncode == 2
