"""What the dashboard reads: whatsAppSessions, whatsAppGateway, and the page itself,
over real HTTP against a real gateway."""

from __future__ import annotations

from collections.abc import Callable

import requests

from actors.messages import SessionState
from actors.session.states import SESSION_STATES
from gateway import __version__
from tests.integration.harness import Gateway, wait_for

STATUS_FIELDS = "session state connected phoneNumber qrCodeSvg qrCodeRaw reconnectAttempt"
SESSIONS = f"{{ whatsAppSessions {{ {STATUS_FIELDS} }} }}"
GATEWAY = """{ whatsAppGateway { version authRequired principal { name role sessions }
  queueDepth queueBySession { session depth } dailyUsage { used limit remaining }
  limits { perNumberPerMinute perNumberPerHour globalPerDay maxSessions maxQueuePerSession
           maxMessageLength reconnectAttempts } } }"""
WHO = "{ whatsAppGateway { version authRequired principal { name role sessions } } }"
PHONE = "+14155552671"


def post_as(gw: Gateway, token: str, query: str) -> requests.Response:
    return requests.post(gw.url + "/graphql", json={"query": query}, timeout=30,
                         headers={"Authorization": f"Bearer {token}", "Connection": "close"})


def new_token(gw: Gateway, role: str, sessions: list[str] | None = None) -> str:
    """A token of ``role``, once the running gateway accepts it (it re-reads the token
    file within a second)."""
    token = gw.make_token(role, sessions=sessions)
    wait_for(lambda: post_as(gw, token, WHO).status_code == 200,
             message=f"the new {role} token to be accepted")
    return token


def gql_as(gw: Gateway, token: str, query: str) -> dict:
    response = post_as(gw, token, query)
    assert response.status_code == 200, response.text
    return response.json()


def test_sessions_lists_every_known_session_that_the_token_may_see(gateway: Gateway) -> None:
    assert gateway.gql(SESSIONS).data == {"whatsAppSessions": []}  # nothing connected yet

    gateway.link()
    assert not gateway.connect("alerts").errors
    gateway.wait_state("QR_PENDING", "alerts")
    sessions = wait_for(lambda: (s := gateway.gql(SESSIONS).data["whatsAppSessions"])
                        and len(s) == 2 and s, message="both sessions to be listed")
    assert [s["session"] for s in sessions] == ["alerts", "default"]  # by name
    alerts, default = sessions
    assert alerts["state"] == "QR_PENDING" and not alerts["connected"]
    assert alerts["qrCodeSvg"].startswith("data:image/svg+xml;base64,")
    assert alerts["qrCodeRaw"]
    assert default["state"] == "CONNECTED" and default["connected"]
    assert default["phoneNumber"] and default["qrCodeSvg"] is None
    # The same as whatsAppStatus says, session by session.
    assert gateway.status("alerts")["qrCodeRaw"] == alerts["qrCodeRaw"]

    restricted = new_token(gateway, "viewer", ["alerts"])
    seen = gql_as(gateway, restricted, SESSIONS)["data"]["whatsAppSessions"]
    assert [s["session"] for s in seen] == ["alerts"]
    other = new_token(gateway, "viewer", ["elsewhere"])
    assert gql_as(gateway, other, SESSIONS) == {"data": {"whatsAppSessions": []}}


def test_each_status_carries_its_states_hint_which_the_dashboard_shows(
        gateway: Gateway) -> None:
    """The dashboard keeps no copy of what a state means: it shows ``hint``, which comes
    from the one table of session states (actors/session/states.py)."""
    query = "{ whatsAppStatus { state hint { label meaning whatToDo tone } } }"

    def with_hint(state: str) -> dict:
        row = SESSION_STATES[SessionState(state)]
        return {"state": state, "hint": {"label": row.label, "meaning": row.meaning,
                                         "whatToDo": row.what_to_do, "tone": row.tone}}

    assert gateway.gql(query).data == {"whatsAppStatus": with_hint("NEW")}
    gateway.link()
    assert gateway.gql(query).data == {"whatsAppStatus": with_hint("CONNECTED")}
    assert not gateway.gql('mutation { whatsAppDisconnect(keepSession: true) }').errors
    wait_for(lambda: gateway.gql(query).data == {"whatsAppStatus": with_hint("DISCONNECTED")},
             message="the DISCONNECTED state's hint")


