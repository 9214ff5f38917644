"""The dashboard's token command (gateway/auth/sign_in.py): the one that works for the
gateway's own configuration, and paths of the machine only for a local browser."""

from __future__ import annotations

import shlex
from pathlib import Path

from gateway.auth.sign_in import sign_in_hint, token_command
from gateway.core.config import load_config


def test_a_token_file_in_data_dir_is_named_by_an_absolute_data_dir(tmp_path: Path) -> None:
    config = load_config(None, {"storage.data_dir": "relative/data"})
    words = shlex.split(token_command(config, None))
    assert words[words.index("--data-dir") + 1] == str(Path("relative/data").resolve())
    assert "--config" not in words  # the defaults: no file to name
    assert words[-2:] == ["--role", "admin"]


def test_an_explicit_token_file_needs_only_the_config(tmp_path: Path) -> None:
    config_file = tmp_path / "with space" / "gateway.toml"
    config = load_config(None, {"auth.tokens_file": str(tmp_path / "tokens.toml")})
    words = shlex.split(token_command(config, str(config_file)))
    assert words[words.index("--config") + 1] == str(config_file)  # quoted, one word
    assert "--data-dir" not in words


def test_a_browser_elsewhere_gets_no_paths_of_this_machine(tmp_path: Path) -> None:
    config = load_config(None, {"storage.data_dir": str(tmp_path)})
    remote = sign_in_hint(config, str(tmp_path / "gateway.toml"), local=False)
    assert str(tmp_path) not in remote["command"] + remote["note"]
    assert "--config CONFIG" in remote["command"]
    assert str(tmp_path) in sign_in_hint(config, None, local=True)["command"]


def test_only_a_request_no_proxy_header_places_elsewhere_is_local() -> None:
    from gateway.auth.sign_in import browser_is_local

    assert browser_is_local("127.0.0.1", {})
    assert browser_is_local("::1", {"X-Forwarded-For": "127.0.0.1, ::1"})
    assert browser_is_local("127.0.0.1", {"Forwarded": 'for="[::1]:8080", for=127.0.0.2'})
    for ip, headers in (("203.0.113.5", {}), ("", {}), (None, {}),
                        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.5"}),
                        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1,garbage"}),
                        ("127.0.0.1", {"X-Real-IP": "198.51.100.1"}),
                        ("127.0.0.1", {"Forwarded": "for=unknown"}),
                        ("127.0.0.1", {"Forwarded": "proto=https"}),
                        ("127.0.0.1", {"Forwarded": "For=198.51.100.1:443"}),
                        ("127.0.0.1", {"Via": "1.1 nginx"})):
        assert not browser_is_local(ip, headers), (ip, headers)
