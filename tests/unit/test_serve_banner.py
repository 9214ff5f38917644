"""The start banner's dashboard address: one a browser on this machine can open."""

from __future__ import annotations

import pytest

from gateway.cli.serve import base_url


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:8080"),
    ("0.0.0.0", "http://127.0.0.1:8080"),  # a wildcard bind is reached on loopback
    ("", "http://127.0.0.1:8080"),
    ("::", "http://[::1]:8080"),
    ("::1", "http://[::1]:8080"),
    ("gateway.example", "http://gateway.example:8080"),
])
def test_base_url(host: str, url: str) -> None:
    assert base_url(host, 8080) == url