def test_gateway_reports_the_caller_queues_usage_and_limits(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"limits": {"global_per_day": 50},
                       "reconnect": {"attempts": 5, "delay_seconds": 10.0,
                                     "first_delay_seconds": 10.0}}).start()
    first = gw.gql(GATEWAY)
    assert not first.errors, first
    overview = first.data["whatsAppGateway"]
    assert overview["version"] == __version__
    assert overview["authRequired"] is True
    assert overview["principal"] == {"name": "harness-admin", "role": "admin", "sessions": None}
    assert overview["queueDepth"] == 0 and overview["queueBySession"] == []
    assert overview["dailyUsage"] == {"used": 0, "limit": 50, "remaining": 50}
    assert overview["limits"] == {
        "perNumberPerMinute": 10, "perNumberPerHour": 100, "globalPerDay": 50,
        "maxSessions": 5, "maxQueuePerSession": 10000, "maxMessageLength": 4096,
        "reconnectAttempts": 5}

    gw.link()
    for i in range(2):
        assert not gw.send(PHONE, f"counted {i}").errors
    usage = gw.gql(GATEWAY).data["whatsAppGateway"]["dailyUsage"]
    assert usage == {"used": 2, "limit": 50, "remaining": 48}

    # An outage: sends wait in the queue, and the overview counts them per session.
    gw.sim("drop", "--down-for", "60")
    gw.wait_state("RECONNECTING")
    assert not gw.send(PHONE, "waits").errors
    queued = gw.gql(GATEWAY).data["whatsAppGateway"]
    assert queued["queueDepth"] == 1
    assert queued["queueBySession"] == [{"session": "default", "depth": 1}]

    # A token for other sessions sees neither their sessions' queues nor their sums.
    elsewhere = new_token(gw, "sender", ["elsewhere"])
    theirs = gql_as(gw, elsewhere, GATEWAY)["data"]["whatsAppGateway"]
    assert theirs["principal"]["role"] == "sender"
    assert theirs["principal"]["sessions"] == ["elsewhere"]
    assert theirs["queueDepth"] == 0 and theirs["queueBySession"] == []

    gw.sim("restore")
    assert not gw.connect().errors
    wait_for(lambda: gw.gql(GATEWAY).data["whatsAppGateway"]["queueDepth"] == 0, 20,
             message="the queue to drain")
    assert [m["text"] for m in gw.inbox()] == ["counted 0", "counted 1", "waits"]


def test_every_role_may_read_the_overview_and_a_bad_token_may_not(gateway: Gateway) -> None:
    for role in ("admin", "operator", "sender", "viewer"):
        body = gql_as(gateway, new_token(gateway, role), WHO)
        assert body["data"]["whatsAppGateway"]["principal"]["role"] == role
    refused = requests.post(gateway.url + "/graphql", json={"query": WHO}, timeout=10,
                            headers={"Authorization": "Bearer wgt_not-a-token",
                                     "Connection": "close"})
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_demo_gateway_needs_no_token(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"auth": {"required": False}}).start()
    response = requests.post(gw.url + "/graphql", json={"query": WHO}, timeout=10,
                             headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["whatsAppGateway"] == {
        "version": __version__, "authRequired": False,
        "principal": {"name": "demo", "role": "admin", "sessions": None}}


def test_the_page_is_served_without_a_token_under_a_strict_policy(gateway: Gateway) -> None:
    plain = requests.Session()  # no Authorization header: the files hold no data
    try:
        page = plain.get(gateway.url + "/", timeout=10)
        assert page.status_code == 200
        assert page.headers["Content-Type"].startswith("text/html")
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "img-src 'self' data:" in policy and "connect-src 'self'" in policy
        assert page.headers["Cache-Control"] == "no-cache"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert "/static/app.js" in page.text and "/static/style.css" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing remote

        for name, kind in (("app.js", "javascript"), ("style.css", "text/css"),
                           ("favicon.svg", "image/svg+xml")):
            asset = plain.get(f"{gateway.url}/static/{name}", timeout=10)
            assert asset.status_code == 200, name
            assert kind in asset.headers["Content-Type"], asset.headers
            assert asset.headers["Content-Security-Policy"] == policy
            assert "https://" not in asset.text, name
            again = plain.get(f"{gateway.url}/static/{name}", timeout=10,
                              headers={"If-None-Match": asset.headers["ETag"]})
            assert again.status_code == 304  # cached, revalidated

        assert plain.get(gateway.url + "/static/missing.js", timeout=10).status_code == 404
        # Only the dashboard's own files: no way out of the directory.
        for path in ("/static/..%2Fgateway.toml", "/static/%2E%2E%2Fschema.graphql",
                     "/static/__init__.py"):
            assert plain.get(gateway.url + path, timeout=10).status_code == 404, path
        # Everything with data still needs the token.
        assert plain.post(gateway.url + "/graphql", json={"query": WHO},
                          timeout=10).status_code == 401
    finally:
        plain.close()
