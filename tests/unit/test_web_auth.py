"""Who gets in, in process: the real app and token file over a FakeBridge
(tests/unit/web_helpers.py). Every refusal has the error shape, the status, the
``WWW-Authenticate`` header for 401, and an ``auth.failure`` audit entry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.messages import GetHealth, GetStatus, ListMessages, Ping
from gateway.core.times import iso_time
from tests.unit.web_helpers import Web, add_token, codes, web, web_config

STATUS = "query($s: String) { whatsAppStatus(session: $s) { session state } }"
CONNECT = "mutation($s: String) { whatsAppConnect(session: $s) }"
MESSAGES = "query($s: String) { whatsAppMessages(session: $s) { edges { node { id } } } }"
ROLES = ("admin", "operator", "sender", "viewer")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Web, dict[str, str]]]:
    """A gateway that requires tokens, with one token per role plus scoped ones."""
    config = web_config(tmp_path, **{"auth.allowed_networks": ["127.0.0.0/8", "10.0.0.0/8"]})
    tokens = {role: add_token(config, role, role) for role in ROLES}
    tokens["alpha"] = add_token(config, "alpha", "admin", sessions=("alpha",))
    tokens["two"] = add_token(config, "two", "operator", sessions=("alpha", "beta"))
    tokens["office"] = add_token(config, "office", "admin", networks=("10.0.0.0/8",))
    tokens["revoked"] = add_token(config, "revoked", "admin", revoked=iso_time(time.time()))
    tokens["expired"] = add_token(config, "expired", "admin", expires=time.time() - 60)
    yield from ((w, tokens) for w in web(config))


def refusal(response: object) -> tuple[int, str, str]:
    body = response.get_json()  # type: ignore[attr-defined]
    error = body["errors"][0]
    return response.status_code, error["extensions"]["code"], error["message"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("authorization, says", [
    (None, "send an API token"),
    ("Basic abc", "must be 'Bearer <token>'"),
    ("Bearer ", "must be 'Bearer <token>'"),
    ("Bearer wgt_not-a-token", "not valid"),
])
def test_a_request_without_a_valid_token_is_refused_before_any_work(
        site: tuple[Web, dict[str, str]], authorization: str | None, says: str) -> None:
    w, _ = site
    headers = {"Authorization": authorization} if authorization else {}
    response = w.client.post("/graphql", json={"query": STATUS}, headers=headers)
    status, code, message = refusal(response)
    assert (status, code) == (401, "UNAUTHENTICATED") and says in message
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="wagate"'
    assert w.bridge.asked == []  # no GraphQL work, no actor asked
    [entry] = w.bridge.audited("auth.failure")
    assert entry["route"] == "/graphql" and entry["code"] == "UNAUTHENTICATED"
    assert entry["ip"] == "127.0.0.1" and entry["actor"] is None


@pytest.mark.parametrize("name, says", [("revoked", "was revoked on"), ("expired", "expired on")])
def test_a_revoked_or_expired_token_is_refused_by_name(
        site: tuple[Web, dict[str, str]], name: str, says: str) -> None:
    w, tokens = site
    response = w.post(STATUS, token=tokens[name])
    status, code, message = refusal(response)
    assert (status, code) == (401, "UNAUTHENTICATED") and says in message
    assert w.bridge.audited("auth.failure")[0]["actor"] == name


def test_a_path_no_route_matches_is_audited_under_no_route(
        site: tuple[Web, dict[str, str]]) -> None:
    """Bursts are keyed on the route template, never on a path the client chose."""
    w, _ = site
    response = w.client.get("/no/such/" + "x" * 500)
    assert refusal(response)[:2] == (401, "UNAUTHENTICATED")
    [entry] = w.bridge.audited("auth.failure")
    assert entry["route"] == "(no route)" and len(entry["path"]) == 200


def test_the_public_paths_need_no_token(site: tuple[Web, dict[str, str]]) -> None:
    w, _ = site
    assert w.client.get("/healthz").get_json()["status"] == "ok"
    assert w.client.get("/readyz").get_json() == {"status": "ready"}
    assert len(w.bridge.asked_of(Ping)) == 1
    assert w.client.get("/").status_code == 200  # the dashboard's page holds no data
    assert w.client.get("/admin/health").status_code == 401
    assert w.bridge.audited("auth.failure")[0]["route"] == "/admin/health"


def test_readyz_says_unavailable_when_the_actors_do_not_answer(
        site: tuple[Web, dict[str, str]]) -> None:
    w, _ = site
    del w.bridge.handlers[Ping]
    response = w.client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["status"] == "unavailable"


@pytest.mark.parametrize("role, allowed", [("admin", True), ("operator", True),
                                           ("sender", False), ("viewer", False)])
def test_a_role_that_may_not_connect_gets_forbidden_and_the_attempt_is_audited(
        site: tuple[Web, dict[str, str]], role: str, allowed: bool) -> None:
    w, tokens = site
    result = w.gql(CONNECT, token=tokens[role])
    assert codes(result) == ([] if allowed else ["FORBIDDEN"])
    if not allowed:
        assert f"has role {role!r}" in result["errors"][0]["message"]
    [entry] = w.bridge.audited("mutation")
    assert entry["operation"] == "whatsAppConnect" and entry["actor"] == role
    assert entry["outcome"] == ("ok" if allowed else "FORBIDDEN")


@pytest.mark.parametrize("path, action_roles", [
    ("/admin/health", ("admin", "viewer")), ("/metrics", ("admin", "viewer")),
    ("/admin/tokens", ("admin",))])
def test_the_admin_views_check_the_role(site: tuple[Web, dict[str, str]], path: str,
                                        action_roles: tuple[str, ...]) -> None:
    w, tokens = site
    for role in ROLES:
        response = w.client.get(path, headers={"Authorization": f"Bearer {tokens[role]}"})
        if role in action_roles:
            assert response.status_code == 200, (role, response.get_data(as_text=True))
        else:
            assert refusal(response)[:2] == (403, "FORBIDDEN"), role


def test_a_caller_outside_the_allowed_networks_is_refused_before_its_token_is_read(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    response = w.post(STATUS, token=tokens["admin"],
                      environ_base={"REMOTE_ADDR": "192.0.2.7"})
    status, code, message = refusal(response)
    assert (status, code) == (403, "FORBIDDEN") and "192.0.2.7" in message
    assert "WWW-Authenticate" not in response.headers
    assert w.bridge.audited("auth.failure")[0]["ip"] == "192.0.2.7"
    assert w.bridge.asked == []


def test_a_token_bound_to_networks_is_refused_from_elsewhere(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    refused = w.post(STATUS, token=tokens["office"])  # from 127.0.0.1
    status, code, message = refusal(refused)
    assert (status, code) == (403, "FORBIDDEN") and "'office' may not be used from" in message
    allowed = w.post(STATUS, token=tokens["office"], environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert allowed.status_code == 200 and "errors" not in allowed.get_json()


def test_a_forwarded_address_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    config = web_config(tmp_path, **{"auth.allowed_networks": ["10.0.0.0/8"],
                                     "auth.trusted_proxies": ["127.0.0.1/32"]})
    token = add_token(config, "admin", "admin")
    for w in web(config):
        forwarded = {"X-Forwarded-For": "10.9.9.9"}
        assert w.post(STATUS, token=token, headers=forwarded).status_code == 200
        spoofed = w.post(STATUS, token=token, headers=forwarded,
                         environ_base={"REMOTE_ADDR": "192.0.2.8"})
        assert refusal(spoofed)[:2] == (403, "FORBIDDEN")


def test_a_token_scoped_to_sessions_reaches_only_them(site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    assert codes(w.gql(STATUS, {"s": "beta"}, tokens["alpha"])) == ["FORBIDDEN"]
    assert w.gql(STATUS, {"s": "alpha"}, tokens["alpha"])["data"]["whatsAppStatus"][
        "session"] == "alpha"
    assert [m.session for m in w.bridge.asked_of(GetStatus)] == ["alpha"]
    assert codes(w.gql(CONNECT, {"s": "default"}, tokens["alpha"])) == ["FORBIDDEN"]
    assert w.bridge.audited("mutation")[0]["outcome"] == "FORBIDDEN"


def test_a_token_with_one_session_lists_its_messages_without_naming_it(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    assert codes(w.gql(MESSAGES, {}, tokens["alpha"])) == []
    assert w.bridge.asked_of(ListMessages)[0].session == "alpha"
    result = w.gql(MESSAGES, {}, tokens["two"])  # two sessions: it must choose
    assert codes(result) == ["FORBIDDEN"] and "alpha, beta" in result["errors"][0]["message"]
    assert codes(w.gql(MESSAGES, {"s": "default"}, tokens["two"])) == ["FORBIDDEN"]
    assert len(w.bridge.asked_of(ListMessages)) == 1


def test_another_sessions_message_is_as_good_as_absent(site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    query = "query { whatsAppMessage(id: \"m1\") { id session } }"
    assert w.gql(query, token=tokens["alpha"])["data"]["whatsAppMessage"] is None
    assert w.gql(query, token=tokens["admin"])["data"]["whatsAppMessage"]["id"] == "m1"


def test_a_scoped_token_sees_only_its_sessions_in_health_and_tokens(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    auth = {"Authorization": f"Bearer {tokens['alpha']}"}
    listed = w.client.get("/admin/tokens", headers=auth).get_json()["tokens"]
    assert [t["name"] for t in listed] == ["alpha"]  # not the unscoped ones, nor "two"
    every = w.client.get("/admin/tokens",
                         headers={"Authorization": f"Bearer {tokens['admin']}"}).get_json()
    assert len(every["tokens"]) == 9 and not any("hash" in t for t in every["tokens"])
    health = w.client.get("/admin/health", headers=auth).get_json()
    assert health["auth"] == {"required": True, "principal": "alpha", "role": "admin"}
    assert len(w.bridge.asked_of(GetHealth)) == 1
    sessions = w.gql("query { whatsAppSessions { session } }", token=tokens["alpha"])
    assert sessions["data"]["whatsAppSessions"] == [{"session": "alpha"}]


def test_the_request_id_is_the_clients_when_reasonable(site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    response = w.post(STATUS, {"s": "default"}, tokens["admin"],
                      headers={"X-Request-Id": "trace-42"})
    assert response.headers["X-Request-Id"] == "trace-42"
    assert w.bridge.asked_of(GetStatus)[0].request_id == "trace-42"
    too_long = w.client.get("/healthz", headers={"X-Request-Id": "x" * 65})
    assert len(too_long.headers["X-Request-Id"]) == 32  # a fresh uuid4 hex


def test_an_unknown_host_or_another_sites_page_is_refused(
        site: tuple[Web, dict[str, str]]) -> None:
    w, tokens = site
    rebinding = w.post(STATUS, token=tokens["admin"], headers={"Host": "evil.example"})
    assert refusal(rebinding)[:2] == (403, "FORBIDDEN")
    other_site = w.post(STATUS, token=tokens["admin"],
                        headers={"Origin": "https://evil.example",
                                 "Sec-Fetch-Site": "cross-site"})
    assert refusal(other_site)[:2] == (403, "FORBIDDEN")
    assert "Origin" in other_site.headers["Vary"]
    assert len(w.bridge.audited("auth.failure")) == 2 and w.bridge.asked == []


def test_without_required_tokens_every_caller_is_the_demo_admin(tmp_path: Path) -> None:
    config = web_config(tmp_path, **{"auth.required": False})
    for w in web(config):
        result = w.gql("query { whatsAppGateway { authRequired principal { name role } } }")
        assert result["data"]["whatsAppGateway"] == {
            "authRequired": False, "principal": {"name": "demo", "role": "admin"}}
