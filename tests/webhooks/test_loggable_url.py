"""A webhook url's query (often a receiver's token) and userinfo never reach a log line
or a message that may be logged."""

from __future__ import annotations

import pytest

from actors.webhooks import signing
from actors.webhooks.declared import sync_declared
from actors.webhooks.safety import UnsafeTarget, check_url
from actors.webhooks.store import EndpointStore
from gateway.core.config import ConfigError, WebhookEndpointConfig, config_from_dict
from gateway.core.urls import loggable_url

TOKEN = "tok_s3cr3t"


@pytest.mark.parametrize(("url", "shown"), [
    (f"https://hooks.example/in?token={TOKEN}", "https://hooks.example/in?..."),
    (f"https://u:{TOKEN}@hooks.example:8443/in#{TOKEN}", "https://hooks.example:8443/in"),
    (f"http://[::1]:9/x?{TOKEN}", "http://[::1]:9/x?..."),
    (f"not a url {TOKEN}", "<malformed url>"),
    (f"https://h:{TOKEN}/", "<malformed url>"),  # a port that is no number
])
def test_loggable_url_drops_query_userinfo_and_fragment(url: str, shown: str) -> None:
    assert loggable_url(url) == shown


def test_a_declared_endpoint_problem_names_the_url_without_its_token(
        store: EndpointStore) -> None:
    """The problem is what the webhook actor logs ("webhook endpoint skipped")."""
    item = WebhookEndpointConfig(url=f"https://a.example/h?token={TOKEN}", secret_env="S")
    (problem,) = sync_declared(store, [item], {"S": "nonsense"}, 1.0, head=0)
    assert "https://a.example/h?..." in problem and TOKEN not in problem
    assert sync_declared(store, [item], {"S": signing.new_secret()}, 1.0, head=0) == []


def test_refusals_and_config_errors_name_the_url_without_its_token() -> None:
    with pytest.raises(UnsafeTarget) as refused:
        check_url(f"http://a.example/h?token={TOKEN}", ())
    assert TOKEN not in str(refused.value) and "a.example" in str(refused.value)
    with pytest.raises(ConfigError) as bad:
        config_from_dict({"webhooks": {"endpoints": [
            {"url": f"ftp://a.example/h?token={TOKEN}", "secret_env": "S"}]}})
    assert TOKEN not in str(bad.value) and "webhooks.endpoints[0].url" in str(bad.value)
