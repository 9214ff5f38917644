"""The sign-in page's token command names this machine's paths only for a browser on
the machine itself. A request that came through a proxy is not such a browser, even
when the proxy runs on the gateway's host and is not (yet) in auth.trusted_proxies:
then every request reaches the gateway from 127.0.0.1 (issue 12 review)."""

from __future__ import annotations

from collections.abc import Callable

import requests

from tests.integration.harness import Gateway


def hint(gw: Gateway, headers: dict[str, str]) -> str:
    response = requests.get(f"{gw.url}/static/sign-in.json", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["command"] + " " + body["note"]


def test_a_proxied_request_from_loopback_gets_no_paths_of_this_machine(
        make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway().start()
    root = str(gw.root.resolve())
    assert root in hint(gw, {})  # a browser on this machine gets the real command
    # nginx on this host, auth.trusted_proxies not set: the peer is 127.0.0.1 but the
    # headers name the browser elsewhere.
    for headers in ({"X-Forwarded-For": "203.0.113.5"},
                    {"X-Forwarded-For": "127.0.0.1, 203.0.113.5"},
                    {"X-Forwarded-For": "not-an-address"},
                    {"X-Real-IP": "203.0.113.5"},
                    {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'},
                    {"Via": "1.1 proxy.example"}):
        shown = hint(gw, headers)
        assert root not in shown, headers
        assert "--config CONFIG" in shown, headers
    # A local proxy that says the browser is local too (every hop loopback) is local.
    assert root in hint(gw, {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"})


def test_behind_a_trusted_proxy_a_forged_loopback_hop_is_not_local(
        make_gateway: Callable[..., Gateway]) -> None:
    """nginx appends the address it saw to what the client sent."""
    gw = make_gateway({"auth": {"trusted_proxies": ["127.0.0.1/32"]}}).start()
    root = str(gw.root.resolve())
    assert root not in hint(gw, {"X-Forwarded-For": "127.0.0.1, 203.0.113.5"})
    assert root not in hint(gw, {"X-Forwarded-For": "::1, 127.0.0.1, 198.51.100.7"})
