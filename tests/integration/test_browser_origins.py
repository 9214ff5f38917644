"""What a web page the operator opens can make a running gateway do: DNS rebinding
(the Host header) and other origins' pages (the Origin header), over real HTTP.

A browser sets Host, Origin and Sec-Fetch-Site itself and pages cannot change them,
so sending them from here is exactly what the gateway sees from such a page.
"""

from __future__ import annotations

from collections.abc import Callable

import requests

from tests.integration.harness import Gateway

WHO = {"query": "{ whatsAppGateway { principal { name } } }"}
LISTED = "https://ops.example.com"


def _post(gw: Gateway, headers: dict[str, str], token: str | None = None
          ) -> requests.Response:
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    return requests.post(gw.url + "/graphql", json=WHO, timeout=30,
                         headers={**headers, "Connection": "close"})


def _refused(response: requests.Response, *fragments: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert all(f in error["message"] for f in fragments), error["message"]


def test_a_rebound_host_name_cannot_reach_a_loopback_gateway(
        make_gateway: Callable[..., Gateway]) -> None:
    """The demo (no tokens, loopback) is what DNS rebinding would drive: a page whose
    name now resolves to 127.0.0.1 calls it "same-origin" under its own name."""
    gw = make_gateway({"auth": {"required": False},
                       "http": {"allowed_hosts": ["wagate.test"]}}).start()
    rebound = f"attacker.example:{gw.port}"
    page = {"Host": rebound, "Origin": f"http://{rebound}", "Sec-Fetch-Site": "same-origin"}
    _refused(_post(gw, page), "attacker.example", "http.allowed_hosts")
    probe = requests.get(gw.url + "/healthz", headers={"Host": rebound}, timeout=30)
    assert probe.status_code == 403  # nothing at all, not even the version
    for path in ("/", "/graphql", "/admin/health"):
        assert requests.get(gw.url + path, headers={"Host": rebound},
                            timeout=30).status_code == 403, path

    # This machine's names and the listed one are served as before.
    for host in (f"127.0.0.1:{gw.port}", f"localhost:{gw.port}", f"wagate.test:{gw.port}"):
        answer = _post(gw, {"Host": host, "Origin": f"http://{host}"})
        assert answer.status_code == 200, (host, answer.text)
        assert answer.json()["data"]["whatsAppGateway"]["principal"]["name"] == "demo"


def test_pages_of_other_origins_are_refused_unless_listed(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"http": {"allowed_origins": [LISTED]}}).start()
    token = gw.token

    # Another site's page, with or without a token it somehow holds.
    for headers in ({"Origin": "https://evil.example"},
                    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"},  # a sandboxed frame or a file: page
                    {"Origin": f"http://127.0.0.1:{gw.port + 1}"}):  # another port
        _refused(_post(gw, headers, token), "cross-origin", "http.allowed_origins")
        _refused(_post(gw, headers), "cross-origin")
    preflight = requests.options(gw.url + "/graphql", timeout=30, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers

    # The gateway's own pages (the dashboard, the explorer), and clients that are no
    # browser at all, as before.
    own = f"http://127.0.0.1:{gw.port}"
    for headers in ({"Origin": own}, {"Origin": own, "Sec-Fetch-Site": "same-origin"}, {}):
        answer = _post(gw, headers, token)
        assert answer.status_code == 200, answer.text
        assert "Access-Control-Allow-Origin" not in answer.headers

    # The listed origin: its preflight is answered without a token, then its calls are,
    # with the headers a browser needs to hand the answer to the page.
    preflight = requests.options(gw.url + "/graphql", timeout=30, headers={
        "Origin": LISTED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == LISTED
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    answer = _post(gw, {"Origin": LISTED, "Sec-Fetch-Site": "cross-site"}, token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Access-Control-Allow-Origin"] == LISTED
    assert "Origin" in answer.headers["Vary"]
    # ... and still needs a token: a listed origin is no way around authentication.
    anonymous = _post(gw, {"Origin": LISTED})
    assert anonymous.status_code == 401
    assert anonymous.headers["Access-Control-Allow-Origin"] == LISTED  # the page may read why
