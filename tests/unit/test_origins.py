"""The Host and Origin rules (gateway/core/origins.py): pure logic, every hostile spelling."""

from __future__ import annotations

import pytest

from gateway.core.origins import (
    BrowserPolicy,
    check_allowed_hosts,
    check_allowed_origins,
    parse_origin,
    split_host,
)

LOOPBACK = BrowserPolicy.build("127.0.0.1", ("wagate.test",), ("https://ops.example.com",))


@pytest.mark.parametrize(("header", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("LocalHost.", ("localhost", None)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::1]", ("::1", None)),
    ("Wagate.Test:443", ("wagate.test", 443)),
    ("a" * 300, None),  # longer than any host name
    ("evil.example:0", None),
    ("evil.example:99999", None),
    ("evil.example:80x", None),
    ("[::1]x", None),
    ("::1", None),  # IPv6 without brackets is no Host header
    ("[evil.example]:80", None),
    ("user@evil.example", None),
    ("", None),
])
def test_host_headers_split_into_name_and_port(header: str, expected: object) -> None:
    assert split_host(header) == expected


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080",
                                  "127.0.0.2", "10.1.2.3:8080", "wagate.test:8080",
                                  "WAGATE.TEST.", None, ""])
def test_a_loopback_gateway_answers_to_this_machine_and_its_listed_names(
        host: str | None) -> None:
    assert LOOPBACK.host_refusal(host) is None


@pytest.mark.parametrize("host", ["attacker.example:8080", "127.0.0.1.nip.io:8080",
                                  "sub.wagate.test", "localhost.attacker.example",
                                  "x" * 5000, "evil example", "[::1"])
def test_a_loopback_gateway_refuses_every_other_host_name(host: str) -> None:
    """DNS rebinding: the page's own name in Host, pointed at 127.0.0.1."""
    reason = LOOPBACK.host_refusal(host)
    assert reason is not None and "http.allowed_hosts" in reason
    assert len(reason) < 400  # a hostile header is not copied whole into logs


def test_host_names_are_checked_off_loopback_only_once_configured() -> None:
    open_bind = BrowserPolicy.build("0.0.0.0", (), ())
    assert open_bind.host_refusal("anything.example") is None
    listed = BrowserPolicy.build("0.0.0.0", ("gw.example.com",), ())
    assert listed.host_refusal("gw.example.com:8080") is None
    assert listed.host_refusal("10.0.0.5:8080") is None
    assert listed.host_refusal("other.example.com") is not None


@pytest.mark.parametrize(("origin", "fetch_site", "host", "verdict"), [
    (None, None, "127.0.0.1:8080", "none"),  # curl, a server: no browser origin
    ("http://127.0.0.1:8080", None, "127.0.0.1:8080", "same"),
    ("http://LOCALHOST:8080", None, "localhost:8080", "same"),
    ("http://[::1]:8080", None, "[::1]:8080", "same"),
    ("https://gw.example.com", None, "gw.example.com", "same"),  # TLS ended at a proxy
    ("https://gw.example.com", None, "gw.example.com:443", "same"),
    ("https://gw.example.com", "same-origin", "127.0.0.1:8080", "same"),  # Host rewritten
    ("http://127.0.0.1:8081", None, "127.0.0.1:8080", "refused"),  # another port
    ("http://evil.example", None, "127.0.0.1:8080", "refused"),
    ("http://evil.example", "cross-site", "127.0.0.1:8080", "refused"),
    ("http://sub.example.com", "same-site", "example.com", "refused"),
    ("null", None, "127.0.0.1:8080", "refused"),  # sandboxed frames, file: pages
    ("https://ops.example.com", "cross-site", "127.0.0.1:8080", "allowed"),
    ("https://OPS.example.com:443", None, "127.0.0.1:8080", "allowed"),
    ("http://ops.example.com", None, "127.0.0.1:8080", "refused"),  # not the listed scheme
    ("https://ops.example.com.evil.example", None, "127.0.0.1:8080", "refused"),
    ("https://user@ops.example.com", None, "127.0.0.1:8080", "refused"),
    ("https://ops.example.com/path", None, "127.0.0.1:8080", "refused"),
    ("x" * 10000, None, "127.0.0.1:8080", "refused"),
])
def test_origins_are_the_gateways_own_listed_or_refused(
        origin: str | None, fetch_site: str | None, host: str, verdict: str) -> None:
    assert LOOPBACK.origin_verdict(origin, fetch_site, host) == verdict


def test_origin_refusals_name_the_setting_and_cut_hostile_text() -> None:
    message = BrowserPolicy.origin_refusal("https://" + "e" * 5000)
    assert "http.allowed_origins" in message and len(message) < 400


def test_listed_origins_and_hosts_are_canonical() -> None:
    assert check_allowed_origins(("HTTPS://Ops.Example.com:443", "http://[::1]:8080"),
                                 "k") == {"https://ops.example.com", "http://[::1]:8080"}
    assert check_allowed_hosts(("Wagate.Test.", "10.0.0.1"), "k") == {"wagate.test", "10.0.0.1"}
    assert parse_origin("http://x.example:80") == ("http", "x.example", None)


@pytest.mark.parametrize("value", ["*", "null", "ops.example.com", "https://", "ftp://x.example",
                                   "https://x.example/", "https://x.example:0",
                                   "https://x.example:70000", "https://u:p@x.example",
                                   "https://x.example?q", "https://*.example.com"])
def test_a_bad_allowed_origin_is_named(value: str) -> None:
    with pytest.raises(ValueError, match=r"http\.allowed_origins\[1\]"):
        check_allowed_origins(("https://ok.example", value), "http.allowed_origins")


@pytest.mark.parametrize("value", ["*.example.com", "x.example:8080", "https://x.example",
                                   "", "a b", "x" * 300, "under_score.example"])
def test_a_bad_allowed_host_is_named(value: str) -> None:
    with pytest.raises(ValueError, match=r"http\.allowed_hosts\[0\]"):
        check_allowed_hosts((value,), "http.allowed_hosts")
