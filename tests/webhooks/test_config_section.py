"""The [webhooks] section: declared endpoints as tables, their checks, the round trip
through config_to_dict (the config travels to the actors that way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.config import ConfigError, config_from_dict, config_to_dict, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_declared_endpoints_load_and_survive_the_round_trip(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, (
        '[webhooks]\nallow_insecure = ["127.0.0.0/8", "intranet.test"]\n'
        '[[webhooks.endpoints]]\nurl = "https://a.example/h"\nsecret_env = "A"\n'
        'events = ["message.status"]\n'
        '[[webhooks.endpoints]]\nurl = "http://127.0.0.1:9/h"\nsecret_env = "B"\n')))
    assert [e.url for e in config.webhooks.endpoints] == ["https://a.example/h",
                                                          "http://127.0.0.1:9/h"]
    assert config.webhooks.endpoints[0].events == ("message.status",)
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize(("text", "named"), [
    ('[[webhooks.endpoints]]\nurl = "ftp://x/"\nsecret_env = "A"\n', "url"),
    ('[[webhooks.endpoints]]\nurl = "https://x/"\n', "secret_env"),
    ('[[webhooks.endpoints]]\nurl = "https://x/"\nsecret_env = "A"\nsecret = "whsec_x"\n',
     "secret"),
    ('[webhooks]\nallow_insecure = ["10.0.0.0/33"]\n', "allow_insecure"),
    ('[webhooks]\nallow_insecure = [" spaced"]\n', "allow_insecure"),
    ('[webhooks]\nendpoints = "https://x/"\n', "endpoints"),
])
def test_bad_webhook_settings_stop_the_load_naming_the_key(
        tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, text))
