"""Which targets a webhook may reach, checked on the resolved address."""

from __future__ import annotations

import pytest

from actors.webhooks.safety import UnsafeTarget, target


def resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_a_public_https_name_is_pinned_to_the_address_it_resolved_to() -> None:
    resolve = resolver({"hooks.example.com": ["93.184.216.34"]})
    found = target("https://hooks.example.com/in?x=1", (), resolve)
    assert (found.scheme, found.host, found.port, found.path, found.address) == (
        "https", "hooks.example.com", 443, "/in?x=1", "93.184.216.34")
    assert resolve.calls == ["hooks.example.com"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"])
def test_non_public_addresses_are_refused_naming_the_fix(address: str) -> None:
    with pytest.raises(UnsafeTarget, match=r"webhooks\.allow_insecure"):
        target("https://rebind.example.com/", (), resolver({"rebind.example.com": [address]}))


def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    resolve = resolver({"rr.example.com": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(UnsafeTarget, match=r"10\.0\.0\.5"):
        target("https://rr.example.com/", (), resolve)


def test_plain_http_needs_the_allowlist() -> None:
    resolve = resolver({"hooks.example.com": ["93.184.216.34"]})
    with pytest.raises(UnsafeTarget, match="plain http"):
        target("http://hooks.example.com/", (), resolve)
    assert target("http://hooks.example.com/", ("hooks.example.com",), resolve).port == 80


def test_the_allowlist_admits_only_its_own_names_and_networks() -> None:
    allow = ("127.0.0.0/8", "intranet.test")
    assert target("http://127.0.0.1:8080/h", allow).address == "127.0.0.1"
    assert target("http://intranet.test/", allow,
                  resolver({"intranet.test": ["10.9.9.9"]})).address == "10.9.9.9"
    with pytest.raises(UnsafeTarget):
        target("http://10.0.0.1/", allow)
    with pytest.raises(UnsafeTarget):  # a name pointing into an allowed network's outside
        target("https://other.test/", allow, resolver({"other.test": ["192.168.0.1"]}))


@pytest.mark.parametrize("url", [
    "ftp://example.com/", "https://user:pw@example.com/", "https:///nohost",
    "https://example.com:99999/", "file:///etc/passwd", "example.com"])
def test_malformed_or_credentialled_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeTarget):
        target(url, ("0.0.0.0/0",), resolver({"example.com": ["93.184.216.34"]}))
